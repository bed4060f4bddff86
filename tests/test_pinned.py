"""Responses of every method, option and protocol pinned byte for byte (sha256), as the code before
the method registry made them (issue 19): a refactor may not change a single byte.

The network's output is replaced by deterministic values (seeded, exact on every CPU) at the model's
own API, ``get_cls_attention_layers`` and ``cls_rollout``, so the pins hold on any machine; the
path from those values to the reply's bytes is the real one. ``python -m tests.test_pinned`` rewrites
``tests/data/pinned_responses.json`` (only when a change of the bytes is intended, and said so).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import torch

from testkit.checkpoints import TINY, encode, random_rgb, tiny_replica
from testkit.handler import answer
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import Variant
from vitscope.precision import PrecisionPlan
from vitscope.service import AttentionService, ServiceConfig

PINS = Path(__file__).parent / "data" / "pinned_responses.json"
ROLLOUT_FUNCTION = "vitscope.methods.rollout.cls_rollout"  # where the rollout method looks it up
REG = tiny_replica("dinov2_vits14_reg")
PNG = encode(random_rgb(48, 64, seed=5))
B64 = base64.b64encode(PNG).decode()

# (model, options) of every case; each is sent through every protocol below where it is valid.
CASES: list[tuple[str, dict[str, str]]] = [
    ("tiny", {}),
    ("tiny", {"heads": "0,2", "upsample": "false"}),
    ("tiny", {"layers": "all", "upsample": "false"}),
    ("tiny", {"layers": "0,5", "mask": "0.6", "boxes": "true", "upsample": "false"}),
    ("tiny", {"method": "rollout"}),
    ("tiny", {"method": "rollout", "head_fusion": "max", "discard_ratio": "0.3", "mask": "0.5", "boxes": "true", "upsample": "false"}),
    ("tiny", {"mask": "0.6", "upsample": "false", "layer": "4"}),
    ("tiny", {"dtype": "float16", "upsample": "false", "layers": "1,3"}),
    ("tiny", {"size": "32x48", "dtype": "float16"}),
    ("reg", {"registers": "true", "upsample": "false"}),
    ("reg", {"registers": "true", "method": "rollout", "mask": "0.6", "layer": "1"}),
    ("reg", {"registers": "true", "layers": "0,2", "dtype": "float16", "mask": "0.3", "boxes": "true"}),
    # errors: the message of each option combination the methods refuse
    ("tiny", {"method": "rollout", "heads": "0"}),
    ("tiny", {"method": "rollout", "layers": "1,2"}),
    ("tiny", {"head_fusion": "max"}),
    ("tiny", {"discard_ratio": "0.5"}),
    ("tiny", {"boxes": "true"}),
    ("tiny", {"mask": "0.5", "format": "npy"}),
    ("tiny", {"method": "pca2"}),
    ("tiny", {"layer": "2", "layers": "3"}),
    ("tiny", {"registers": "true"}),
    ("reg", {"registers": "true", "format": "npy"}),
    ("tiny", {"unknown": "1"}),
]


def rows_of(options: dict[str, str]) -> list[tuple[str, object, str | None]]:
    """(protocol, row, Accept) for one case: plain json/npy/npz, v1, v2 (JSON and binary), both envelopes."""
    typed = {k: json.loads(v) if v in ("true", "false") or v.replace(".", "", 1).isdigit() else v for k, v in options.items()}
    v2_input = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}
    rows: list[tuple[str, object, str | None]] = [
        ("multipart", {"data": PNG, **options}, None),
        ("json", {"body": {"image": B64, **typed}}, None),
        ("npz", {"data": PNG, **options, "format": "npz"} if "format" not in options else {"data": PNG, **options}, None),
        ("npy-accept", {"data": PNG, **options}, "application/x-npy"),
        ("v1", {"body": {"instances": [{"data": B64, **typed}, {"data": B64, **typed}]}}, None),
        ("v2", {"body": {"id": "r", "inputs": [v2_input], "parameters": typed}}, None),
        ("v2-binary", {"body": {"inputs": [v2_input], "parameters": {**typed, "binary_data_output": True}}}, None),
        ("v2-two", {"body": {"inputs": [{**v2_input, "shape": [2], "data": [B64, B64]}], "parameters": typed}}, None),
        ("v1-envelope", {"data": B64, **typed}, None),
        ("v2-envelope", {**v2_input, "data": B64, "parameters": typed}, None),
    ]
    return rows


def without_registry_lists(body: bytes) -> bytes:
    """An error body with the lists that enumerate the registry (valid options, methods) cut to "[...]":
    registering a method changes those lists by design, and nothing else may change."""
    return re.sub(rb"\[(\\?'[a-z0-9_]+\\?'(, )?)+\]", b"[...]", body)


def fake_rows(batch: torch.Tensor, count: int, tokens: int, salt: int) -> torch.Tensor:
    """Seeded values in (0, 1), the same on every CPU: (B, count, tokens) float32."""
    generator = torch.Generator().manual_seed(1000 * salt + batch.shape[-2] + batch.shape[-1])
    return torch.rand(batch.shape[0], count, tokens, generator=generator)


@contextmanager
def fake_forward(service: AttentionService, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The model's [CLS] rows and rollout rows replaced by ``fake_rows``."""
    model = service.model
    p = model.patch_size

    def tokens(x: torch.Tensor) -> int:
        return model.num_prefix_tokens + (x.shape[-2] // p) * (x.shape[-1] // p)

    def cls_layers(x: torch.Tensor, layers: list[int], query: str | None = None) -> torch.Tensor:
        rows = fake_rows(x, len(layers) * model.num_heads, tokens(x), sum(layers) + 1)
        return rows.reshape(x.shape[0], len(layers), model.num_heads, -1)  # (B, layers, heads, 1 + N)

    def rollout(
        model_: object, x: torch.Tensor, layer: int, head_fusion: str, discard_ratio: float, query: str | None = None
    ) -> torch.Tensor:
        salt = 100 + layer + 10 * ["mean", "max", "min"].index(head_fusion) + int(discard_ratio * 1000)
        return fake_rows(x, 1, tokens(x), salt)[:, 0]  # (B, 1 + N)

    monkeypatch.setattr(model, "get_cls_attention_layers", cls_layers)
    monkeypatch.setattr(ROLLOUT_FUNCTION, rollout)
    yield


def service(name: str) -> AttentionService:
    variant: Variant = TINY if name == "tiny" else REG
    torch.manual_seed(0)
    config = ServiceConfig(model=variant.name, weights="pinned.pth@sha256:0", short_side=64)
    return AttentionService(build_model(variant, None), variant, config, precisions=PrecisionPlan.fp32_only())


def replies(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """case key -> "status content-type sha256 [X-Attention-Meta]" of every case and protocol."""
    services = {"tiny": service("tiny"), "reg": service("reg")}
    out: dict[str, str] = {}
    for name, svc in services.items():
        with fake_forward(svc, monkeypatch):
            for i, (model, options) in enumerate(CASES):
                if model != name:
                    continue
                for protocol, row, accept in rows_of(options):
                    (reply,) = answer(svc, [row], [accept])
                    body = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body, option=orjson.OPT_SERIALIZE_NUMPY)
                    body = without_registry_lists(body) if reply.status == 400 else body
                    meta = reply.headers.get("X-Attention-Meta", "")
                    out[f"{i:02d} {model} {protocol} {json.dumps(options, sort_keys=True)}"] = (
                        f"{reply.status} {reply.content_type} {hashlib.sha256(body).hexdigest()} {meta}".strip()
                    )
    return out


def test_every_reply_is_byte_identical_to_the_pinned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = json.loads(PINS.read_text())
    got = replies(monkeypatch)
    assert sorted(got) == sorted(pinned)
    assert sum(v.startswith("200 ") for v in got.values()) > 80  # most cases are answers, not errors
    changed = {k: (pinned[k], got[k]) for k in pinned if pinned[k] != got[k]}
    assert not changed, json.dumps(changed, indent=1)[:3000]


def main() -> int:
    """Rewrite the pins from the code as it is now."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        got = replies(monkeypatch)
    PINS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(got)} pins to {PINS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
