"""Request options: parsing from strings/JSON values and validation against the model."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import OptionError
from .image import Size
from .model.rollout import HEAD_FUSIONS
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
    "layers",
    "method",
    "head_fusion",
    "discard_ratio",
    "mask",
    "boxes",
    "registers",
)
METHODS: tuple[str, ...] = ("attention", "rollout")  # [CLS] attention of a block, or attention rollout up to it
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
class MapSpec:
    """What maps one forward pass computes; requests with equal specs (and sizes) share it."""

    layers: tuple[int, ...]  # blocks, 0..depth-1; rollout: one, the top of the product
    method: str = "attention"
    head_fusion: str = "mean"  # rollout only
    discard_ratio: float = 0.0  # rollout only


@dataclass(frozen=True)
class Options:
    """Validated options of one request. Exactly one of short_side/scale/size is set."""

    layer: int  # 0..depth-1 (with ``layers``: the deepest of them)
    heads: tuple[int, ...]  # head indices to return, ascending
    upsample: bool
    short_side: int | None = None
    scale: float | None = None
    size: Size | None = None
    precision: str = "fp32"
    format: str = "json"
    dtype: str = "float32"
    layers: tuple[int, ...] | None = None  # several blocks in one pass: maps (layers, heads, H, W)
    method: str = "attention"
    head_fusion: str | None = None  # rollout: mean (default), max or min
    discard_ratio: float | None = None  # rollout: in [0, 1), default 0
    mask: float | None = None  # DINO's threshold masks keeping this fraction of each map's mass
    boxes: bool = False  # with mask: each mask's largest 8-connected component as [x0, y0, x1, y1]
    registers: bool = False  # also the maps' entries for the register/storage tokens (DINOv2 _reg, DINOv3)

    @property
    def spec(self) -> MapSpec:
        if self.method == "rollout":
            return MapSpec((self.layer,), "rollout", self.head_fusion or "mean", self.discard_ratio or 0.0)
        return MapSpec(self.layers or (self.layer,))


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


def parse_options(raw: Mapping[str, object], *, depth: int, num_heads: int, defaults: Defaults, num_registers: int = 0) -> Options:
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
    method = _choice("method", values.get("method"), METHODS, "attention")
    fmt = _choice("format", values.get("format"), FORMATS, defaults.format)
    layers = _layers(values["layers"], depth) if values.get("layers") is not None else None
    head_fusion = _choice("head_fusion", values["head_fusion"], HEAD_FUSIONS, "mean") if values.get("head_fusion") is not None else None
    discard_ratio = (
        _fraction("discard_ratio", values["discard_ratio"], "[0, 1)", lambda x: 0 <= x < 1)
        if values.get("discard_ratio") is not None
        else None
    )
    mask = _fraction("mask", values["mask"], "(0, 1]", lambda x: 0 < x <= 1) if values.get("mask") is not None else None
    boxes = _bool("boxes", values["boxes"]) if values.get("boxes") is not None else False
    registers = _bool("registers", values["registers"]) if values.get("registers") is not None else False
    _check_combination(values, method=method, layers=layers, mask=mask, boxes=boxes, fmt=fmt)
    if registers and not num_registers:
        raise OptionError("registers=true: this model has no register tokens (DINOv2 *_reg and DINOv3 models have 4)")
    if registers and fmt == "npy":
        raise OptionError(
            "format=npy carries one array, the attention: ask format=npz (arrays attention, registers) or json with registers"
        )
    return Options(
        layer=max(layers) if layers else layer,
        heads=tuple(range(num_heads)) if method == "rollout" else heads,
        upsample=upsample,
        short_side=short_side,
        scale=scale,
        size=size,
        precision=_choice("precision", values.get("precision"), PRECISIONS, defaults.precision),
        format=fmt,
        dtype=_choice("dtype", values.get("dtype"), DTYPES, "float32"),
        layers=layers,
        method=method,
        head_fusion=head_fusion or ("mean" if method == "rollout" else None),
        discard_ratio=discard_ratio if discard_ratio is not None else (0.0 if method == "rollout" else None),
        mask=mask,
        boxes=boxes,
        registers=registers,
    )


def _check_combination(values: Mapping[str, object], *, method: str, layers: object, mask: object, boxes: bool, fmt: str) -> None:
    """Options that make no sense together: 400 naming them and why."""
    given = {k for k, v in values.items() if v is not None}
    if "layers" in given and "layer" in given:
        raise OptionError("give layer=N (one block) or layers=all / layers=0,5,11 (several), not both")
    if method == "rollout":
        if "heads" in given:
            raise OptionError("heads does not apply to method=rollout: rollout fuses all heads (choose how with head_fusion)")
        if layers is not None:
            raise OptionError("method=rollout returns one map, the rollout through blocks 0..layer: give layer=N, not layers")
    else:
        for name in ("head_fusion", "discard_ratio"):
            if name in given:
                raise OptionError(f"{name} applies to method=rollout only (method={method})")
    if boxes and mask is None:
        raise OptionError("boxes=true needs mask=t: the boxes are those of the masks (e.g. mask=0.6&boxes=true)")
    if mask is not None and fmt == "npy":
        raise OptionError("format=npy carries one array, the attention: ask format=npz (arrays attention, masks, boxes) or json with mask")


def _layers(value: object, depth: int) -> tuple[int, ...]:
    if isinstance(value, str) and value.strip().lower() == "all":
        return tuple(range(depth))
    try:
        layers = sorted({resolve_layer(_int("layers", item), depth) for item in _items(value)})
    except ValueError as e:
        raise OptionError(f"layers={value!r}: {e}; give block indices, e.g. layers=0,5,11, or layers=all") from e
    if not layers:
        raise OptionError(f"layers={value!r}: give block indices, e.g. layers=0,5,11, or layers=all")
    return tuple(layers)


def _fraction(name: str, value: object, interval: str, ok: Callable[[float], bool]) -> float:
    try:
        x = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and ok(x)):
        raise OptionError(f"{name}={value!r} must be a number in {interval}")
    return x


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


def _items(value: object) -> list[object]:
    """The elements of a list option: "0,2" (text) or [0, 2] (JSON)."""
    if isinstance(value, str):
        return [s for s in value.split(",") if s.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _heads(value: object, num_heads: int) -> tuple[int, ...]:
    heads = sorted({_int("heads", item) for item in _items(value)})
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
