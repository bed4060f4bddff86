"""The network: shapes, position-embedding grids, and the fast attention path vs an eager reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testkit.checkpoints import TINY
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import all_variants, get_variant, resolve_layer
from vitscope.model.vit import VisionTransformer


@pytest.fixture(scope="module")
def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return build_model(TINY, None)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (112, 32)])
@pytest.mark.parametrize("layer", range(12))
def test_fast_path_equals_eager_reference(tiny: VisionTransformer, size: tuple[int, int], layer: int) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(layer))
    with torch.inference_mode():
        fast = tiny.get_cls_attention(x, layer)
        ref = tiny.get_cls_attention(x, layer, explicit=True)  # N x N softmax in every block
    assert fast.shape == ref.shape == (2, TINY.num_heads, 1 + (size[0] // 16) * (size[1] // 16))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.sum(-1), torch.ones(2, TINY.num_heads))


def test_sdpa_block_equals_eager_block(tiny: VisionTransformer) -> None:
    """The SDPA forward of a block (used before the requested layer) and the explicit path match a
    softmax written out here, independently of the model's code."""
    tokens = torch.randn(1, 1 + 12, 192)
    blk = tiny.blocks[3]
    with torch.inference_mode():
        attn = blk.attn
        qkv = attn.qkv(blk.norm1(tokens)).reshape(1, 13, 3, 3, 64).permute(2, 0, 3, 1, 4)
        q, k, v = qkv
        expected = attn.proj((((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1) @ v).transpose(1, 2).reshape(1, 13, 192))
        torch.testing.assert_close(attn(blk.norm1(tokens)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(attn(blk.norm1(tokens), explicit=True), expected, atol=1e-6, rtol=0)
        weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)  # (1, heads, 13, 13), by hand
        torch.testing.assert_close(attn.cls_attention(blk.norm1(tokens), explicit=True), weights[:, :, 0])


@pytest.mark.parametrize("variant", [v for v in all_variants() if v.family == "dino"], ids=lambda v: v.name)
def test_variant_dims_and_forward_shape(variant) -> None:
    with torch.device("cpu" if variant.arch == "vit_tiny" else "meta"):  # the shapes alone: no 86M random weights
        model = VisionTransformer(variant)
    dims = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}[variant.arch]
    assert (model.cls_token.shape[-1], model.num_heads, model.depth) == (*dims, 12)
    assert model.pos_embed.shape == (1, 1 + (224 // variant.patch_size) ** 2, dims[0])
    assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[0].attn.qkv.bias is not None
    if variant.arch == "vit_tiny":
        with torch.inference_mode():
            assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 192)


@pytest.mark.parametrize("grid", [(14, 14), (1, 1), (3, 17), (30, 7), (60, 107)])
def test_pos_embed_interpolation_yields_exact_grid(tiny: VisionTransformer, grid: tuple[int, int]) -> None:
    pos = tiny.interpolate_pos_encoding(*grid)
    assert pos.shape == (1, 1 + grid[0] * grid[1], 192)
    torch.testing.assert_close(pos[:, 0], tiny.pos_embed[:, 0])  # CLS position untouched


def test_pos_embed_interpolation_is_bicubic_resize_of_stored_grid(tiny: VisionTransformer) -> None:
    """DINO's resize: bicubic by the scale factors (grid + 0.1) / 14 (its historical offset), no antialias."""
    stored = tiny.pos_embed[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(stored, scale_factor=(5.1 / 14, 9.1 / 14), mode="bicubic", align_corners=False)
    got = tiny.interpolate_pos_encoding(5, 9)[:, 1:].reshape(1, 5, 9, 192).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected)
    assert tiny.interpolate_pos_encoding(14, 14) is tiny.pos_embed


def test_requested_layer_stops_the_forward(tiny: VisionTransformer) -> None:
    """Blocks after the requested layer never run."""
    calls: list[int] = []
    hooks = [blk.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, blk in enumerate(tiny.blocks)]
    try:
        with torch.inference_mode():
            tiny.get_cls_attention(torch.zeros(1, 3, 32, 32), layer=4)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1, 2, 3]


def test_layer_indices(tiny: VisionTransformer) -> None:
    assert resolve_layer(None, 12) == 11 and resolve_layer(-1, 12) == 11 and resolve_layer(0, 12) == 0
    for bad in (12, -13, 99):
        with pytest.raises(ValueError, match="out of range"):
            resolve_layer(bad, 12)


def test_unpatchable_size_is_rejected(tiny: VisionTransformer) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny.prepare_tokens(torch.zeros(1, 3, 40, 32))


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="choose a hub name"):
        get_variant("vit_huge", 8)
    with pytest.raises(ValueError, match="has patch size 14"):
        get_variant("dinov2_vits14", 16)
    with pytest.raises(ValueError, match="patch size"):
        get_variant("vit_small", 14)
