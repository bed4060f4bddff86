"""DINO's threshold masks on the patch grid, their largest connected components as boxes, and the
compact encoding masks travel in (numpy only). The client (``client/vitscope_client/mirrors.py``) and the
viewer (``viewer/js/maps.js``) compute the same masks; tests compare the three element by element.

A mask of a map keeps the highest patches that together hold a fraction ``t`` of the map's mass,
exactly as DINO's ``visualize_attention.py``: sort ascending, normalise by the sum, keep the patches
whose cumulative share is > 1 - t. Its box is the bounding box, in image pixels ``[x0, y0, x1, y1]``
(half-open: x1, y1 are one past the last pixel), of its largest 8-connected component.
"""

from __future__ import annotations

import base64
from collections import deque

import numpy as np

MASK_ENCODING = "packbits"  # np.packbits of each map's (h * w) row-major mask, big-endian bits


def threshold_masks(maps: np.ndarray, t: float) -> np.ndarray:
    """Boolean masks (..., h, w) keeping, per map, the highest patches that hold a fraction t of its mass."""
    *lead, h, w = maps.shape
    flat = maps.reshape(-1, h * w).astype(np.float64)  # (maps, h*w)
    order = np.argsort(flat, axis=1, kind="stable")  # ascending; ties in index order (as the viewer)
    ranked = np.take_along_axis(flat, order, axis=1)
    running = np.cumsum(ranked, axis=1)  # sequential sums: the viewer's JavaScript adds in the same order
    total = running[:, -1:]
    cumulative = running / np.where(total > 0, total, 1.0)
    keep_sorted = cumulative > 1 - t
    masks = np.empty_like(keep_sorted)
    np.put_along_axis(masks, order, keep_sorted, axis=1)
    return masks.reshape(*lead, h, w)


def largest_component_box(mask: np.ndarray, patch_size: int) -> list[int]:
    """[x0, y0, x1, y1] in pixels of the largest 8-connected component of a (h, w) mask ([] if empty)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # size, row0, col0, row1, col1
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = deque([start]), 0
        r0, c0, r1, c1 = start[0], start[1], start[0], start[1]
        while queue:
            r, c = queue.popleft()
            size += 1
            r0, c0, r1, c1 = min(r0, r), min(c0, c), max(r1, r), max(c1, c)
            for nr in range(max(r - 1, 0), min(r + 2, h)):
                for nc in range(max(c - 1, 0), min(c + 2, w)):
                    if mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        queue.append((nr, nc))
        if size > best[0]:
            best = (size, int(r0), int(c0), int(r1), int(c1))
    if best[0] == 0:
        return []
    _, r0, c0, r1, c1 = best
    return [c0 * patch_size, r0 * patch_size, (c1 + 1) * patch_size, (r1 + 1) * patch_size]


def boxes_of(masks: np.ndarray, patch_size: int) -> np.ndarray:
    """Boxes (..., 4) int32 of masks (..., h, w)."""
    *lead, h, w = masks.shape
    flat = [largest_component_box(m, patch_size) for m in masks.reshape(-1, h, w)]
    return np.asarray(flat, dtype=np.int32).reshape(*lead, 4)


def encode_masks(masks: np.ndarray) -> dict[str, object]:
    """``{"shape": [..., h, w], "encoding": "packbits", "data": "<base64>"}``: one bit per patch, each
    map's bits padded to whole bytes. The client's ``decode_masks`` inverts it."""
    h, w = masks.shape[-2:]
    packed = np.packbits(masks.reshape(-1, h * w), axis=1)  # (maps, ceil(h*w / 8)) uint8
    return {"shape": list(masks.shape), "encoding": MASK_ENCODING, "data": base64.b64encode(packed.tobytes()).decode()}
