"""What a method declares: its options, its outputs, what it needs of the forward pass, its compute.

A *method* is one way of looking at the model (``attention``, ``rollout``, ...). Everything else
(option parsing, the service, the codecs, the describe API, README's tables, the client and the
viewer) reads these declarations instead of naming methods, so a new method is one module plus one
line in ``methods/__init__.py``.

This module also holds the option vocabulary (``OptionSpec`` and its parsers): the options every
method shares (``options.py``) are declared with the same pieces.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import OptionError

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer
    from ..options import Options

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INTERVAL_RE = re.compile(r"^([\[(])\s*([-\d.]+)\s*,\s*([-\d.]+)\s*([\])])$")


@dataclass(frozen=True)
class ModelFacts:
    """What option parsing and the description need to know of the model served."""

    name: str
    family: str
    patch_size: int
    depth: int
    num_heads: int
    embed_dim: int
    num_registers: int

    @classmethod
    def of(cls, model: VisionTransformer) -> ModelFacts:
        v = model.variant
        return cls(v.name, v.family, v.patch_size, model.depth, v.num_heads, v.embed_dim, v.num_registers)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "patch_size": self.patch_size,
            "layers": self.depth,
            "heads": self.num_heads,
            "embed_dim": self.embed_dim,
            "registers": self.num_registers,
        }


Parser = Callable[[object, ModelFacts], Any]


@dataclass(frozen=True)
class OptionSpec:
    """One request option: how it is parsed (``parse`` raises ``OptionError`` with the 400 message),
    its default, and how README and the describe API present it."""

    name: str
    type: str  # boolean, integer, number, string, size (HxW), blocks (indices or "all"), heads (indices)
    parse: Parser = field(repr=False, compare=False)
    help: str  # README's "meaning" column (Markdown)
    default: object = None  # what a request leaving it out gets (None: not set)
    default_text: str = ""  # README's "default" column where the value alone would mislead ("last (`11`)", "all")
    choices: tuple[str, ...] = ()
    interval: str = ""  # numbers: e.g. "[0, 1)"

    def describe(self) -> dict[str, object]:
        """The option as the describe API serves it (JSON)."""
        out: dict[str, object] = {"name": self.name, "type": self.type, "help": self.help}  # no nulls: TorchServe drops them
        if self.default is not None:
            out["default"] = self.default
        if self.default_text:
            out["default_text"] = self.default_text
        if self.choices:
            out["choices"] = list(self.choices)
        if self.interval:  # machine-readable bounds too: {"minimum": 0, "maximum": 1, "exclusive_maximum": true}
            lo, hi, open_lo, open_hi = interval_bounds(self.interval)
            out.update(
                {"interval": self.interval, "minimum": lo, "maximum": hi, "exclusive_minimum": open_lo, "exclusive_maximum": open_hi}
            )
        return out


@dataclass(frozen=True)
class OutputSpec:
    """One array a method returns: its element type, axes, how each format carries it, and the option
    that asks for it (an empty ``asked_by``: always returned)."""

    name: str
    dtype: str  # "float": float32, or float16 when the request says dtype=float16; else a numpy dtype: bool, int32, float32
    axes: str  # README's shape, e.g. "[heads, H, W]"
    help: str
    asked_by: str = ""
    json: str = "array"  # "array": nested lists; "packbits": {"shape", "encoding", "data"} (booleans, see masks.py)
    npy: bool = False  # the one array a format=npy body carries
    rgb: bool = False  # a colour image [3, ...] in [0, 1] to show as it is, not maps to colour (the viewer reads it)

    def typed(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """The array in the element type the response carries (``dtype``: the request's float type)."""
        return array.astype(dtype if self.dtype == "float" else self.dtype, copy=False)

    def v2_datatype(self, dtype: str) -> str:
        """The Open Inference Protocol datatype of this output."""
        return V2_DATATYPES[dtype if self.dtype == "float" else self.dtype]

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "dtype": self.dtype, "axes": self.axes, "help": self.help}
        if self.rgb:
            out["rgb"] = True
        return {**out, "asked_by": self.asked_by} if self.asked_by else out


V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "bool": "BOOL", "int32": "INT32"}


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

    def param(self, name: str) -> Any:
        return dict(self.params)[name]


class Method(ABC):
    """A way of looking at the model. Subclasses set the class attributes and ``compute``."""

    name: str  # the value of the ``method`` option
    summary: str  # one line for README and the describe API
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


# ----------------------------------------------------------------------------- option parsers
def text_of(name: str, value: bytes | bytearray) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
        raise OptionError(f"option {name} is not UTF-8 text") from e


def parse_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise OptionError(f"{name}={value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise OptionError(f"{name}={value!r} is not an integer")


def parse_positive_int(name: str, value: object) -> int:
    n = parse_int(name, value)
    if n < 1:
        raise OptionError(f"{name}={n} must be a positive integer")
    return n


def _number(value: object) -> float:
    try:
        return float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        return math.nan


def parse_positive_float(name: str, value: object) -> float:
    x = _number(value)
    if not (math.isfinite(x) and x > 0):
        raise OptionError(f"{name}={value!r} must be a positive number, e.g. 0.5")
    return x


def interval_bounds(interval: str) -> tuple[float, float, bool, bool]:
    """An interval written as "[0, 1)", "(0, 1]", ... -> (low, high, low excluded, high excluded)."""
    match = _INTERVAL_RE.match(interval)
    if not match:
        raise ValueError(f"interval {interval!r} is not written as [a, b), (a, b], ...")
    return float(match[2]), float(match[3]), match[1] == "(", match[4] == ")"


def in_interval(x: float, interval: str) -> bool:
    """Whether ``x`` lies in an interval written as "[0, 1)", "(0, 1]", ..."""
    lo, hi, open_lo, open_hi = interval_bounds(interval)
    return (x > lo if open_lo else x >= lo) and (x < hi if open_hi else x <= hi)


def parse_fraction(name: str, value: object, interval: str) -> float:
    x = _number(value)
    if not (math.isfinite(x) and in_interval(x, interval)):
        raise OptionError(f"{name}={value!r} must be a number in {interval}")
    return x


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"{name}={value!r} is not a boolean (true/false)")


def parse_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise OptionError(f"{name}={value!r} is not one of {list(choices)}")
    return text


def parse_point(name: str, value: object) -> tuple[int, int]:
    """A pixel ``x,y`` ("240,120" or [240, 120]), both non-negative integers."""
    items = items_of(value)
    if len(items) != 2:
        raise OptionError(f"{name}={value!r} is not x,y: two pixel coordinates of the processed image, e.g. {name}=240,120")
    x, y = (parse_int(name, item) for item in items)
    if x < 0 or y < 0:
        raise OptionError(f"{name}={value!r}: pixel coordinates are not negative, e.g. {name}=240,120")
    return x, y


def items_of(value: object) -> list[object]:
    """The elements of a list option: "0,2" (text) or [0, 2] (JSON)."""
    if isinstance(value, str):
        return [s for s in value.split(",") if s.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def choice_option(name: str, choices: tuple[str, ...], default: str, help: str) -> OptionSpec:
    """An option taking one of ``choices``."""
    return OptionSpec(name, "string", lambda v, _: parse_choice(name, v, choices), help, default, choices=choices)


def fraction_option(name: str, interval: str, help: str, default: float | None = None, default_text: str = "") -> OptionSpec:
    """A number option in ``interval``, e.g. "[0, 1)"."""
    return OptionSpec(name, "number", lambda v, _: parse_fraction(name, v, interval), help, default, default_text, interval=interval)


def bool_option(name: str, help: str, default: bool = False) -> OptionSpec:
    return OptionSpec(name, "boolean", lambda v, _: parse_bool(name, v), help, default)
