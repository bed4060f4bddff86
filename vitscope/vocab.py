"""The option vocabulary: what a request option is (``OptionSpec``) and how its value is parsed, what
option parsing knows of the model (``ModelFacts``), the validated options of one request
(``Options``) and what an output array is (``OutputSpec``).

A leaf: of the package it imports only ``errors`` (itself a leaf), so any module may import it (the
methods, the shared options in ``options.py``, a method a user adds) without an import cycle.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import OptionError

DEFAULT_METHOD = "attention"  # what a request that names no method gets (methods/ registers it)
DEFAULT_EXPLAIN_METHOD = "legrad"  # what it gets on the explanation routes (TorchServe's /explanations, KServe's :explain)
DEFAULT_FAITHFULNESS_STEPS = 16  # what faithfulness= gets unless it says faithfulness_steps (faithfulness.py)
DEFAULT_FAITHFULNESS_BASELINE = "blur"  # what a perturbed patch becomes unless it says faithfulness_baseline
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INTERVAL_RE = re.compile(r"^([\[(])\s*([-\d.]+)\s*,\s*([-\d.]+)\s*([\])])$")


class _Architecture(Protocol):
    """What ``ModelFacts.of`` reads of a model's variant (``model.variants.Variant``)."""

    @property
    def name(self) -> str: ...
    @property
    def family(self) -> str: ...
    @property
    def patch_size(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def num_registers(self) -> int: ...
    @property
    def queries(self) -> tuple[str, ...]: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def text(self) -> object | None: ...


class _Model(Protocol):
    """What ``ModelFacts.of`` reads of a model (``model.vit.VisionTransformer``)."""

    @property
    def variant(self) -> _Architecture: ...
    @property
    def depth(self) -> int: ...


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
    queries: tuple[str, ...] = ("cls",)  # the queries its maps can be of, the one it pools by first
    num_classes: int = 0  # its classifier head's classes (0: none)
    text: bool = False  # a text tower: zero-shot ``labels=``
    labels: tuple[str, ...] = ()  # the head's class names (the service sets them: ``Predictor.labels``)
    max_targets: int = 16  # targets one explanation request may name (the max_targets setting: targets.DEFAULT_MAX_TARGETS)

    @classmethod
    def of(cls, model: _Model) -> ModelFacts:
        v = model.variant
        return cls(
            v.name,
            v.family,
            v.patch_size,
            model.depth,
            v.num_heads,
            v.embed_dim,
            v.num_registers,
            v.queries,
            v.num_classes,
            v.text is not None,
        )

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "patch_size": self.patch_size,
            "layers": self.depth,
            "heads": self.num_heads,
            "embed_dim": self.embed_dim,
            "registers": self.num_registers,
            "queries": list(self.queries),
            "classes": self.num_classes,
            "text_tower": self.text,
        }


Parser = Callable[[object, ModelFacts], Any]


@dataclass(frozen=True)
class OptionSpec:
    """One request option: how it is parsed (``parse`` raises ``OptionError`` with the 400 message),
    its default, and how the docs and the describe API present it."""

    name: str
    type: str  # boolean, integer, number, string, size (HxW), blocks (indices or "all"), heads (indices)
    parse: Parser = field(repr=False, compare=False)
    help: str  # the docs' "meaning" column (Markdown)
    default: object = None  # what a request leaving it out gets (None: not set)
    default_text: str = ""  # the docs' "default" column where the value alone would mislead ("last (`11`)", "all")
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
    axes: str  # the docs' shape, e.g. "[heads, H, W]"
    help: str
    asked_by: str = ""
    json: str = "array"  # "array": nested lists; "packbits": {"shape", "encoding", "data"} (booleans, see masks.py)
    npy: bool = False  # the one array a format=npy body carries
    rgb: bool = False  # a colour image [3, ...] in [0, 1] to show as it is, not maps to colour (the viewer reads it)

    def typed(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """The array in the element type the response carries (``dtype``: the request's float type)."""
        return array.astype(self.element_type(dtype), copy=False)

    def element_type(self, dtype: str) -> str:
        """The numpy element type this output is sent as (``dtype``: the request's float type)."""
        return dtype if self.dtype == "float" else self.dtype

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "dtype": self.dtype, "axes": self.axes, "help": self.help}
        if self.rgb:
            out["rgb"] = True
        return {**out, "asked_by": self.asked_by} if self.asked_by else out


@dataclass(frozen=True)
class Options:
    """Validated options of one request. Exactly one of short_side/scale/size is set."""

    layer: int  # 0..depth-1 (with ``layers``: the deepest of them)
    heads: tuple[int, ...]  # head indices to return, ascending
    upsample: bool
    short_side: int | None = None
    scale: float | None = None
    size: tuple[int, int] | None = None  # (height, width) in pixels
    precision: str = "fp32"
    format: str = "json"
    dtype: str = "float32"
    layers: tuple[int, ...] | None = None  # several blocks in one pass: maps (layers, heads, H, W)
    method: str = DEFAULT_METHOD
    params: tuple[tuple[str, Any], ...] = ()  # the method's own options (methods/), defaults filled in
    mask: float | None = None  # DINO's threshold masks keeping this fraction of each map's mass
    boxes: bool = False  # with mask: each mask's largest 8-connected component as [x0, y0, x1, y1]
    registers: bool = False  # also the maps' entries for the register/storage tokens (DINOv2 _reg, DINOv3)
    query: str | None = None  # the token whose attention the maps are of (None: the one the model pools by)
    top_k: int = 0  # predictions: the top classes (of the head, or of ``labels``); 0: none
    labels: tuple[str, ...] | None = None  # zero-shot texts (CLIP, SigLIP), scored against the image
    faithfulness: tuple[str, ...] = ()  # the map's deletion/insertion curves to measure (faithfulness.py); (): none
    faithfulness_steps: int = DEFAULT_FAITHFULNESS_STEPS  # points per curve, less one
    faithfulness_baseline: str = DEFAULT_FAITHFULNESS_BASELINE  # what a perturbed patch becomes: blur or mean

    def param(self, name: str) -> Any:
        """The value of one of the method's own options."""
        return dict(self.params)[name]


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


def listed(name: str, value: object, separator: str, noun: str) -> list[object] | None:
    """The items of a list option sent as a JSON list, a form field holding a JSON list (starting with
    '['), or text with ``separator`` between the items; None for any other value (the caller's 400)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise OptionError(f"{name}: a form field starting with '[' is read as a JSON list of {noun}, and this one is not ({e})") from e
    if isinstance(value, str):
        return list(value.split(separator))
    return list(value) if isinstance(value, (list, tuple)) else None


def choice_option(name: str, choices: tuple[str, ...], default: str, help: str) -> OptionSpec:
    """An option taking one of ``choices``."""
    return OptionSpec(name, "string", lambda v, _: parse_choice(name, v, choices), help, default, choices=choices)


def fraction_option(name: str, interval: str, help: str, default: float | None = None, default_text: str = "") -> OptionSpec:
    """A number option in ``interval``, e.g. "[0, 1)"."""
    return OptionSpec(name, "number", lambda v, _: parse_fraction(name, v, interval), help, default, default_text, interval=interval)


def bool_option(name: str, help: str, default: bool = False) -> OptionSpec:
    return OptionSpec(name, "boolean", lambda v, _: parse_bool(name, v), help, default)
