"""Shared test helpers: small DINO-layout checkpoints and encoded images (no network access)."""

from __future__ import annotations

import argparse
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitscope.model.checkpoint import build_model
from vitscope.model.variants import VARIANTS, Variant, get_variant

TINY = get_variant("dino_vitt16")  # the cheapest variant: 192 dims, 3 heads


def backbone_state(variant: Variant = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-init backbone state_dict with DINO's keys."""
    torch.manual_seed(seed)
    return build_model(variant, None).state_dict()


def full_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """DINO's training-checkpoint layout: teacher/student MultiCropWrapper (+DDP prefix), head, args."""
    head = {"head.mlp.0.weight": torch.zeros(4, 4), "head.last_layer.weight_g": torch.ones(4, 1)}
    teacher = {**{f"backbone.{k}": v for k, v in state.items()}, **head}
    student = {f"module.{k}": v.clone() for k, v in teacher.items()}
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=16, lr=0.0005),
        "dino_loss": {"center": torch.zeros(1, 4)},
    }


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A gradient image (HxWx3 uint8): survives lossy formats, unlike random noise."""
    ys, xs = np.meshgrid(np.linspace(0, 255, height), np.linspace(0, 255, width), indexing="ij")
    return np.stack([xs, ys, np.full((height, width), 90.0)], -1).astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **save_kwargs: object) -> bytes:
    """Encode an image (PIL or HxWxC uint8 array) to bytes in ``fmt``."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def tiny_replica(name: str) -> Variant:
    """A small model in an official variant's layout (the same keys, tokens, position encoding and
    maths; 96 dims, 3 heads, 3 blocks), for fast tests of every family."""
    return replace(VARIANTS[name], name=f"{name}_tiny", embed_dim=96, num_heads=3, depth=3)


def brightness_seeking_state(sign: float = 1.0, variant: Variant = TINY) -> dict[str, torch.Tensor]:
    """Weights whose block-0 [CLS] query attends to bright (sign=+1) or dark (sign=-1) patches.

    The patch embedding puts +s*b, -s*b in dims c, c+1 (b = mean normalised brightness), so after
    LayerNorm dim c is large and positive for sought and negative for other patches; every head's q
    and k read dim c. Registers keep their random values; learned positions are zeroed. Under RoPE
    (DINOv3), c is each head's slowest-turning row-frequency dim (period 100^(1 - 4/head_dim)), which
    patch keys keep to within cos(2 pi / period) of its value.
    """
    state = backbone_state(variant, seed=4)
    dim, p = variant.embed_dim, variant.patch_size
    head_dim = dim // variant.num_heads
    c = head_dim // 4 - 1 if variant.rope_base else 0
    proj = torch.zeros(dim, 3, p, p)
    proj[c], proj[c + 1] = sign / (3 * p * p), -sign / (3 * p * p)
    cls = torch.zeros(1, 1, dim)
    cls[..., c], cls[..., c + 1] = 1.0, -1.0
    qkv = torch.zeros(3 * dim, dim)
    for h in range(variant.num_heads):
        qkv[h * head_dim + c, c] = 1.0  # q, head h
        qkv[dim + h * head_dim + c, c] = 1.0  # k, head h
    state.update(
        {
            "patch_embed.proj.weight": proj,
            "patch_embed.proj.bias": torch.zeros(dim),
            "cls_token": cls,
            "blocks.0.attn.qkv.weight": qkv,
            "blocks.0.attn.qkv.bias": torch.zeros(3 * dim),
        }
    )
    if "pos_embed" in state:
        state["pos_embed"] = torch.zeros_like(state["pos_embed"])
    return state
