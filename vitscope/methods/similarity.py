"""``method=similarity``: click a patch, see where the similar patches are. The cosine similarity, in
[-1, 1], of every patch's feature to the feature of the patch holding ``point``; the features are the
patch tokens after block ``layer``, normed with the model's final norm (as the official
``x_norm_patchtokens``), from one forward pass with no N x N matrix.

Several images in one request (KServe v2 elements, a JSON ``images`` list, v1 instances): ``point``
is a pixel of the first image, and every image's map is against that patch's feature (cross-image
correspondence). Every image of the request gives the same ``point`` (v2 and ``images`` share it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..attention import upsample_nearest
from ..errors import OptionError
from ..vocab import Options, OptionSpec, OutputSpec, parse_point
from .base import ForwardSpec, Method, Needs
from .features import FEATURE_GRID, FEATURES, FEATURES_OPTION, feature_grid, features_output, unit_features

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

SIMILARITY = OutputSpec(
    "similarity",
    "float",
    "[1, H, W]",
    "cosine similarity in [-1, 1] of every patch's feature to that of the patch at `point`; per patch with `upsample=false`",
    npy=True,
)


class Similarity(Method):
    name = "similarity"
    summary = "cosine similarity of every patch's feature (block `layer`, normed) to the patch at `point`: one map `[1, H, W]` in [-1, 1]"
    options = (
        OptionSpec(
            "point",
            "point",
            lambda v, _: parse_point("point", v),
            "similarity only: `x,y`, a pixel of the processed image (the response's `image_size` frame), e.g. `240,120`",
        ),
        FEATURES_OPTION,
    )
    requires: ClassVar[Mapping[str, str]] = {
        "point": "method=similarity needs point=x,y: a pixel of the processed image (the image_size frame), e.g. point=240,120"
    }
    excludes: ClassVar[Mapping[str, str]] = {
        name: f"{name} does not apply to method=similarity: it returns one map of feature similarity"
        for name in ("heads", "layers", "mask", "boxes", "registers", "query")
    }
    outputs = (SIMILARITY, FEATURES)
    fields = ("point", "patch")
    needs = Needs(blocks="0..layer", keeps="the patch tokens of block layer, normed (no attention weights)")

    def forward_spec(self, options: Options) -> ForwardSpec:
        return ForwardSpec(self.name, (options.layer,))  # the point is applied afterwards: requests share the forward

    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        return {FEATURE_GRID: feature_grid(model, batch, spec.layers[0])}  # (B, D, h, w)

    def check(self, options: Options, image_size: tuple[int, int]) -> None:
        (x, y), (height, width) = options.param("point"), image_size
        if x >= width or y >= height:
            raise OptionError(
                f"point={x},{y} is outside the processed image, {width} pixels wide and {height} high (its image_size "
                f"[{height}, {width}]): give x < {width} and y < {height}"
            )

    def check_together(self, images: Sequence[tuple[Options, tuple[int, int]]]) -> list[OptionError | None]:
        """The point is checked in the first image; the others must give the same point (it is the first's)."""
        (first, first_size), *others = images
        errors: list[OptionError | None] = super().check_together([(first, first_size)])
        point = first.param("point")
        for options, _ in others:
            given = options.param("point")
            errors.append(
                None
                if given == point
                else OptionError(
                    f"point={given[0]},{given[1]} differs from the first image's point={point[0]},{point[1]}: in a request of "
                    "several images every map is against the first image's patch at point; send separate requests for separate points"
                )
            )
        return errors

    def arrays(self, options: Options, computed: Mapping[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
        (out,) = self.arrays_together([(options, computed)], patch_size)
        return out

    def arrays_together(self, images: Sequence[tuple[Options, Mapping[str, np.ndarray]]], patch_size: int) -> list[dict[str, np.ndarray]]:
        """Every image's map against the feature of the first image's patch at ``point``."""
        first, first_computed = images[0]
        row, col = self.patch(first, patch_size)
        reference = unit_features(first_computed[FEATURE_GRID])[:, row, col]  # (D,)
        return [self.image_arrays(options, computed[FEATURE_GRID], reference, patch_size) for options, computed in images]

    @staticmethod
    def image_arrays(options: Options, features: np.ndarray, reference: np.ndarray, patch_size: int) -> dict[str, np.ndarray]:
        """One image's arrays: the cosine of its features (D, h, w) to the unit ``reference`` (D,)."""
        similarity = np.einsum("dhw,d->hw", unit_features(features), reference)[None].astype(np.float32)  # (1, h, w)
        out = {SIMILARITY.name: upsample_nearest(similarity, patch_size) if options.upsample else similarity}
        if options.param("features"):
            out[FEATURES.name] = features_output(features)
        return out

    @staticmethod
    def patch(options: Options, patch_size: int) -> tuple[int, int]:
        """(row, column) of the patch holding ``point``."""
        x, y = options.param("point")
        return y // patch_size, x // patch_size

    def metadata(self, options: Options, patch_size: int) -> dict[str, object]:
        """The point and the patch (row, column) that holds it (in the first image of a request of
        several); ``features`` is said by the array itself."""
        return {"point": list(options.param("point")), "patch": list(self.patch(options, patch_size))}


METHOD = Similarity()
