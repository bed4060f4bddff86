"""Image -> normalised tensor, last-layer [CLS] maps (the precision probe's measure), nearest upsampling."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .model.variants import resolve_layer
from .model.vit import VisionTransformer
from .precision import FP32, autocast


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor (3, H, W), as torchvision's ToTensor + Normalize."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, 3) in [0, 1]
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    return ((arr - mean_t) / std_t).permute(2, 0, 1).contiguous()  # (3, H, W)


@torch.inference_mode()
def patch_attention(model: VisionTransformer, batch: torch.Tensor, layer: int | None = None, precision: str = FP32) -> torch.Tensor:
    """[CLS] attention over the patch grid: (B, 3, H, W) -> (B, heads, H/p, W/p), float32.

    CLS->CLS and the register/storage tokens are dropped, so each map sums to <= 1; rows are image y
    (top to bottom), columns x. ``precision="bf16"``/``"fp16"`` runs matmuls and attention under that
    autocast dtype (softmax of the CLS row stays fp32); weights stay fp32, so one model serves every
    precision. Which precision a request gets is decided by ``precision.PrecisionPlan``, not here.
    """
    H, W = batch.shape[-2:]
    p = model.patch_size
    with autocast(batch.device, precision):
        rows = model.get_cls_attention_layers(batch, [resolve_layer(layer, model.depth)])[:, 0]  # (B, heads, 1 + N)
    return rows[..., model.num_prefix_tokens :].reshape(*rows.shape[:2], H // p, W // p).float()  # (B, heads, H/p, W/p)


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


def on_patch_grid(maps: np.ndarray, factor: int) -> np.ndarray:
    """``upsample_nearest``'s inverse: maps upsampled by ``factor`` (..., h*f, w*f) -> their patch grid (..., h, w)."""
    return np.ascontiguousarray(maps[..., ::factor, ::factor])
