"""What the feature methods (``similarity``, ``pca``) share: the patch features of a block, normed
with the model's final norm as the official ``get_intermediate_layers(norm=True)`` /
``x_norm_patchtokens`` do, the ``features=true`` option and output that return them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..vocab import OutputSpec, bool_option

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

FEATURES = OutputSpec(
    "features", "float16", "[D, H/p, W/p]", "the normed patch features of block `layer`, for clients that compute their own", "features"
)
FEATURES_OPTION = bool_option(
    "features",
    "pca and similarity: also return the patch features `[D, H/p, W/p]`, float16 (npz or KServe v2 binary keep them compact)",
)
FEATURE_GRID = "feature_grid"  # compute's tensor: (B, D, h, w), float32


def feature_grid(model: VisionTransformer, batch: torch.Tensor, layer: int) -> torch.Tensor:
    """(B, 3, H, W) -> the normed patch features of block ``layer`` on the grid, (B, D, H/p, W/p) float32."""
    return as_grid(model.get_patch_features(batch, layer), batch, model.patch_size)


def as_grid(tokens: torch.Tensor, batch: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch tokens (B, h*w, D) of ``batch`` (B, 3, H, W), raster order -> (B, D, H/p, W/p) float32."""
    B, _, H, W = batch.shape
    return tokens.float().transpose(1, 2).reshape(B, -1, H // patch_size, W // patch_size)


def unit_features(features: np.ndarray) -> np.ndarray:
    """(D, h, w) features scaled to unit length per patch (a zero feature stays zero)."""
    norms = np.linalg.norm(features, axis=0, keepdims=True)  # (1, h, w)
    return features / np.maximum(norms, np.finfo(features.dtype).tiny)


def features_output(features: np.ndarray) -> np.ndarray:
    """The ``features`` array a response carries: (D, h, w) float16."""
    return np.ascontiguousarray(features.astype(np.float16))
