"""docs/guides/model-family.md, exercised: its patches (the ```diff blocks) are applied to a copy of
vitscope/, and a fresh interpreter on that copy loads a random checkpoint in the example family's own
key names strictly, runs it and serves one request. The guide must name every file its patches touch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts import REPO
from tests.support.guides import PACKAGE, changes, code_blocks, package_copy, run_fresh

GUIDE = REPO / "docs" / "guides" / "model-family.md"

# ToyViT's checkpoint names made from ours: written here, apart from the guide's key map (their inverse),
# so that the test states the layout the guide's table describes.
TOYVIT_NAMES = (
    (r"^cls_token$", "cls"),
    (r"^pos_embed$", "pos"),
    (r"^patch_embed\.proj\.", "stem."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"layers.\1.ln\2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"layers.\1.attn.in_proj."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.out_proj."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"layers.\1.scale\2"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.up."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.down."),
    (r"^norm\.", "ln_out."),
)

# Run in the copy, as its own process (the copy's vitscope, not the one this test imported).
EXERCISE = r"""
import json, re, sys
from pathlib import Path

import numpy as np
import torch

import vitscope
from PIL import Image
import io

assert Path(vitscope.__file__).resolve().parent == (Path.cwd() / "vitscope").resolve(), vitscope.__file__
from vitscope.model.catalogue import get_checkpoint, licence_of
from vitscope.model.checkpoint import CheckpointError, build_model
from vitscope.model.sources import detect_layout, load_checkpoint
from vitscope.model.variants import FAMILIES, VARIANTS, get_variant, variant_from_mapping, variant_to_mapping
from vitscope.precision import PrecisionPlan
from vitscope.schema import AttentionResult, ImageRequest
from vitscope.service import AttentionService, ServiceConfig

names = [tuple(pair) for pair in json.loads(sys.argv[1])]
variant = get_variant("toyvit_t16")
assert variant.family == "toyvit" and FAMILIES["toyvit"].title == "ToyViT" and list(VARIANTS)[-1] == "toyvit_t16"
assert variant.mean == variant.std == (0.5, 0.5, 0.5) and variant.pretrain_grid == 14
assert variant_from_mapping(variant_to_mapping(variant)) == variant  # what an archive records of it reads back

torch.manual_seed(0)
reference = build_model(variant, None)
with torch.no_grad():  # every tensor random (biases and LayerScale too), so a misplaced one would show
    for parameter in reference.parameters():
        parameter.normal_(0.0, 0.05)
ours = reference.state_dict()


def theirs_name(key):
    for pattern, replacement in names:
        key = re.sub(pattern, replacement, key)
    return key


theirs = {theirs_name(k): v.clone() for k, v in ours.items()}
assert not set(theirs) & set(ours), sorted(set(theirs) & set(ours))  # every name is toyvit's own
assert detect_layout(theirs, variant) == "hub"
path = Path("toyvit_t16.pth")
torch.save(theirs, path)
loaded = load_checkpoint(path, variant)
assert loaded.variant == variant and loaded.source == "hub (toyvit_t16.pth)", (loaded.variant, loaded.source)
assert sorted(loaded.state) == sorted(ours)
assert all(torch.equal(loaded.state[k], v) for k, v in ours.items())
broken = Path("broken.pth")
torch.save({k: v for k, v in theirs.items() if k != "layers.3.scale2"}, broken)
try:
    load_checkpoint(broken, variant)
    raise AssertionError("a checkpoint without layers.3.scale2 loaded")
except CheckpointError as e:
    assert "missing keys (1): ['blocks.3.ls2.gamma']" in str(e), e

model = build_model(loaded.variant, loaded.state)  # strict
x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
with torch.inference_mode():
    attention = model.get_cls_attention(x, -1)
    assert attention.shape == (2, 3, 1 + 4 * 6), attention.shape
    assert torch.equal(attention, reference.get_cls_attention(x, -1))

config = ServiceConfig(model="toyvit_t16", weights="toyvit_t16.pth@sha256:test")
assert config.variant == variant
service = AttentionService(model, variant, config, precisions=PrecisionPlan.fp32_only())
buffer = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(buffer, "PNG")
(result,) = service.explain([ImageRequest(buffer.getvalue(), {"upsample": "false", "size": "64x96"})])
assert isinstance(result, AttentionResult), result
assert result.model == "toyvit_t16" and result.arrays["attention"].shape == (3, 4, 6) and result.grid == [4, 6]

checkpoint = get_checkpoint(variant)
assert checkpoint.url() == "https://example.org/toyvit/weights/toyvit_t16/toyvit_t16_pretrain.pth", checkpoint.url()
assert licence_of("toyvit") == {"licence": "MIT", "licence_url": "https://example.org/toyvit/LICENSE"}
print("toyvit served")
"""


def apply_patch(block: str, root: Path) -> str:
    """Apply one of the guide's patches under ``root``; return the file it changes. Each hunk's
    unmarked and ``-`` lines must occur exactly once, from the start of a line; they become its
    unmarked and ``+`` lines (no line numbers: the context says where)."""
    header, *lines = block.splitlines()
    target, *lines = lines
    assert header.startswith("--- a/") and target == "+++ b/" + header.removeprefix("--- a/"), block[:200]
    name = header.removeprefix("--- a/")
    path = root / name
    text = path.read_text()
    hunks: list[list[str]] = []
    for line in lines:
        if line.startswith("@@"):
            hunks.append([])
        else:
            assert hunks, f"{name}: a patch line before its @@ line"
            hunks[-1].append(line)
    for hunk in hunks:
        old, new = [], []
        for line in hunk:
            mark, body = (line[:1], line[1:]) if line else (" ", "")
            assert mark in " +-", f"{name}: {line!r} is neither context, + nor -"
            if mark != "+":
                old.append(body)
            if mark != "-":
                new.append(body)
        before, after = "\n" + "\n".join(old) + "\n", "\n" + "\n".join(new) + "\n"
        found = text.count(before)
        assert found == 1, f"{name}: the guide's context lines occur {found} times, not once; update the guide:\n{before}"
        text = text.replace(before, after)
    path.write_text(text)
    return name


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A copy of the package with the guide's patches applied, and the files they touched, in order."""
    root = tmp_path_factory.mktemp("guide")
    package_copy(root)
    blocks = code_blocks(GUIDE, "diff")
    assert blocks, f"{GUIDE} has no ```diff blocks"
    touched = [apply_patch(block, root) for block in blocks]
    return root, touched


def test_guide_names_every_file_its_example_touches(applied: tuple[Path, list[str]]) -> None:
    root, touched = applied
    assert touched == ["vitscope/model/variants.py", "vitscope/model/keymaps.py", "vitscope/model/catalogue.py"]
    changed = changes(root / PACKAGE.name)
    assert not changed.added_files and not changed.missing_files  # the copy has the package's files, no more
    assert sorted(f"{PACKAGE.name}/{name}" for name in changed.added_lines) == sorted(touched)
    text = GUIDE.read_text()
    section = text.split("## The files, in order", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. `([^`]+)`", section, re.MULTILINE)
    assert listed[: len(touched)] == touched, listed  # the ordered list starts with them, in the patches' order
    for name in touched:
        assert (REPO / name).is_file(), name
        assert f"`{name}`" in text.split("## Worked example", 1)[1], f"the worked example does not name {name}"


def test_guide_example_family_loads_and_serves(applied: tuple[Path, list[str]]) -> None:
    root, _ = applied
    assert run_fresh(root, EXERCISE, json.dumps(TOYVIT_NAMES)).strip().endswith("toyvit served")
