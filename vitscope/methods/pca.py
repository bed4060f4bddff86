"""``method=pca``: the PCA colours of a block's patch features, DINOv2's Fig. 1 and DINOv3's README
pictures, from one forward pass (the features and the block's [CLS] row; no N x N matrix).

Definition, per image, with X the (n, D) normed patch features of block ``layer`` (as the official
``x_norm_patchtokens``; [CLS] and the register/storage tokens left out), in float64:

1. foreground (``foreground``): ``auto``, the recipe of DINOv2's PCA notebook without its trained
   direction: the first principal component of all patches, split at 0; the side that touches fewer
   patches on the image's border is the foreground (on a tie, the positive side). ``attention``:
   DINO's threshold mask (``mask`` t, default 0.6) of the block's [CLS] attention averaged over
   heads. ``none``: every patch. Fewer than 3 foreground patches: every patch.
2. PCA: the mean and the top 3 principal axes of the centred foreground features (the top
   eigenvectors of their scatter matrix, i.e. the top right singular vectors). Signs
   follow scikit-learn's ``svd_flip`` on the components: each component's largest-magnitude loading
   is positive, so the same features always give the same colours.
3. colours: the projections, each channel min-max scaled over the foreground patches to [0, 1]
   (R, G, B = components 1, 2, 3); background patches are 0 (black).

The response also carries the basis (``pca_basis``: the mean, the components, the channels' minima
and maxima); sent back as ``pca_basis=``, it colours another image with the same colours (steps 2
and 3 then use the basis as it is; the projections are clipped to [0, 1]). ``pca_fit=joint`` fits one
basis on the foreground patches of all the images of one request (KServe v2 elements, a JSON
``images`` list, v1 instances), each image's foreground chosen on its own: steps 2 and 3 over their
union, so the images share their colours.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..attention import upsample_nearest
from ..errors import OptionError
from ..masks import threshold_masks
from ..vocab import ModelFacts, Options, OptionSpec, OutputSpec, choice_option
from .base import ForwardSpec, Method, Needs
from .features import FEATURE_GRID, FEATURES, FEATURES_OPTION, as_grid, features_output

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

FOREGROUNDS: tuple[str, ...] = ("auto", "attention", "none")
FITS: tuple[str, ...] = ("image", "joint")  # pca_fit; a response's pca_fit may also read "basis" (pca_basis given)
ATTENTION_MASK = 0.6  # foreground=attention without mask=t: DINO's usual 60% of the mass
COMPONENTS = 3  # R, G, B
BASIS_ROWS = 1 + COMPONENTS + 1  # the mean, the components, the scale (minima then maxima, then zeros)
MIN_FOREGROUND = 3  # fewer foreground patches than this: fit on every patch
CLS_MEAN = "cls_mean"  # compute's tensor: the block's [CLS] attention over the patches, mean of heads (B, h, w)

PCA = OutputSpec(
    "pca",
    "float",
    "[3, H, W]",
    "RGB in [0, 1]: the top 3 principal components of the foreground patches' features, each min-max scaled over them; "
    "background 0; per patch with `upsample=false`",
    npy=True,
    rgb=True,
)
FOREGROUND = OutputSpec(
    "foreground_mask", "bool", "[H/p, W/p]", "the foreground patches the PCA was fitted on and coloured", json="packbits"
)
BASIS = OutputSpec(
    "pca_basis",
    "float32",
    "[5, D]",
    "the basis: row 0 the mean, rows 1-3 the components, row 4 the channels' minima (3) and maxima (3); send it back as "
    "`pca_basis=` to colour another image alike",
)


def parse_basis(value: object, facts: ModelFacts) -> tuple[float, ...]:
    """``pca_basis``: a pca response's ``pca_basis``, as nested lists [5][D] or the base64 of its
    float32 bytes (little-endian, row-major); flattened."""
    shape = (BASIS_ROWS, facts.embed_dim)
    how = f"give the pca_basis [{BASIS_ROWS}, {facts.embed_dim}] of a pca response of this model (JSON lists, or base64 float32)"
    try:
        if isinstance(value, str):
            array = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").astype(np.float64)
        else:
            array = np.asarray(value, dtype=np.float64)
    except (binascii.Error, ValueError, TypeError) as e:
        raise OptionError(f"pca_basis is malformed ({e}): {how}") from e
    if array.size != BASIS_ROWS * facts.embed_dim or (not isinstance(value, str) and array.shape != shape):
        raise OptionError(f"pca_basis has {array.size} values in the shape {list(array.shape)}, not {list(shape)}: {how}")
    if not np.isfinite(array).all():
        raise OptionError(f"pca_basis holds NaN or infinite values: {how}")
    return tuple(array.ravel().tolist())


def principal_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (k, D)) of the rows of ``x``, signs as ``svd_flip``: each component's
    largest-magnitude loading positive. Missing components (fewer rows than k) are zeros.

    The components are the top eigenvectors of the (D, D) scatter matrix in float64: the right
    singular vectors of the centred rows, at O(n D^2) instead of an (n, D) SVD."""
    mean = x.mean(axis=0)
    centred = x - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    available = min(k, max(len(x) - 1, 0))
    components = np.zeros((k, x.shape[1]))
    components[:available] = vectors[:, ::-1][:, :available].T
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    return mean, components * np.where(signs == 0, 1.0, signs)[:, None]


def border(h: int, w: int) -> np.ndarray:
    """(h * w,) bool: the patches on the image's border."""
    edge = np.zeros((h, w), bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    return edge.ravel()


def auto_foreground(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """The side of the first component (all patches, split at 0) touching fewer border patches."""
    mean, first = principal_components(x, 1)
    positive = (x - mean) @ first[0] > 0
    edge = border(h, w)
    return positive if (positive & edge).sum() <= (~positive & edge).sum() else ~positive


@dataclass(frozen=True)
class Basis:
    """What colours features: ``rgb = clip((x - mean) @ components.T - low) / (high - low), 0, 1)``."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (3, D)
    low: np.ndarray  # (3,) the channels' minima over the fitted patches
    high: np.ndarray  # (3,) ... and maxima

    @classmethod
    def fit(cls, foregrounds: Sequence[np.ndarray]) -> Basis:
        """Fitted on the foreground features (n_i, D) of one or several images, float64."""
        x = np.concatenate(foregrounds)
        mean, components = principal_components(x, COMPONENTS)
        projected = (x - mean) @ components.T  # (n, 3)
        return cls(mean, components, projected.min(axis=0), projected.max(axis=0))

    @classmethod
    def of_rows(cls, flat: Sequence[float], dim: int) -> Basis:
        """From the ``pca_basis`` rows (5, D), flattened."""
        rows = np.asarray(flat, np.float64).reshape(BASIS_ROWS, dim)
        return cls(rows[0], rows[1 : 1 + COMPONENTS], rows[-1, :COMPONENTS], rows[-1, COMPONENTS : 2 * COMPONENTS])

    def rows(self) -> np.ndarray:
        """The ``pca_basis`` output (5, D) float32: the mean, the components, then the minima and maxima."""
        scale = np.zeros_like(self.mean)
        scale[: 2 * COMPONENTS] = np.concatenate([self.low, self.high])
        return np.vstack([self.mean, self.components, scale]).astype(np.float32)

    def colours(self, x: np.ndarray, foreground: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n, 3) RGB in [0, 1]; background rows 0."""
        projected = (x - self.mean) @ self.components.T  # (n, 3)
        rgb = np.clip((projected - self.low) / np.where(self.high > self.low, self.high - self.low, 1.0), 0.0, 1.0)
        rgb[~foreground] = 0.0
        return rgb


class PCAColours(Method):
    name = "pca"
    summary = "the PCA colours of a block's patch features (DINOv2 Fig. 1): `[3, H, W]` RGB in [0, 1], background black"
    options = (
        choice_option(
            "foreground",
            FOREGROUNDS,
            "auto",
            "pca only: the patches to fit and colour; `auto` (the side of the first component touching fewer border "
            "patches), `attention` (DINO's mask, `mask` t, of the mean `[CLS]` attention) or `none`",
        ),
        OptionSpec(
            "pca_basis",
            "basis",
            parse_basis,
            "pca only: a previous pca response's `pca_basis` (`[5, D]` lists, or base64 float32): the same colours for this image",
        ),
        choice_option(
            "pca_fit",
            FITS,
            "image",
            "pca only: `image` fits the colours on each image; `joint` fits one basis on all the images of the request "
            "(KServe v2 elements, a JSON `images` list), which then share their colours",
        ),
        FEATURES_OPTION,
    )
    excludes: ClassVar[Mapping[str, str]] = {
        **{
            name: f"{name} does not apply to method=pca: it colours the patch features of one block"
            for name in ("heads", "layers", "boxes", "registers")
        },
        **{
            name: f"{name} does not apply to method=pca: its colours are three components whose signs are a convention, not one "
            "value per patch to order the patches by; ask it of method=attention, rollout, similarity or an explanation method"
            for name in ("faithfulness", "faithfulness_steps", "faithfulness_baseline")
        },
    }
    outputs = (PCA, FOREGROUND, BASIS, FEATURES)
    fields = ("foreground", "pca_fit")
    needs = Needs(blocks="0..layer", keeps="the patch tokens of block layer, normed, and its [CLS] row")

    def forward_spec(self, options: Options) -> ForwardSpec:
        return ForwardSpec(self.name, (options.layer,), query=options.query)  # the foreground and the basis come afterwards

    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        B, _, H, W = batch.shape
        p = model.patch_size
        tokens, rows = model.get_features_and_cls_attention(batch, spec.layers[0], query=spec.query)  # (B, n, D), (B, heads, N)
        assert rows is not None
        grid = as_grid(tokens, batch, p)  # (B, D, h, w)
        cls_mean = rows[..., model.num_prefix_tokens :].float().mean(dim=1).reshape(B, H // p, W // p)  # (B, h, w)
        return {FEATURE_GRID: grid, CLS_MEAN: cls_mean}

    def check(self, options: Options, image_size: tuple[int, int]) -> None:
        if options.mask is not None and options.param("foreground") != "attention":
            raise OptionError(f"mask=t applies to method=pca with foreground=attention only (foreground={options.param('foreground')})")
        if options.param("pca_fit") == "joint" and options.param("pca_basis") is not None:
            raise OptionError("pca_basis colours with a given basis and pca_fit=joint fits one: give one of them")

    def check_together(self, images: Sequence[tuple[Options, tuple[int, int]]]) -> list[OptionError | None]:
        """``pca_fit=joint`` needs several images of one block in the request."""
        errors = super().check_together(images)
        joint = [i for i, (options, _) in enumerate(images) if options.param("pca_fit") == "joint" and errors[i] is None]
        layers = {images[i][0].layer for i in joint}
        for i in joint:
            if len(joint) < 2:
                errors[i] = OptionError(
                    "pca_fit=joint fits one basis on several images, and this request has one: send the images together "
                    "(KServe v2 BYTES elements, or a JSON images list), or use pca_fit=image"
                )
            elif len(layers) > 1:
                errors[i] = OptionError(f"pca_fit=joint needs the features of one block, and the images ask layers {sorted(layers)}")
        return errors

    def arrays(self, options: Options, computed: Mapping[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
        (out,) = self.arrays_together([(options, computed)], patch_size)
        return out

    def arrays_together(self, images: Sequence[tuple[Options, Mapping[str, np.ndarray]]], patch_size: int) -> list[dict[str, np.ndarray]]:
        """Each image coloured by its basis: fitted on it, on the foregrounds of the request's
        ``pca_fit=joint`` images together, or given (``pca_basis``)."""
        features = [self.patch_features(computed) for _, computed in images]  # (n, D) float64 each
        foregrounds = [self.foreground(options, x, computed[CLS_MEAN]) for (options, computed), x in zip(images, features, strict=True)]
        joint = [x[fg] for (options, _), x, fg in zip(images, features, foregrounds, strict=True) if options.param("pca_fit") == "joint"]
        shared = Basis.fit(joint) if joint else None
        out = []
        for (options, computed), x, foreground in zip(images, features, foregrounds, strict=True):
            given = options.param("pca_basis")
            if options.param("pca_fit") == "joint":
                assert shared is not None
                basis = shared
            elif given is not None:
                basis = Basis.of_rows(given, x.shape[1])
            else:
                basis = Basis.fit([x[foreground]])
            grid = computed[FEATURE_GRID]  # (D, h, w)
            _, h, w = grid.shape
            colours = np.ascontiguousarray(basis.colours(x, foreground).T.reshape(COMPONENTS, h, w).astype(np.float32))  # (3, h, w)
            arrays = {
                PCA.name: upsample_nearest(colours, patch_size) if options.upsample else colours,
                FOREGROUND.name: foreground.reshape(h, w),
                BASIS.name: basis.rows(),
            }
            if options.param("features"):
                arrays[FEATURES.name] = features_output(grid)
            out.append(arrays)
        return out

    @staticmethod
    def patch_features(computed: Mapping[str, np.ndarray]) -> np.ndarray:
        """One image's features as rows: (D, h, w) -> (h * w, D) float64."""
        grid = computed[FEATURE_GRID]
        return grid.reshape(grid.shape[0], -1).T.astype(np.float64)

    @staticmethod
    def foreground(options: Options, x: np.ndarray, cls_mean: np.ndarray) -> np.ndarray:
        """(n,) bool: the patches to fit and colour, by ``options``' foreground rule; ``cls_mean`` (h, w)."""
        h, w = cls_mean.shape
        mode = options.param("foreground")
        if mode == "auto":
            chosen = auto_foreground(x, h, w)
        elif mode == "attention":
            chosen = threshold_masks(cls_mean, options.mask if options.mask is not None else ATTENTION_MASK).ravel()
        else:
            chosen = np.ones(h * w, bool)
        return chosen if chosen.sum() >= MIN_FOREGROUND else np.ones(h * w, bool)

    def metadata(self, options: Options, patch_size: int) -> dict[str, object]:
        """The foreground rule, and where the colours' basis came from: this image (``image``), the
        request's images together (``joint``), or the request's ``pca_basis`` (``basis``)."""
        fit = "basis" if options.param("pca_basis") is not None else options.param("pca_fit")
        return {"foreground": options.param("foreground"), "pca_fit": fit}


METHOD = PCAColours()
