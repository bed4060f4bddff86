"""Response encoding: compact JSON (numpy arrays encoded natively, no ``tolist``), .npy or .npz."""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from .options import CONTENT_TYPES, META_HEADER, PRECISION_HEADER

JSON_CONTENT_TYPE = CONTENT_TYPES["json"]
FLOAT16_DIGITS = 4  # float16 holds ~3.3 significant digits; JSON float16 keeps 4 relative to the maximum


@dataclass(frozen=True)
class Encoded:
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def format_from_accept(accept: str | None, default: str = "json") -> str:
    """Response format named by an HTTP Accept header (first supported media type), else ``default``."""
    by_type = {v: k for k, v in CONTENT_TYPES.items()}
    for media_range in (accept or "").split(","):
        media = media_range.split(";")[0].strip().lower()
        if media in by_type:
            return by_type[media]
    return default


def encode_json(document: Mapping[str, object]) -> bytes:
    """Compact JSON; numpy arrays (C-contiguous) are written as nested lists by orjson."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_error(message: str) -> bytes:
    """The body of every error response: ``{"error": "<message>"}``."""
    return orjson.dumps({"error": message})


def json_float16(maps: np.ndarray) -> np.ndarray:
    """float16 maps as float64 rounded to FLOAT16_DIGITS significant digits of the largest value.

    Written by orjson with the shortest repr, so JSON shrinks (e.g. ``0.000252`` for
    ``0.00025152878``); the absolute error stays below float16's own rounding at the maximum.
    """
    values = maps.astype(np.float16).astype(np.float64)
    top = float(np.abs(values).max()) if values.size else 0.0
    if top == 0.0:
        return values
    return np.round(values, FLOAT16_DIGITS - 1 - math.floor(math.log10(top)))


def encode_attention(meta: Mapping[str, object], attention: np.ndarray, fmt: str, dtype: str) -> Encoded:
    """Encode (heads, H, W) float32 maps plus metadata as ``fmt`` (json|npy|npz) with element ``dtype``.

    Every format also names the precision that ran in the ``X-Attention-Precision`` header.
    """
    meta = {**meta, "dtype": dtype}
    headers = {PRECISION_HEADER: str(meta["precision"])}
    if fmt == "json":
        values = json_float16(attention) if dtype == "float16" else attention
        return Encoded(encode_json({**meta, "attention": np.ascontiguousarray(values)}), CONTENT_TYPES["json"], headers)
    array = attention.astype(dtype, copy=False)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, array, allow_pickle=False)
        return Encoded(buf.getvalue(), CONTENT_TYPES["npy"], {**headers, META_HEADER: orjson.dumps(meta).decode()})
    if fmt == "npz":  # metadata as a 0-d unicode array: loads with allow_pickle=False
        np.savez(buf, attention=array, meta=np.array(orjson.dumps(meta).decode()))
        return Encoded(buf.getvalue(), CONTENT_TYPES["npz"], headers)
    raise ValueError(f"unknown format {fmt!r}; choose one of {list(CONTENT_TYPES)}")
