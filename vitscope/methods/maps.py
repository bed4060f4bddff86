"""What the methods that answer with maps over the patch grid (``attention``, ``rollout``) share:
their outputs, how a forward pass's [CLS] rows become maps, and the response arrays made from them
(nearest upsampling, DINO's threshold masks, boxes, the register entries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..attention import on_patch_grid, upsample_nearest
from ..masks import boxes_of, threshold_masks
from ..vocab import Options, OutputSpec
from .base import Method

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

MAPS = OutputSpec(
    "attention",
    "float",
    "[maps, H, W]",
    "one map per head, or one fused map (rollout); `[layers, maps, H, W]` with `layers`; per patch (`H/p`, `W/p`) with `upsample=false`",
    npy=True,
)
MASKS = OutputSpec(
    "masks",
    "bool",
    "[maps, H/p, W/p]",
    "DINO's threshold mask of every map on the patch grid; in JSON bit-packed (`masks.py`)",
    asked_by="mask",
    json="packbits",
)
BOXES = OutputSpec("boxes", "int32", "[maps, 4]", "each mask's largest 8-connected component, `[x0, y0, x1, y1]` half-open pixels", "boxes")
REGISTERS = OutputSpec("registers", "float32", "[maps, R]", "each map's weights on the R register/storage tokens", asked_by="registers")
MAP_OUTPUTS: tuple[OutputSpec, ...] = (MAPS, MASKS, BOXES, REGISTERS)
# The names the forward pass's tensors go by between compute and arrays (not sent as such).
GRID, REGISTER_ROWS = "grid", "register_rows"


def split_rows(model: VisionTransformer, rows: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
    """The query's rows over all tokens (B, layers, maps, P + R + n) -> the patch grid (B, layers, maps, H/p, W/p)
    and the register entries (B, layers, maps, R), float32. The class tokens' entries ([CLS], DeiT's
    distillation token) are dropped, so a map sums to the mass the patches get (<= 1)."""
    p, prefix, classes = model.patch_size, model.num_prefix_tokens, model.variant.num_class_tokens
    grid = rows[..., prefix:].reshape(*rows.shape[:3], height // p, width // p).float()  # (B, layers, maps, H/p, W/p)
    return {GRID: grid, REGISTER_ROWS: rows[..., classes:prefix].float()}  # registers: (B, layers, maps, R)


class MapMethod(Method):
    """A method whose answer is maps over the patch grid, one per (layer, head) or fused: the
    ``attention`` output, with ``masks``, ``boxes`` and ``registers`` when asked."""

    outputs = MAP_OUTPUTS

    def select(self, options: Options, grid: np.ndarray, registers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The maps (layers, maps, H/p, W/p) and register entries (layers, maps, R) the request asked for."""
        return grid, registers

    def arrays(self, options: Options, computed: Mapping[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
        grid, registers = self.select(options, computed[GRID], computed[REGISTER_ROWS])
        if options.layers is None:
            grid, registers = grid[0], registers[0]  # one layer: (maps, H/p, W/p), (maps, R)
        out = {MAPS.name: upsample_nearest(grid, patch_size) if options.upsample else np.ascontiguousarray(grid)}
        if options.mask is not None:
            out[MASKS.name] = threshold_masks(grid, options.mask)
            if options.boxes:
                out[BOXES.name] = boxes_of(out[MASKS.name], patch_size)
        if options.registers:
            out[REGISTERS.name] = np.ascontiguousarray(registers)
        return out

    def patch_values(self, options: Options, arrays: Mapping[str, np.ndarray], patch_size: int) -> np.ndarray:
        """One map: the mean over the maps returned (the heads asked for; rollout's one), of the deepest block with ``layers``."""
        grid = arrays[MAPS.name]
        grid = on_patch_grid(grid, patch_size) if options.upsample else grid  # (maps, h, w), or (layers, maps, h, w)
        if options.layers is not None:
            grid = grid[-1]  # the deepest block (layers ascend)
        return grid.mean(axis=0, keepdims=True)  # (1, h, w)
