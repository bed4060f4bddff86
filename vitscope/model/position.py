"""Position information for the patch tokens: a learned embedding resized to the image's grid
(DINO, DINOv2), or rotary embeddings on the patch tokens' queries and keys (DINOv3).

Both follow the official code exactly, in eval mode (DINOv3's coordinate shift/jitter/rescale are
training-time augmentations and do not apply).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Rope = tuple[torch.Tensor, torch.Tensor]  # (sin, cos), each (patches, head_dim), float32


def resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int, offset: float, antialias: bool, prefix: int = 1) -> torch.Tensor:
    """A stored (1, prefix + g*g, C) position embedding for a (grid_h, grid_w) patch grid: (1, prefix + grid_h*grid_w, C).

    ``prefix``: the positions of the tokens before the patches ([CLS]; DeiT's distillation token; none
    for SigLIP), kept as they are. Bicubic, in float32, as DINO and DINOv2: with ``offset`` > 0 the resize is given as the scale
    factors (grid + offset) / g (the kernels then sample at those scales, DINO's historical
    work-around), otherwise as the exact size; ``antialias`` as the DINOv2 register models.
    The stored grid is returned as it is when the image's grid is that grid.
    """
    g = math.isqrt(pos_embed.shape[1] - prefix)
    if (grid_h, grid_w) == (g, g):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :prefix].float(), pos_embed[:, prefix:].float()  # (1, prefix, C), (1, g*g, C)
    patch_pos = patch_pos.reshape(1, g, g, dim).permute(0, 3, 1, 2)  # (1, C, g, g)
    if offset:
        scale = ((grid_h + offset) / g, (grid_w + offset) / g)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=antialias)
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"position grid resized to {tuple(patch_pos.shape[-2:])}, not {(grid_h, grid_w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)  # (1, h*w, C)
    return torch.cat((cls_pos, patch_pos), dim=1).to(pos_embed.dtype)


class RopePositionEmbedding(nn.Module):
    """DINOv3's axial RoPE: per head, a quarter of the dims rotate with the row coordinate and a
    quarter with the column, each pair (i, i + head_dim/2) by the angle 2 pi c / period_i, where
    c in [-1, 1] is the patch centre normalised by the grid's height (rows) and width (columns)."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        # Stored in the official checkpoints (persistent buffer): loaded, so it must exist here.
        periods = base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))  # (head_dim/4,)
        self.register_buffer("periods", periods, persistent=True)
        self.periods: torch.Tensor

    def forward(self, grid_h: int, grid_w: int) -> Rope:
        """(sin, cos) for the grid's patches in raster order, each (grid_h * grid_w, head_dim)."""
        device = self.periods.device
        rows = torch.arange(0.5, grid_h, device=device, dtype=torch.float32) / grid_h  # (h,)
        cols = torch.arange(0.5, grid_w, device=device, dtype=torch.float32) / grid_w  # (w,)
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)  # (h*w, 2)
        coords = 2.0 * coords - 1.0  # [0, 1] -> [-1, 1]
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # (h*w, 2, head_dim/4)
        angles = angles.flatten(1, 2).tile(2)  # (h*w, head_dim)
        return torch.sin(angles), torch.cos(angles)


def apply_rope(x: torch.Tensor, rope: Rope | None) -> torch.Tensor:
    """Rotate the last ``patches`` tokens of queries or keys (B, heads, N, d); the prefix tokens
    ([CLS], storage) are left as they are. The rotation runs in float32 and returns x's dtype."""
    if rope is None:
        return x
    sin, cos = rope
    prefix = x.shape[-2] - sin.shape[-2]
    if prefix < 0:
        raise ValueError(f"RoPE for {sin.shape[-2]} patches applied to {x.shape[-2]} tokens")
    patches = x[..., prefix:, :].to(sin.dtype)  # (B, heads, patches, d)
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((x[..., :prefix, :], rotated.to(x.dtype)), dim=-2)
