"""Request options: those every method shares are declared here, each method's own in its module
(``methods/``); parsing from strings/JSON values and validation against the model.

``parse`` gives the validated ``Options`` with the ``Method`` they name: the service reads the
method from there, never from the registry by name again. The vocabulary these are written in
(``OptionSpec``, the parsers, ``Options``) is ``vocab.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from . import faithfulness
from .errors import OptionError
from .image import Size
from .methods import METHODS, Method, method_options
from .model.variants import resolve_layer
from .precision import PRECISIONS
from .vocab import (
    DEFAULT_FAITHFULNESS_BASELINE,
    DEFAULT_FAITHFULNESS_STEPS,
    DEFAULT_METHOD,
    ModelFacts,
    Options,
    OptionSpec,
    bool_option,
    choice_option,
    fraction_option,
    items_of,
    listed,
    parse_int,
    parse_positive_float,
    parse_positive_int,
    text_of,
)

FORMATS: tuple[str, ...] = ("json", "npy", "npz")  # response encodings (protocols/ says how each is sent)
RESPONSE_DTYPES: tuple[str, ...] = ("float32", "float16")  # element types of the returned maps (the dtype option)
MAX_SCALE = 100.0  # larger factors are typos; big results are caught by max_tokens anyway
GEOMETRY: tuple[str, ...] = ("short_side", "scale", "size")  # how to resize: at most one of them
DEFAULT_TOP_K = 5  # predictions a model with a head (or a request with labels) gets unless it says top_k
MAX_LABELS, MAX_LABEL_CHARS = 1000, 300  # zero-shot texts per request, characters per text
LABEL_SEPARATOR = "|"  # between the texts of ``labels`` in a form field (the client's mirror: tests/test_schema.py)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x,X\u00d7]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Defaults:
    """What a request gets for the options it leaves out; a model's settings may override them."""

    short_side: int = 480
    upsample: bool = True
    precision: str = "fp32"
    format: str = "json"


DEFAULTS = Defaults()  # the one home of the shipped defaults (ServiceConfig starts from these)


class Parsed(NamedTuple):
    """A request's validated options and the method they name (the registry's object)."""

    method: Method
    options: Options


# ----------------------------------------------------------------------------- the shared options
def _scale(value: object, _: ModelFacts) -> float:
    scale = parse_positive_float("scale", value)
    if scale > MAX_SCALE:
        raise OptionError(f"scale={scale:g} is too large (at most {MAX_SCALE:g})")
    return scale


def _size(value: object, _: ModelFacts) -> Size:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = (parse_positive_int("size", v) for v in value)
        return h, w
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise OptionError(f"size={value!r} is not HxW, e.g. size=480x640 (height x width)")
    h, w = (parse_positive_int("size", int(g)) for g in match.groups())
    return h, w


def _layer(value: object, facts: ModelFacts) -> int:
    try:
        return resolve_layer(parse_int("layer", value), facts.depth)
    except ValueError as e:
        raise OptionError(str(e)) from e


def _layers(value: object, facts: ModelFacts) -> tuple[int, ...]:
    if isinstance(value, str) and value.strip().lower() == "all":
        return tuple(range(facts.depth))
    try:
        layers = sorted({resolve_layer(parse_int("layers", item), facts.depth) for item in items_of(value)})
    except ValueError as e:
        raise OptionError(f"layers={value!r}: {e}; give block indices, e.g. layers=0,5,11, or layers=all") from e
    if not layers:
        raise OptionError(f"layers={value!r}: give block indices, e.g. layers=0,5,11, or layers=all")
    return tuple(layers)


def _heads(value: object, facts: ModelFacts) -> tuple[int, ...]:
    heads = sorted({parse_int("heads", item) for item in items_of(value)})
    bad = [h for h in heads if not 0 <= h < facts.num_heads]
    if not heads or bad:
        raise OptionError(f"heads={value!r}: give head indices in 0..{facts.num_heads - 1}, e.g. heads=0,2")
    return tuple(heads)


def _query(value: object, facts: ModelFacts) -> str:
    if value not in facts.queries:
        raise OptionError(
            f"query={str(value)[:40]!r}: {facts.name} pools by {' or '.join(facts.queries)}; query=distillation is for DeiT's "
            "distilled models (their second token)"
        )
    return str(value)


def _top_k(value: object, facts: ModelFacts) -> int:
    k = parse_int("top_k", value)
    if k < 0:
        raise OptionError(f"top_k={k}: give a number of classes >= 1 (0: no predictions)")
    return k


def _labels(value: object, facts: ModelFacts) -> tuple[str, ...]:
    if not facts.text:
        raise OptionError(
            f"labels= scores texts with a text tower (CLIP, SigLIP); {facts.name} has none"
            + (f": its predictions are its head's {facts.num_classes} classes (top_k=)" if facts.num_classes else "")
        )
    items = listed("labels", value, LABEL_SEPARATOR, "texts")
    if items is None:
        raise OptionError(f"labels: give a JSON list of texts, or texts separated by '{LABEL_SEPARATOR}' in a form field")
    labels = tuple(item.strip() if isinstance(item, str) else item for item in items)
    bad = [repr(label)[:40] for label in labels if not _is_label(label)]
    if bad or not labels or len(labels) > MAX_LABELS:
        raise OptionError(
            f"labels: give 1..{MAX_LABELS} non-empty UTF-8 texts of at most {MAX_LABEL_CHARS} characters each (got {len(labels)}"
            + (f"; bad: {', '.join(bad[:3])}" if bad else "")
            + ")"
        )
    texts = tuple(str(label) for label in labels)  # all texts (checked above)
    repeated = sorted(text for text, count in Counter(texts).items() if count > 1)
    if repeated:
        raise OptionError(f"labels: each text once (a softmax would split its share between the copies); repeated: {repeated[:3]}")
    return texts


def _is_label(label: object) -> bool:
    """A non-empty text of at most MAX_LABEL_CHARS characters that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(label, str) or not label or len(label) > MAX_LABEL_CHARS:
        return False
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# In the order of docs/api.md's table; ``method``'s choices and the methods' own options come from the registry.
REQUEST_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("layer", "integer", _layer, "block whose `[CLS]` attention is returned; `0..11`, or `-1` for the last", None, "last (`11`)"),
    OptionSpec(
        "short_side",
        "integer",
        lambda v, _: parse_positive_int("short_side", v),
        "resize keeping the aspect ratio so the shorter side is this many pixels",
        DEFAULTS.short_side,
    ),
    OptionSpec(
        "scale",
        "number",
        _scale,
        "resize by a factor instead (the seed article's `factor_reduce` as `1/factor`), e.g. `0.5`; `1` keeps the size",
    ),
    OptionSpec("size", "size", _size, "resize to exactly `HxW` (DINO's squash), e.g. `480x640`"),
    OptionSpec("heads", "heads", _heads, "subset of heads, e.g. `0,2` (a JSON list works too)", None, "all"),
    bool_option("upsample", "`false` returns the patch grid (p² times smaller); upsample it with the `patch_size`", DEFAULTS.upsample),
    choice_option(
        "precision",
        PRECISIONS,
        DEFAULTS.precision,
        "`bf16` / `fp16`: the forward pass under that autocast dtype, **where this device runs it natively**; `auto`: the "
        "fastest native precision whose maps correlate ≥ 0.999 with fp32. Anything the device would emulate runs as `auto` "
        "instead, i.e. fp32 on CPUs without bf16 instructions; the response's `precision` says what ran ([Precision](#precision))",
    ),
    choice_option(
        "format",
        FORMATS,
        DEFAULTS.format,
        "`npy` (body: the array; metadata in the `X-Attention-Meta` header) or `npz` (arrays `attention` and `meta`, a JSON "
        "string; loads with `allow_pickle=False`). `Accept: application/x-npy` / `application/x-npz` work too; the option wins",
    ),
    choice_option(
        "dtype",
        RESPONSE_DTYPES,
        "float32",
        "`float16`: half-size binary arrays; in JSON, values rounded to 4 significant digits of the largest (float16's "
        "precision), ~30% smaller",
    ),
    OptionSpec(
        "layers",
        "blocks",
        _layers,
        "several blocks in one forward pass: `all` or e.g. `0,5,11`; `attention` is then `[layers, heads, H, W]` "
        "([Methods](#methods-layers-rollout-masks))",
    ),
    OptionSpec(
        "query",
        "string",
        _query,
        "the token whose attention the maps are of: the one the model pools by (`cls`; SigLIP's `probe`), or DeiT's `distillation` token",
        None,
        "the model's",
    ),
    OptionSpec(
        "top_k",
        "integer",
        _top_k,
        "`predictions`: the top classes of the model's head, or of `labels`, with their probabilities; `0`: none",
        None,
        f"`{DEFAULT_TOP_K}` (all labels, at most that)",
    ),
    OptionSpec(
        "labels",
        "strings",
        _labels,
        "CLIP/SigLIP: texts to score the image against (zero-shot): a JSON list, or in a form field texts separated by the pipe character",
    ),
)
MAP_OPTIONS: tuple[OptionSpec, ...] = (  # what is done with the maps a method returns
    fraction_option("mask", "(0, 1]", "`t` in `(0, 1]`: DINO's threshold masks of every returned map, computed on the server"),
    bool_option("boxes", "with `mask`: each mask's largest 8-connected component as `[x0, y0, x1, y1]` in image pixels"),
    bool_option(
        "registers",
        "models with register/storage tokens (DINOv2 `*_reg`, DINOv3): also return each map's `[CLS]`→register weights "
        "([Models](#models-dino-dinov2-dinov3))",
    ),
)


def method_option() -> OptionSpec:
    """The ``method`` option, whose choices are the registry's methods."""
    return choice_option(
        "method",
        tuple(METHODS),
        DEFAULT_METHOD,
        "the way of looking: " + ", ".join(f"`{name}`" for name in METHODS) + " ([Methods](#methods-layers-rollout-masks))",
    )


def shared_options() -> tuple[OptionSpec, ...]:
    """The options every method may take (unless it refuses one, ``Method.excludes``)."""
    return (*REQUEST_OPTIONS, method_option(), *MAP_OPTIONS, *faithfulness.OPTIONS)


def all_options() -> dict[str, OptionSpec]:
    """Every option a request may give, in docs/api.md's order: the shared ones, each method's own after ``method``."""
    return {spec.name: spec for spec in (*REQUEST_OPTIONS, method_option(), *method_options(), *MAP_OPTIONS, *faithfulness.OPTIONS)}


def option_names() -> tuple[str, ...]:
    return tuple(all_options())


def owners_of(name: str) -> list[str]:
    """The methods whose own option ``name`` is (none for a shared option)."""
    return [method.name for method in METHODS.values() if any(spec.name == name for spec in method.options)]


def parse_options(raw: Mapping[str, object], facts: ModelFacts, defaults: Defaults = DEFAULTS) -> Options:
    """Validate raw option values (str, bytes, or JSON numbers/lists/bools); ``OptionError`` on any problem."""
    return parse(raw, facts, defaults).options


def parse(raw: Mapping[str, object], facts: ModelFacts, defaults: Defaults = DEFAULTS) -> Parsed:
    """``parse_options`` with the method the options name."""
    specs = all_options()
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown}; valid options: {list(specs)}")
    values = {k: text_of(k, v) if isinstance(v, (bytes, bytearray)) else v for k, v in raw.items()}
    given = [name for name in specs if values.get(name) is not None]
    geometry = [k for k in GEOMETRY if k in given]
    if len(geometry) > 1:
        raise OptionError(f"options {geometry} conflict: give only one of short_side, scale or size")
    parsed: dict[str, Any] = {name: specs[name].parse(values[name], facts) for name in given}
    method = METHODS[parsed.get("method", DEFAULT_METHOD)]
    fmt = parsed.get("format", defaults.format)
    _check_combination(given, parsed, method, fmt, facts)
    layers = parsed.get("layers")
    options = Options(
        layer=max(layers) if layers else parsed.get("layer", facts.depth - 1),
        heads=parsed.get("heads", tuple(range(facts.num_heads))),
        upsample=parsed.get("upsample", defaults.upsample),
        short_side=parsed.get("short_side", None if geometry else defaults.short_side),
        scale=parsed.get("scale"),
        size=parsed.get("size"),
        precision=parsed.get("precision", defaults.precision),
        format=fmt,
        dtype=parsed.get("dtype", "float32"),
        layers=layers,
        method=method.name,
        params=tuple((spec.name, parsed.get(spec.name, spec.default)) for spec in method.options),
        mask=parsed.get("mask"),
        boxes=parsed.get("boxes", False),
        registers=parsed.get("registers", False),
        query=parsed.get("query"),
        top_k=_checked_top_k(parsed, facts),
        labels=parsed.get("labels"),
        faithfulness=parsed.get("faithfulness", ()),
        faithfulness_steps=parsed.get("faithfulness_steps", DEFAULT_FAITHFULNESS_STEPS),
        faithfulness_baseline=parsed.get("faithfulness_baseline", DEFAULT_FAITHFULNESS_BASELINE),
    )
    method.validate(options, facts)
    return Parsed(method, options)


def _checked_top_k(parsed: Mapping[str, Any], facts: ModelFacts) -> int:
    """The predictions a request gets: ``top_k`` within the classes it can be of (the labels given, else the head's)."""
    classes = len(parsed["labels"]) if "labels" in parsed else facts.num_classes
    if "top_k" not in parsed:
        return min(DEFAULT_TOP_K, classes)
    k = int(parsed["top_k"])
    if k > classes:
        if not classes:
            raise OptionError(
                f"top_k={k}: {facts.name} has no classifier head"
                + ("; give labels= to score texts (zero-shot)" if facts.text else " and no text tower: it answers no predictions")
            )
        raise OptionError(f"top_k={k} is out of range: 0..{classes} ({'the labels given' if 'labels' in parsed else 'its head'})")
    return k


def _check_combination(given: list[str], parsed: Mapping[str, Any], method: Method, fmt: str, facts: ModelFacts) -> None:
    """Options that make no sense together: 400 naming them and why. ``given``: the options a request gave, in docs/api.md's order."""
    if "layers" in given and "layer" in given:
        raise OptionError("give layer=N (one block) or layers=all / layers=0,5,11 (several), not both")
    for name, why in method.excludes.items():
        if name in given:
            raise OptionError(why)
    for name, how in method.requires.items():
        if name not in given:
            raise OptionError(how)
    for name in given:
        owners = owners_of(name)
        if owners and method.name not in owners:
            raise OptionError(f"{name} applies to {' or '.join(f'method={owner}' for owner in owners)} only (method={method.name})")
    main, *others = method.outputs
    always = [output.name for output in others if not output.asked_by]
    if fmt == "npy" and always:
        raise OptionError(
            f"format=npy carries one array, the {main.name}; method={method.name} also returns {', '.join(always)}: ask format=npz or json"
        )
    if parsed.get("boxes") and "mask" not in parsed:
        raise OptionError("boxes=true needs mask=t: the boxes are those of the masks (e.g. mask=0.6&boxes=true)")
    if "mask" in parsed and fmt == "npy":
        raise OptionError("format=npy carries one array, the attention: ask format=npz (arrays attention, masks, boxes) or json with mask")
    if parsed.get("registers") and not facts.num_registers:
        raise OptionError("registers=true: this model has no register tokens (DINOv2 *_reg and DINOv3 models have 4)")
    if parsed.get("registers") and fmt == "npy":
        raise OptionError(
            "format=npy carries one array, the attention: ask format=npz (arrays attention, registers) or json with registers"
        )
    faithfulness.check_combination(given, fmt)
    if "faithfulness" in given and main.rgb:
        raise OptionError(f"faithfulness does not apply to method={method.name}: its {main.name} is colours, not one value per patch")
    for output in others:
        if fmt == "npy" and parsed.get(output.asked_by):
            raise OptionError(
                f"format=npy carries one array, the {main.name}: ask format=npz (arrays {main.name}, {output.name}) or json "
                f"with {output.asked_by}"
            )


def describe_options(method: Method, defaults: Defaults) -> list[dict[str, object]]:
    """The options a request with ``method`` may give, as the describe API serves them: the shared
    ones (less those the method refuses, with the model's defaults) and the method's own."""
    model_defaults = {name: getattr(defaults, name) for name in ("short_side", "upsample", "precision", "format")}
    shared = [
        replace(spec, default=model_defaults.get(spec.name, spec.default)) for spec in shared_options() if spec.name not in method.excludes
    ]
    return [spec.describe() for spec in (*shared, *method.options)]
