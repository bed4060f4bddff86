"""Attention extraction and maths: image -> normalised tensor -> [CLS] attention maps."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .model.rollout import cls_rollout
from .model.variants import resolve_layer
from .model.vit import VisionTransformer
from .options import MapSpec
from .precision import DTYPES, FP32


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor (3, H, W), as torchvision's ToTensor + Normalize."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, 3) in [0, 1]
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    return ((arr - mean_t) / std_t).permute(2, 0, 1).contiguous()  # (3, H, W)


@torch.inference_mode()
def patch_attention(model: VisionTransformer, batch: torch.Tensor, layer: int | None = None, precision: str = FP32) -> torch.Tensor:
    """[CLS] attention over the patch grid: (B, 3, H, W) -> (B, heads, H/p, W/p), float32.

    CLS->CLS is dropped, so each map sums to <= 1; rows are image y (top to bottom), columns x.
    ``precision="bf16"``/``"fp16"`` runs matmuls and attention under that autocast dtype (softmax of
    the CLS row stays fp32); weights stay fp32, so one model serves every precision. Which
    precision a request gets is decided by ``precision.PrecisionPlan``, not here.
    """
    spec = MapSpec((resolve_layer(layer, model.depth),))
    return attention_maps(model, batch, spec, precision)[0][:, 0]  # (B, heads, H/p, W/p)


@torch.inference_mode()
def attention_maps(
    model: VisionTransformer, batch: torch.Tensor, spec: MapSpec, precision: str = FP32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps ``spec`` asks for, on the patch grid, and the same rows' register entries:
    (B, 3, H, W) -> (B, layers, maps, H/p, W/p) and (B, layers, maps, R), float32.

    ``attention``: the [CLS] rows of ``spec.layers`` (maps = heads) from one forward pass;
    ``rollout``: the [CLS] row of the rollout through blocks 0..layer (one map, the heads fused),
    computed over all tokens. The maps hold the patch tokens only: [CLS] and the R register/storage
    tokens (DINOv2 _reg, DINOv3) are dropped, so a map sums to the mass the patches get (<= 1).
    """
    H, W = batch.shape[-2:]
    p = model.patch_size
    with torch.autocast(batch.device.type, dtype=DTYPES[precision], enabled=precision != FP32):
        if spec.method == "rollout":
            rows = cls_rollout(model, batch, spec.layers[0], spec.head_fusion, spec.discard_ratio)[:, None, None]  # (B, 1, 1, 1 + N)
        else:
            rows = model.get_cls_attention_layers(batch, list(spec.layers))  # (B, layers, heads, 1 + N)
    prefix = model.num_prefix_tokens
    maps = rows[..., prefix:].reshape(*rows.shape[:3], H // p, W // p).float()  # (B, layers, maps, H/p, W/p)
    return maps, rows[..., 1:prefix].float()  # registers: (B, layers, maps, R)


def map_agreement(model: VisionTransformer, device: torch.device, precision: str, grid: int = 16) -> float:
    """Min per-head correlation of last-layer maps in ``precision`` with fp32's, on a fixed input.

    The input is seeded noise of ``grid`` x ``grid`` patches; NaN (e.g. an fp16 overflow) gives 0.
    """
    p = model.patch_size
    x = torch.randn(1, 3, grid * p, grid * p, generator=torch.Generator().manual_seed(0)).to(device)
    reference = patch_attention(model, x, None, FP32)[0].flatten(1)  # (heads, grid * grid)
    got = patch_attention(model, x, None, precision)[0].flatten(1)  # (heads, grid * grid)
    value = float(min(torch.corrcoef(torch.stack((a, b)))[0, 1] for a, b in zip(reference, got, strict=True)))
    return value if value == value else 0.0


def upsample_nearest(maps: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor, as DINO: (..., h, w) -> (..., h*f, w*f)."""
    *lead, h, w = maps.shape
    tiled = np.broadcast_to(maps[..., :, None, :, None], (*lead, h, factor, w, factor))
    return np.ascontiguousarray(tiled.reshape(*lead, h * factor, w * factor))
