"""Request options: parsing from strings/JSON values and validation against the model."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import OptionError
from .image import Size
from .model.variants import resolve_layer

OPTION_NAMES: tuple[str, ...] = (
    "layer",
    "short_side",
    "scale",
    "size",
    "heads",
    "upsample",
    "precision",
    "format",
    "dtype",
)
# Forward-pass arithmetic: fp32 is exact; what bf16/fp16/auto run as is decided per device (precision.py).
PRECISIONS: tuple[str, str, str, str] = ("fp32", "bf16", "fp16", "auto")
FORMATS: tuple[str, ...] = ("json", "npy", "npz")  # response encodings
CONTENT_TYPES: dict[str, str] = {"json": "application/json", "npy": "application/x-npy", "npz": "application/x-npz"}
META_HEADER = "X-Attention-Meta"  # .npy bodies carry the metadata (compact JSON) in this response header
PRECISION_HEADER = "X-Attention-Precision"  # every response: the precision that ran (as meta "precision")
DTYPES: tuple[str, ...] = ("float32", "float16")  # element type of the returned maps
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
MAX_SCALE = 100.0  # larger factors are typos; big results are caught by max_tokens anyway
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x,X\u00d7]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Options:
    """Validated options of one request. Exactly one of short_side/scale/size is set."""

    layer: int  # 0..depth-1
    heads: tuple[int, ...]  # head indices to return, ascending
    upsample: bool
    short_side: int | None = None
    scale: float | None = None
    size: Size | None = None
    precision: str = "fp32"
    format: str = "json"
    dtype: str = "float32"


@dataclass(frozen=True)
class Defaults:
    """What a request gets for the options it leaves out; a model's settings may override them."""

    short_side: int = 480
    upsample: bool = True
    precision: str = "fp32"
    format: str = "json"


DEFAULTS = Defaults()  # the one home of the shipped defaults (ServiceConfig starts from these)


def format_from_accept(accept: str | None, default: str) -> str:
    """Response format named by an HTTP Accept header (first supported media type), else ``default``."""
    by_type = {v: k for k, v in CONTENT_TYPES.items()}
    for media_range in (accept or "").split(","):
        media = media_range.split(";")[0].strip().lower()
        if media in by_type:
            return by_type[media]
    return default


def parse_options(raw: Mapping[str, object], *, depth: int, num_heads: int, defaults: Defaults) -> Options:
    """Validate raw option values (str, bytes, or JSON numbers/lists/bools); ``RequestError`` on any problem."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown}; valid options: {list(OPTION_NAMES)}")
    values = {k: _text(k, v) if isinstance(v, (bytes, bytearray)) else v for k, v in raw.items()}

    geometry = [k for k in ("short_side", "scale", "size") if values.get(k) is not None]
    if len(geometry) > 1:
        raise OptionError(f"options {geometry} conflict: give only one of short_side, scale or size")
    short_side = _positive_int("short_side", values["short_side"]) if "short_side" in geometry else None
    scale = _positive_float("scale", values["scale"]) if "scale" in geometry else None
    if scale is not None and scale > MAX_SCALE:
        raise OptionError(f"scale={scale:g} is too large (at most {MAX_SCALE:g})")
    size = _size(values["size"]) if "size" in geometry else None
    if not geometry:
        short_side = defaults.short_side

    try:
        layer = resolve_layer(_int("layer", values["layer"]) if values.get("layer") is not None else None, depth)
    except ValueError as e:
        raise OptionError(str(e)) from e
    heads = _heads(values["heads"], num_heads) if values.get("heads") is not None else tuple(range(num_heads))
    upsample = _bool("upsample", values["upsample"]) if values.get("upsample") is not None else defaults.upsample
    return Options(
        layer=layer,
        heads=heads,
        upsample=upsample,
        short_side=short_side,
        scale=scale,
        size=size,
        precision=_choice("precision", values.get("precision"), PRECISIONS, defaults.precision),
        format=_choice("format", values.get("format"), FORMATS, defaults.format),
        dtype=_choice("dtype", values.get("dtype"), DTYPES, "float32"),
    )


def _text(name: str, value: bytes | bytearray) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
        raise OptionError(f"option {name} is not UTF-8 text") from e


def _int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise OptionError(f"{name}={value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise OptionError(f"{name}={value!r} is not an integer")


def _positive_int(name: str, value: object) -> int:
    n = _int(name, value)
    if n < 1:
        raise OptionError(f"{name}={n} must be a positive integer")
    return n


def _positive_float(name: str, value: object) -> float:
    try:
        x = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise OptionError(f"{name}={value!r} must be a positive number, e.g. 0.5")
    return x


def _size(value: object) -> Size:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = (_positive_int("size", v) for v in value)
        return h, w
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise OptionError(f"size={value!r} is not HxW, e.g. size=480x640 (height x width)")
    h, w = (_positive_int("size", int(g)) for g in match.groups())
    return h, w


def _heads(value: object, num_heads: int) -> tuple[int, ...]:
    if isinstance(value, str):
        items: list[object] = [s for s in value.split(",") if s.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    heads = sorted({_int("heads", item) for item in items})
    bad = [h for h in heads if not 0 <= h < num_heads]
    if not heads or bad:
        raise OptionError(f"heads={value!r}: give head indices in 0..{num_heads - 1}, e.g. heads=0,2")
    return tuple(heads)


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"{name}={value!r} is not a boolean (true/false)")


def _choice(name: str, value: object, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in choices:
        raise OptionError(f"{name}={value!r} is not one of {list(choices)}")
    return text
