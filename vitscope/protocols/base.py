"""What every protocol codec shares: the ``Codec`` interface, the ``Reply`` and ``Decoded`` it deals
in, the HTTP facts (content types, headers, deadlines) and the JSON helpers.

A *row* is what a model server hands over for one HTTP request: a mapping of field name -> value
(TorchServe: ``{"body": ...}`` for a raw or JSON body, one entry per multipart field).
Every error, in every protocol, is ``{"error": "<message>"}`` with the error's HTTP status
(``error_reply``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from ..errors import PayloadError, RequestError
from ..masks import encode_masks
from ..schema import AttentionResult, ImageRequest

CONTENT_TYPES: dict[str, str] = {"json": "application/json", "npy": "application/x-npy", "npz": "application/x-npz"}  # per format
META_HEADER = "X-Attention-Meta"  # .npy bodies carry the metadata (compact JSON) in this response header
PRECISION_HEADER = "X-Attention-Precision"  # every response: the precision that ran (as meta "precision")
TIMEOUT_HEADER = "x-request-timeout"  # seconds from its arrival after which a request's answer is of no use
DEADLINE_HEADER = "x-deadline"  # unix time after which a request's answer is of no use
BINARY_HEADER = "inference-header-content-length"  # v2 binary tensor extension: the JSON part's length
BODY_FIELD = "body"  # TorchServe's name for a non-multipart request body
FLOAT16_DIGITS = 4  # float16 holds ~3.3 significant digits; JSON float16 keeps 4 relative to the maximum
_URL_PREFIXES = ("http://", "https://", "ftp://", "file://", "s3://", "gs://")

Result = AttentionResult | RequestError
Headers = Mapping[str, str]  # a request's HTTP headers, names in lower case


@dataclass(frozen=True)
class Reply:
    """One answer. ``body`` is bytes, or for TorchServe's envelopes the Python object they encode."""

    status: int
    body: object
    content_type: str = CONTENT_TYPES["json"]
    headers: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)  # for metrics (success)
    reason: str = ""  # RequestError.reason (failure), for metrics


@dataclass(frozen=True)
class Decoded:
    """A row decoded by its codec: the images it asks about, and what its reply needs to know."""

    requests: list[ImageRequest]
    echo: dict[str, object] = field(default_factory=dict)  # copied into the reply, e.g. the v2 request id
    binary_outputs: frozenset[str] | bool = False  # v2: outputs to send as binary (True: all of them)
    requested_outputs: frozenset[str] = frozenset()  # v2: the outputs asked for by name (empty: all)
    listed: bool = False  # plain JSON: the images came as a list, and are answered as one
    timeout_s: float | None = None  # seconds its answer is of use: the v2 ``timeout`` parameter, else X-Request-Timeout
    deadline: float | None = None  # unix time after which its answer is of no use: the X-Deadline header

    def timed(self, headers: Headers) -> Decoded:
        """With the timeout and deadline the request's headers name (a v2 ``timeout`` parameter wins
        over X-Request-Timeout); ``PayloadError`` if one is malformed."""
        timeout = self.timeout_s
        if timeout is None and TIMEOUT_HEADER in headers:
            timeout = positive_seconds(headers[TIMEOUT_HEADER], f"header {TIMEOUT_HEADER.title()}", "seconds, e.g. 30")
        deadline = (
            positive_seconds(headers[DEADLINE_HEADER], f"header {DEADLINE_HEADER.title()}", "unix seconds")
            if DEADLINE_HEADER in headers
            else None
        )
        return replace(self, timeout_s=timeout, deadline=deadline)


@dataclass(frozen=True)
class ServerInfo:
    """What a reply may name about the model (KServe v2 does)."""

    model_name: str = ""
    model_version: str = ""


class Codec(ABC):
    """One protocol: ``decode(row, headers) -> Decoded``; ``encode(decoded, results, server) -> Reply``.

    ``claims`` says whether a JSON document is this protocol's (``route`` asks the codecs of
    ``protocols.CODECS`` in order; plain JSON is what none claims)."""

    envelope = False  # TorchServe's envelope wraps the reply (one HTTP request for all its rows)

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        """The image requests of one row, with the timing its headers name; ``PayloadError`` if its
        shape is not this protocol's."""
        headers = headers or {}
        return self.decode_row(row, headers).timed(headers)

    @abstractmethod
    def decode_row(self, row: object, headers: Headers) -> Decoded:
        """The image requests of one row (``decode`` adds the headers' timing)."""

    @abstractmethod
    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        """The reply to one row from the results of its image requests, in order."""

    def claims(self, document: Mapping[str, object]) -> bool:
        """Whether a request's JSON body is this protocol's document."""
        return False


def positive_seconds(value: object, what: str, unit: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise PayloadError(f"{what}={value!r} must be a positive number ({unit})")
    return seconds


def error_reply(error: RequestError, envelope: bool = False) -> Reply:
    """The one error encoder: ``{"error": message}`` with the error's status."""
    body: object = {"error": str(error)} if envelope else orjson.dumps({"error": str(error)})
    return Reply(int(error.status), body, reason=error.reason)


def format_from_accept(accept: str | None) -> str | None:
    """The response format an HTTP Accept header names (its first supported media type), if any."""
    by_type = {v: k for k, v in CONTENT_TYPES.items()}
    for media_range in (accept or "").split(","):
        media = media_range.split(";")[0].strip().lower()
        if media in by_type:
            return by_type[media]
    return None


# ----------------------------------------------------------------------------- payload helpers
def image_from_base64(text: object, item: int | None = None) -> bytes:
    """Decode a base64 image string (a data URL works too); ``PayloadError`` naming the ``item``
    of a several-image document."""
    prefix = "" if item is None else f"item {item}: "
    if not isinstance(text, str) or not text:
        raise PayloadError(f'{prefix}JSON request needs "image": a base64-encoded image string')
    if text.lower().startswith(_URL_PREFIXES):
        raise PayloadError(f'{prefix}"image" must be base64 image data; URLs are not fetched by this server')
    if text.startswith("data:"):  # data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PayloadError(f'{prefix}"image" is not valid base64: {e}') from e


@dataclass(frozen=True)
class ParsedRow:
    """A row whose JSON body ``route`` has parsed (once), and the bytes after it (v2 binary extension)."""

    document: Mapping[str, object]
    binary: bytes = b""


def json_body(row: object, headers: Headers) -> ParsedRow | None:
    """A row's JSON object body, parsed: JSON TorchServe already decoded, or bytes (no
    ``Content-Type: application/json``, or the binary extension, whose JSON part is
    ``Inference-Header-Content-Length`` bytes long). None for any other body, or JSON that does not parse."""
    if isinstance(row, ParsedRow):
        return row
    body = row.get(BODY_FIELD) if isinstance(row, Mapping) else None
    if isinstance(body, Mapping):
        return ParsedRow(body)
    if isinstance(body, (bytes, bytearray)) and body[:1] == b"{":
        try:
            length = int(headers.get(BINARY_HEADER, len(body)))
            document = json.loads(bytes(body[:length]))
        except (ValueError, UnicodeDecodeError):
            return None
        return ParsedRow(document, bytes(body[length:])) if isinstance(document, Mapping) else None
    return None


# ----------------------------------------------------------------------------- answer helpers
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


def json_arrays(result: AttentionResult, round_float16: bool) -> dict[str, object]:
    """The result's arrays as a JSON document holds them, in the method's output order: booleans
    bit-packed (``masks.encode_masks``), the rest as nested lists in the element type the request asked
    for; with ``round_float16`` float16 maps are written as ``json_float16`` (the plain JSON answer)."""
    fields: dict[str, object] = {}
    for spec, array in result.sent():
        if spec.json == "packbits":
            fields[spec.name] = encode_masks(array)
        elif round_float16 and spec.dtype == "float" and result.dtype == "float16":
            fields[spec.name] = np.ascontiguousarray(json_float16(array))
        else:
            fields[spec.name] = np.ascontiguousarray(spec.typed(array, result.dtype))
    return fields


def main_array(result: AttentionResult) -> np.ndarray:
    """The method's main output in the element type the request asked for (``dtype``)."""
    spec, array = result.main
    return spec.typed(array, result.dtype)


def json_bytes(document: object) -> bytes:
    """Compact JSON; numpy arrays (C-contiguous) are written as nested lists by orjson."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def precision_header(results: Sequence[AttentionResult]) -> dict[str, str]:
    """``X-Attention-Precision``: the precision(s) that ran, comma-separated if they differ."""
    return {PRECISION_HEADER: ",".join(dict.fromkeys(r.precision for r in results))} if results else {}


def first_error(results: Sequence[Result]) -> RequestError | None:
    """A document of several images fails as a whole: its first error, naming the item."""
    for i, result in enumerate(results):
        if isinstance(result, RequestError):
            return type(result)(f"item {i}: {result}")
    return None


def merged_stats(results: Sequence[AttentionResult]) -> dict[str, float]:
    """Metrics of a document of several images: summed times and tokens (forward passes may be shared)."""
    keys = dict.fromkeys(k for r in results for k in r.stats)
    return {k: float(sum(r.stats.get(k, 0.0) for r in results)) for k in keys}
