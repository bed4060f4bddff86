"""Response encoding: compact JSON bytes with numpy arrays encoded natively (no ``tolist``)."""
from __future__ import annotations

from collections.abc import Mapping

import orjson

JSON_CONTENT_TYPE = "application/json"


def encode_json(document: Mapping[str, object]) -> bytes:
    """Compact JSON; numpy arrays (C-contiguous) are written as nested lists by orjson."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_error(message: str) -> bytes:
    """The body of every error response: ``{"error": "<message>"}``."""
    return orjson.dumps({"error": message})
