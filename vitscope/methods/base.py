"""What a method declares: its options, its outputs, what it needs of the forward pass, its compute.

A *method* is one way of looking at the model (``attention``, ``rollout``, ...). Everything else
(option parsing, the service, the codecs, the describe API, the docs' tables, the client and the
viewer) reads these declarations instead of naming methods, so a new method is one module plus one
line in ``methods/__init__.py``.

The option vocabulary a method declares its options and outputs with (``OptionSpec``, the parsers,
``OutputSpec``, ``Options``) is ``vocab.py``, a leaf: a method imports it, never ``options.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..attention import on_patch_grid
from ..errors import OptionError
from ..vocab import ModelFacts, Options, OptionSpec, OutputSpec

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer


@dataclass(frozen=True)
class Needs:
    """What a method needs of the forward pass, beyond the image: served by the describe API."""

    blocks: str  # which blocks run, e.g. "0..layer"
    keeps: str  # what the forward pass keeps per block, e.g. "the [CLS] query's row"


@dataclass(frozen=True)
class ForwardSpec:
    """One forward pass: requests whose specs (and image sizes, precisions) are equal share it."""

    method: str
    layers: tuple[int, ...]  # the blocks whose outputs are read
    params: tuple[tuple[str, object], ...] = ()  # the method's own options that change the forward pass
    query: str | None = None  # the token whose attention rows it reads (None: the one the model pools by)

    def param(self, name: str) -> Any:
        return dict(self.params)[name]


class Method(ABC):
    """A way of looking at the model. Subclasses set the class attributes and ``compute``."""

    name: str  # the value of the ``method`` option
    summary: str  # one line for the docs and the describe API
    options: tuple[OptionSpec, ...] = ()  # its own options (400 for any other method)
    excludes: ClassVar[Mapping[str, str]] = {}  # shared options it refuses -> the 400 message saying why
    requires: ClassVar[Mapping[str, str]] = {}  # options a request must give with it -> the 400 message saying how
    outputs: tuple[OutputSpec, ...]  # in response order; the first is the main one
    fields: tuple[str, ...] | None = None  # the metadata fields ``metadata`` adds (None: its own options' names)
    needs: Needs
    cost_factor: float = 1.0  # its forward pass's time over the plain blocks' (measured; for admission, ``cost.py``)

    @abstractmethod
    def forward_spec(self, options: Options) -> ForwardSpec:
        """The forward pass a request needs."""

    @abstractmethod
    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> named tensors with a leading batch axis, under the caller's autocast."""

    @abstractmethod
    def arrays(self, options: Options, computed: Mapping[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
        """One image's share of ``compute``'s tensors -> the response's arrays, in ``outputs`` order;
        those the request did not ask for are left out."""

    def cost_blocks(self, options: Options) -> float:
        """Block-equivalents of the forward pass a request runs: blocks ``0..layer`` (the deepest of
        ``layers``) times ``cost_factor``."""
        return (options.layer + 1) * self.cost_factor

    def validate(self, options: Options, facts: ModelFacts) -> None:  # noqa: B027 (optional hook: most methods need none)
        """Reject (``OptionError``) what the parsed options ask of a model that lacks it (defaults included)."""

    def check(self, options: Options, image_size: tuple[int, int]) -> None:  # noqa: B027 (optional hook: most methods need none)
        """Reject (``OptionError``) what only the processed image's size (H, W) can tell is wrong."""

    def check_together(self, images: Sequence[tuple[Options, tuple[int, int]]]) -> list[OptionError | None]:
        """The error (None: none) of each image of one request using this method, seen together ((options,
        processed size) in order). By default each image is checked alone by ``check``."""
        errors: list[OptionError | None] = []
        for options, image_size in images:
            try:
                self.check(options, image_size)
            except OptionError as e:
                errors.append(e)
            else:
                errors.append(None)
        return errors

    def arrays_together(self, images: Sequence[tuple[Options, Mapping[str, np.ndarray]]], patch_size: int) -> list[dict[str, np.ndarray]]:
        """The arrays of each image of one request using this method ((options, its share of ``compute``)
        in order). By default each image on its own (``arrays``); a method may treat them together."""
        return [self.arrays(options, computed, patch_size) for options, computed in images]

    def patch_values(self, options: Options, arrays: Mapping[str, np.ndarray], patch_size: int) -> np.ndarray:
        """The value per patch that ``faithfulness=`` orders the patches by, from one image's response
        arrays (``arrays``, as ``arrays`` returned them): (maps, H/p, W/p) float, one curve set per map.
        By default the main output on the patch grid, averaged over its leading axes: one map.
        ``OptionError`` for a main output of colours (``rgb``): no single value per patch."""
        main = self.outputs[0]
        if main.rgb:
            raise OptionError(f"faithfulness does not apply to method={self.name}: its {main.name} is colours, not one value per patch")
        grid = arrays[main.name]
        grid = on_patch_grid(grid, patch_size) if options.upsample else grid
        return grid.reshape(-1, *grid.shape[-2:]).mean(axis=0, keepdims=True)  # (1, h, w)

    def scored_maps(self, options: Options) -> int:
        """The maps ``patch_values`` gives for a request (``faithfulness``'s curve sets, for its cost)."""
        return 1

    def metadata(self, options: Options, patch_size: int) -> dict[str, object]:
        """The response fields that say how the method ran (after ``method``): its own options' values."""
        return {spec.name: options.param(spec.name) for spec in self.options}

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        return self.fields if self.fields is not None else tuple(spec.name for spec in self.options)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "summary": self.summary,
            "own_options": [spec.name for spec in self.options],  # the options only this method takes
            "excludes": dict(self.excludes),
            "requires": dict(self.requires),
            "outputs": [output.describe() for output in self.outputs],
            "needs": {"blocks": self.needs.blocks, "keeps": self.needs.keeps},
        }
