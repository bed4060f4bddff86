"""DINOv2 (with and without registers) and DINOv3: official layouts, position encodings, the fast
path against the eager reference, the register tokens, and a constructed model per family.

The expected state_dict layouts below are written out from the official model code
(facebookresearch/dinov2 ``hub/backbones.py`` + ``models/vision_transformer.py`` + ``layers/``,
facebookresearch/dinov3 ``hub/backbones.py`` + ``models/vision_transformer.py`` + ``layers/``),
which the tests do not import.
"""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from scripts import REPO
from testkit.checkpoints import backbone_state, brightness_seeking_state, encode, tiny_replica
from testkit.handler import answer
from vitscope.errors import RequestError
from vitscope.model.catalogue import CHECKPOINTS, DEFAULT_CHECKPOINTS, RELEASES, Release, get_checkpoint, licence_of
from vitscope.model.checkpoint import CheckpointError, build_model, filter_state_dict
from vitscope.model.position import RopePositionEmbedding, apply_rope
from vitscope.model.rollout import cls_rollout, rollout_reference
from vitscope.model.variants import FAMILIES, VARIANTS, Family, Variant, get_variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import PrecisionPlan
from vitscope.schema import AttentionResult, ImageRequest
from vitscope.service import AttentionService, ServiceConfig

Layout = dict[str, tuple[int, ...]]


def _block(dim: int, ffn: Layout, bias_mask: bool) -> Layout:
    """One block's keys as the official Block / SelfAttentionBlock name them (LayerScale on)."""
    return {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        **({"attn.qkv.bias_mask": (3 * dim,)} if bias_mask else {}),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "ls1.gamma": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        **ffn,
        "ls2.gamma": (dim,),
    }


def _mlp(dim: int, hidden: int) -> Layout:
    return {"mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,)}


def dinov2(dim: int, depth: int, ffn: Layout, registers: bool) -> tuple[int, Layout, Layout]:
    top = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + 37 * 37, dim),  # img_size 518 / patch 14
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        **({"register_tokens": (1, 4, dim)} if registers else {}),
    }
    return depth, top, _block(dim, ffn, bias_mask=False)


def dinov3(dim: int, depth: int, heads: int, ffn: Layout) -> tuple[int, Layout, Layout]:
    top = {
        "cls_token": (1, 1, dim),
        "storage_tokens": (1, 4, dim),
        "mask_token": (1, dim),
        "rope_embed.periods": (dim // heads // 4,),
        "patch_embed.proj.weight": (dim, 3, 16, 16),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    return depth, top, _block(dim, ffn, bias_mask=True)


# ViT-g: SwiGLUFFNFused, hidden (int(6144 * 2 / 3) + 7) // 8 * 8 = 4096 -> w12 (8192, 1536), w3 (1536, 4096).
SWIGLU_G = {"mlp.w12.weight": (8192, 1536), "mlp.w12.bias": (8192,), "mlp.w3.weight": (1536, 4096), "mlp.w3.bias": (1536,)}
# ViT-S+: SwiGLUFFN, ffn_ratio 6: d = int(2304 * 2 / 3) = 1536 (aligned to 8) -> w1, w2 (1536, 384), w3 (384, 1536).
SWIGLU_SPLUS = {
    "mlp.w1.weight": (1536, 384),
    "mlp.w1.bias": (1536,),
    "mlp.w2.weight": (1536, 384),
    "mlp.w2.bias": (1536,),
    "mlp.w3.weight": (384, 1536),
    "mlp.w3.bias": (384,),
}
OFFICIAL = {
    **{
        name + suffix: dinov2(dim, depth, ffn, registers=bool(suffix))
        for suffix in ("", "_reg")
        for name, dim, depth, ffn in (
            ("dinov2_vits14", 384, 12, _mlp(384, 1536)),
            ("dinov2_vitb14", 768, 12, _mlp(768, 3072)),
            ("dinov2_vitl14", 1024, 24, _mlp(1024, 4096)),
            ("dinov2_vitg14", 1536, 40, SWIGLU_G),
        )
    },
    "dinov3_vits16": dinov3(384, 12, 6, _mlp(384, 1536)),
    "dinov3_vits16plus": dinov3(384, 12, 6, SWIGLU_SPLUS),
    "dinov3_vitb16": dinov3(768, 12, 12, _mlp(768, 3072)),
    "dinov3_vitl16": dinov3(1024, 24, 16, _mlp(1024, 4096)),
}
# Official file names (dinov2 hub: <base>/<model>/<model>[_reg4]_pretrain.pth; dinov3 hub: ..._pretrain_lvd1689m-<hash>.pth).
OFFICIAL_FILES = {
    "dinov2_vits14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_vitg14_reg": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth",
    "dinov3_vits16": "https://dl.fbaipublicfiles.com/dinov3/dinov3_vits16/dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "dinov3_vits16plus": "https://dl.fbaipublicfiles.com/dinov3/dinov3_vits16plus/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "dinov3_vitb16": "https://dl.fbaipublicfiles.com/dinov3/dinov3_vitb16/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    "dinov3_vitl16": "https://dl.fbaipublicfiles.com/dinov3/dinov3_vitl16/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
}
FAMILY_REPLICAS = ["dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitg14_reg", "dinov3_vits16", "dinov3_vits16plus"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_is_the_official_layout(name: str) -> None:
    depth, top, block = OFFICIAL[name]
    with torch.device("meta"):  # shapes only: ViT-g has 1.1 B parameters
        state = VisionTransformer(VARIANTS[name]).state_dict()
    expected = {**top, **{f"blocks.{i}.{k}": shape for i in range(depth) for k, shape in block.items()}}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_official_names_and_files() -> None:
    assert sorted(v.name for v in VARIANTS.values() if v.family != "dino") == sorted(OFFICIAL)
    for name, url in OFFICIAL_FILES.items():
        assert get_checkpoint(VARIANTS[name]).url() == url
    assert set(DEFAULT_CHECKPOINTS) >= set(OFFICIAL)
    assert CHECKPOINTS["dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd"].hash_prefix == "8aa4cbdd"
    assert all(CHECKPOINTS[DEFAULT_CHECKPOINTS[n]].gated_message() == "" for n in OFFICIAL if n.startswith("dinov2"))
    message = get_checkpoint(VARIANTS["dinov3_vits16"]).gated_message()
    assert "request access" in message and "WEIGHTS=path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message
    assert get_variant("dinov2_vits14_reg", 14) is VARIANTS["dinov2_vits14_reg"]
    assert (VARIANTS["dinov2_vits14"].eps, VARIANTS["dinov3_vits16"].eps) == (1e-6, 1e-5)


def test_the_architecture_table_is_apart_from_the_catalogue() -> None:
    """The catalogue reads the architecture table, never the reverse; a row holds its own family's entries only."""
    probe = "import sys, vitscope.model.variants; print(sorted(m for m in sys.modules if m.startswith('vitscope')))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "vitscope.model.variants" in loaded and "vitscope.model.catalogue" not in loaded
    assert list(VARIANTS) == [v.name for family in FAMILIES.values() for v in family.variants]
    assert set(RELEASES) == {name for name, family in FAMILIES.items() if family.variants}
    assert set(CHECKPOINTS) == {c.name for r in RELEASES.values() for c in r.checkpoints}
    with pytest.raises(ValueError, match=r"variants \['dino_vits8'\] name another family"):
        Family("toy", "Toy", variants=(VARIANTS["dino_vits8"],))
    with pytest.raises(ValueError, match=r"checkpoints \['dino_deitsmall8_pretrain'\] are of another family's models"):
        Release("dinov2", "Apache-2.0", "", "", checkpoints=(CHECKPOINTS["dino_deitsmall8_pretrain"],))
    assert licence_of("dinov3") == {
        "licence": "DINOv3 License",
        "licence_url": "https://github.com/facebookresearch/dinov3/blob/main/LICENSE.md",
    }
    assert licence_of("a_family_without_official_weights") == {}


@pytest.fixture(scope="module", params=FAMILY_REPLICAS)
def replica(request: pytest.FixtureRequest) -> tuple[Variant, VisionTransformer]:
    variant = tiny_replica(request.param)
    torch.manual_seed(1)
    model = build_model(variant, None)
    with torch.no_grad():  # LayerScale at its init (1e-5 in DINOv3) would hide the blocks: make them count
        for name, parameter in model.named_parameters():
            if name.endswith(("gamma", "bias")):
                parameter.normal_(0.0, 0.5)
    return variant, model


@pytest.mark.parametrize("size", [(70, 42), (56, 112)])
def test_fast_path_equals_eager_reference(replica: tuple[Variant, VisionTransformer], size: tuple[int, int]) -> None:
    variant, model = replica
    p = variant.patch_size
    size = (size[0] // 14 * p, size[1] // 14 * p)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    n = variant.num_prefix_tokens + (size[0] // p) * (size[1] // p)
    with torch.inference_mode():
        for layer in range(variant.depth):
            fast, ref = model.get_cls_attention(x, layer), model.get_cls_attention(x, layer, explicit=True)
            assert fast.shape == (2, 3, n)
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(cls_rollout(model, x, 2, "max", 0.3), rollout_reference(model, x, 2, "max", 0.3), atol=1e-5, rtol=1e-5)


def test_registers_follow_cls_without_positions() -> None:
    """DINOv2: positions are added to [CLS] and the patches, then the registers go in after [CLS]."""
    variant = tiny_replica("dinov2_vits14_reg")
    model = build_model(variant, None)
    x = torch.randn(1, 3, 28, 42)
    with torch.inference_mode():
        tokens, rope = model.prepare_tokens(x)
        pos = model.interpolate_pos_encoding(2, 3)
        torch.testing.assert_close(tokens[:, 0], model.cls_token[:, 0] + pos[:, 0])
        torch.testing.assert_close(tokens[:, 1:5], model.register_tokens)
        torch.testing.assert_close(tokens[:, 5:], model.patch_embed(x) + pos[:, 1:])
    assert rope is None and tokens.shape == (1, 1 + 4 + 6, 96)


@pytest.mark.parametrize("name, offset, antialias", [("dinov2_vits14", 0.1, False), ("dinov2_vits14_reg", 0.0, True)])
def test_dinov2_position_grid_resize(name: str, offset: float, antialias: bool) -> None:
    """Original models: scale factors (grid + 0.1) / 37, no antialias; _reg models: size=, antialias."""
    model = build_model(tiny_replica(name), None)
    stored = model.pos_embed[:, 1:].reshape(1, 37, 37, 96).permute(0, 3, 1, 2)
    if offset:
        expected = F.interpolate(stored, scale_factor=(5.1 / 37, 9.1 / 37), mode="bicubic", antialias=False)
    else:
        expected = F.interpolate(stored, size=(5, 9), mode="bicubic", antialias=True)
    got = model.interpolate_pos_encoding(5, 9)[:, 1:].reshape(1, 5, 9, 96).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected)
    assert model.interpolate_pos_encoding(37, 37) is model.pos_embed


def test_rope_is_dinov3s_formula() -> None:
    """sin/cos written out element by element from DINOv3's RopePositionEmbedding (base 100, 'separate')."""
    head_dim, h, w = 16, 2, 3
    rope = RopePositionEmbedding(head_dim, 100.0)
    sin, cos = rope(h, w)
    assert sin.shape == cos.shape == (h * w, head_dim)
    for i in range(h):
        for j in range(w):
            y, x = 2 * (i + 0.5) / h - 1, 2 * (j + 0.5) / w - 1
            for d in range(head_dim):
                quarter = d % (head_dim // 2)  # angles are tiled twice
                coord, k = (y, quarter) if quarter < head_dim // 4 else (x, quarter - head_dim // 4)
                period = 100.0 ** (2 * k / (head_dim // 2))
                assert math.isclose(float(sin[i * w + j, d]), math.sin(2 * math.pi * coord / period), abs_tol=1e-5)
                assert math.isclose(float(cos[i * w + j, d]), math.cos(2 * math.pi * coord / period), abs_tol=1e-5)


def test_rope_rotates_patches_only_and_keeps_norms() -> None:
    rope = RopePositionEmbedding(16, 100.0)(2, 3)
    x = torch.randn(2, 3, 5 + 6, 16)  # [CLS] + 4 storage + 6 patches
    y = apply_rope(x, rope)
    torch.testing.assert_close(y[:, :, :5], x[:, :, :5])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(y[:, :, 5:], x[:, :, 5:])
    # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) per pair (d, d + 8): the rotation written out
    sin, cos = rope
    first, second = x[..., 5:, :8], x[..., 5:, 8:]
    torch.testing.assert_close(y[..., 5:, :8], first * cos[:, :8] - second * sin[:, :8])
    torch.testing.assert_close(y[..., 5:, 8:], second * cos[:, 8:] + first * sin[:, 8:])


def test_dinov3_key_bias_is_masked() -> None:
    model = build_model(tiny_replica("dinov3_vits16"), None)
    qkv = model.blocks[0].attn.qkv
    assert qkv.bias_mask.tolist() == [1.0] * 96 + [0.0] * 96 + [1.0] * 96
    with torch.no_grad():
        qkv.bias.fill_(1.0)
    out = qkv(torch.zeros(1, 96))  # the bias alone, masked
    assert out[0, :96].eq(1).all() and out[0, 96:192].eq(0).all() and out[0, 192:].eq(1).all()


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"])
def test_constructed_model_finds_the_bright_square(name: str) -> None:
    """A checkpoint whose [CLS] attends to bright patches, served: the mass is on the square, not on
    the registers, and the map is the patch grid (multiples of the patch size, non-square)."""
    variant = tiny_replica(name)
    model = build_model(variant, brightness_seeking_state(1.0, variant))
    p = variant.patch_size
    image = np.full((9 * p, 12 * p, 3), 20, np.uint8)
    image[3 * p : 6 * p, 7 * p : 10 * p] = 235  # 3x3 patches, rows 3..5, columns 7..9
    service = AttentionService(model, variant, ServiceConfig(model=name, weights="test"), precisions=PrecisionPlan.fp32_only())
    options = {"layer": 0, "upsample": "false", "registers": "true" if variant.num_registers else "false", "size": f"{9 * p}x{12 * p}"}
    (result,) = service.explain([ImageRequest(encode(image), options)])
    assert isinstance(result, AttentionResult) and result.model == variant.name
    attention, registers = result.arrays["attention"], result.arrays.get("registers")
    assert attention.shape == (3, 9, 12) and result.image_size == [9 * p, 12 * p]
    on_square = attention[:, 3:6, 7:10].sum(axis=(1, 2))  # [CLS] looks like a bright patch: it keeps ~1/10
    assert (on_square / attention.sum(axis=(1, 2)) > 0.99).all() and (on_square > 0.85).all(), on_square
    if variant.num_registers:
        assert registers is not None and registers.shape == (3, 4)
        assert (registers.sum(axis=1) < 0.05).all()
        total = attention.sum(axis=(1, 2)) + registers.sum(axis=1)
        assert (total <= 1.0 + 1e-5).all()  # the rest is [CLS] -> [CLS]
    else:
        assert registers is None


def test_registers_option() -> None:
    variant = tiny_replica("dinov2_vits14_reg")
    model = build_model(variant, None)
    service = AttentionService(model, variant, ServiceConfig(model=variant.name, weights="test"), precisions=PrecisionPlan.fp32_only())
    png = encode(np.full((56, 84, 3), 128, np.uint8))
    with_layers, rollout, npy = service.explain(
        [
            ImageRequest(png, {"registers": "true", "layers": "0,2", "heads": "1"}),
            ImageRequest(png, {"registers": "true", "method": "rollout"}),
            ImageRequest(png, {"registers": "true", "format": "npy"}),
        ]
    )
    assert isinstance(with_layers, AttentionResult) and isinstance(rollout, AttentionResult)
    assert with_layers.arrays["registers"].shape == (2, 1, 4) and with_layers.arrays["attention"].shape[:2] == (2, 1)
    assert rollout.arrays["registers"].shape == (1, 4)
    assert isinstance(npy, RequestError) and "format=npz" in str(npy)
    plain = tiny_replica("dinov2_vits14")
    config = ServiceConfig(model=plain.name, weights="test")
    service = AttentionService(build_model(plain, None), plain, config, precisions=PrecisionPlan.fp32_only())
    (error,) = service.explain([ImageRequest(png, {"registers": "true"})])
    assert isinstance(error, RequestError) and error.status == 400 and "no register tokens" in str(error)


def test_strict_load_names_the_missing_registers_and_bias_masks() -> None:
    with pytest.raises(CheckpointError) as err:
        build_model(tiny_replica("dinov2_vits14_reg"), backbone_state(tiny_replica("dinov2_vits14")))
    assert "missing keys (1): ['register_tokens']" in str(err.value)
    v3 = tiny_replica("dinov3_vits16")
    state = {k: v for k, v in backbone_state(v3).items() if not k.endswith("bias_mask")}
    with pytest.raises(CheckpointError) as err:
        build_model(v3, state)
    assert "missing keys (3): ['blocks.0.attn.qkv.bias_mask'" in str(err.value) and "4 storage tokens (DINOv3)" in str(err.value)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): \['register_tokens'\]"):
        build_model(tiny_replica("dinov2_vits14"), backbone_state(tiny_replica("dinov2_vits14_reg")))


def test_chunked_dinov2_training_blocks_are_unchunked() -> None:
    """DINOv2's training checkpoints group blocks for FSDP: teacher.backbone.blocks.<chunk>.<i>."""
    variant = tiny_replica("dinov2_vits14_reg")
    state = backbone_state(variant)
    chunked = {"backbone." + re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.{m[1]}.", k): v for k, v in state.items()}
    assert "backbone.blocks.1.2.norm1.weight" in chunked
    loaded = build_model(variant, filter_state_dict({"teacher": chunked}))
    torch.testing.assert_close(loaded.state_dict()["blocks.2.norm1.weight"], state["blocks.2.norm1.weight"])


def test_docs_model_table_is_the_variants_table() -> None:
    """Every model is in docs/models.md's table, with the parameter count of the backbone built here."""
    text = (REPO / "docs" / "models.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \| (DINO\w*) \| ([\d.]+) M \|", text, re.MULTILINE)
    listed = {name: (family, float(params)) for names, family, params in rows for name in re.findall(r"`(\w+)`", names)}
    assert sorted(listed) == sorted(VARIANTS)
    for name, (family, params) in listed.items():
        with torch.device("meta"):
            count = sum(p.numel() for p in VisionTransformer(VARIANTS[name]).parameters())
        assert (family, params) == (FAMILIES[VARIANTS[name].family].title, round(count / 1e6, 1)), name


def test_registers_in_every_protocol() -> None:
    """JSON, npz, KServe v1 and v2 (an FP32 output tensor) carry the registers when asked for."""
    variant = tiny_replica("dinov3_vits16")
    config = ServiceConfig(model=variant.name, weights="test")
    service = AttentionService(build_model(variant, None), variant, config, precisions=PrecisionPlan.fp32_only())
    png = encode(np.full((48, 64, 3), 90, np.uint8))
    b64 = base64.b64encode(png).decode()
    rows = [
        {"data": png, "registers": "true", "upsample": "false"},
        {"data": png, "registers": "true", "format": "npz"},
        {"body": {"instances": [{"data": b64, "registers": True, "upsample": False}]}},
        {"body": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}], "parameters": {"registers": True}}},
    ]
    plain, npz, v1, v2 = answer(service, rows)
    assert all(reply.status == 200 for reply in (plain, npz, v1, v2))
    expected = np.asarray(orjson.loads(plain.body)["registers"], dtype=np.float32)
    assert expected.shape == (3, 4)
    with np.load(io.BytesIO(npz.body), allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["registers"], expected)
    np.testing.assert_array_equal(np.asarray(orjson.loads(v1.body)["predictions"][0]["registers"], dtype=np.float32), expected)
    outputs = {o["name"]: o for o in orjson.loads(v2.body)["outputs"]}
    assert (outputs["registers"]["datatype"], outputs["registers"]["shape"]) == ("FP32", [3, 4])
    np.testing.assert_array_equal(np.asarray(outputs["registers"]["data"], dtype=np.float32).reshape(3, 4), expected)
