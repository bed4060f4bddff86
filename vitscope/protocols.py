"""Protocol codecs: one per way a request reaches us, each ``decode(row) -> ImageRequests`` and
``encode(results) -> Reply``. The service never sees a protocol; the handler picks a codec per row.

A *row* is what a model server hands over for one HTTP request: a mapping of field name -> value
(TorchServe: ``{"body": ...}`` for a raw or JSON body, one entry per multipart field).

* ``PLAIN``: raw image bytes (``curl -T img.jpg``), multipart (``-F data=@img.jpg -F layer=5``) or
  JSON ``{"image": "<base64>", ...options}``; answers JSON, .npy or .npz (``format``/Accept).
  JSON ``{"images": ["<base64>", ...], ...options}`` sends several images together (a method may
  treat them together: ``pca_fit=joint``, cross-image similarity); answers ``{"images": [...]}``.
* ``KSERVE_V1``: ``/v1/models/{m}:predict`` ``{"instances": [{"data": "<base64>", ...options}]}``;
  answers ``{"predictions": [...]}``.
* ``KSERVE_V2``: ``/v2/models/{m}/infer`` ``{"inputs": [{"datatype": "BYTES", "data": [...]}]}``
  with options as ``parameters``; answers proper tensors (shape [heads, H, W], FP32/FP16).
* ``V1_ENVELOPE`` / ``V2_ENVELOPE``: the same protocols when TorchServe's own envelope
  (``service_envelope=kserve``/``kservev2``) has already unwrapped the request into one row per
  instance/input and will wrap our Python results itself.

Every error, in every protocol, is ``{"error": "<message>"}`` with the error's HTTP status
(``error_reply``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, cast

import numpy as np
import orjson

from .errors import OptionError, PayloadError, RequestError
from .masks import encode_masks
from .options import CONTENT_TYPES, META_HEADER, PRECISION_HEADER
from .schema import AttentionResult, ImageRequest

NPZ_META = "meta"  # the npz answer's metadata: a 0-d unicode array of compact JSON
BODY_FIELD = "body"  # TorchServe's name for a non-multipart request body
IMAGE_FIELDS: tuple[str, ...] = ("data", "image", "file")  # multipart field names that carry the image
TIMEOUT_HEADER = "x-request-timeout"  # seconds from its arrival after which a request's answer is of no use
DEADLINE_HEADER = "x-deadline"  # unix time after which a request's answer is of no use
JSON_IMAGE_FIELD = "image"
JSON_IMAGES_FIELD = "images"  # several images sent together: {"images": ["<base64>", ...], ...options}
V1_IMAGE_KEYS: tuple[str, ...] = ("data", "image", "b64")  # where a v1 instance may carry its base64 image
FLOAT16_DIGITS = 4  # float16 holds ~3.3 significant digits; JSON float16 keeps 4 relative to the maximum
_BASE64_BYTES = re.compile(rb"[A-Za-z0-9+/=\s]+")
_URL_PREFIXES = ("http://", "https://", "ftp://", "file://", "s3://", "gs://")

Result = AttentionResult | RequestError
Headers = Mapping[str, str]  # a request's HTTP headers, names in lower case
BINARY_HEADER = "inference-header-content-length"  # v2 binary tensor extension: the JSON part's length
# v2 parameters that belong to the protocol (binary tensor extension, scheduling), not to our options
V2_REQUEST_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
V2_INPUT_PARAMETERS = frozenset({"binary_data_size"})


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
    timeout_s: float | None = None  # v2: the request's ``timeout`` parameter (microseconds there), in seconds

    def with_deadline(self, deadline: float | None) -> Decoded:
        """These requests with their deadline (unix time) set."""
        return replace(self, requests=[replace(r, deadline=deadline) for r in self.requests])


@dataclass(frozen=True)
class ServerInfo:
    """What a reply may name about the model (KServe v2 does)."""

    model_name: str = ""
    model_version: str = ""


def timing(decoded: Decoded, headers: Headers) -> tuple[float | None, float | None]:
    """(timeout in seconds, absolute deadline) a request names: the v2 ``timeout`` parameter or the
    X-Request-Timeout header; the X-Deadline header (unix seconds). ``PayloadError`` if malformed."""
    timeout = decoded.timeout_s
    if timeout is None and TIMEOUT_HEADER in headers:
        timeout = positive_seconds(headers[TIMEOUT_HEADER], f"header {TIMEOUT_HEADER.title()}", "seconds, e.g. 30")
    deadline = (
        positive_seconds(headers[DEADLINE_HEADER], f"header {DEADLINE_HEADER.title()}", "unix seconds")
        if DEADLINE_HEADER in headers
        else None
    )
    return timeout, deadline


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


def kserve_document(row: object, headers: Headers) -> tuple[Mapping[str, object], bytes] | None:
    """A row's KServe v1/v2 document and the bytes after it (v2 binary tensor extension), or None."""
    parsed = json_body(row, headers)
    if parsed and (isinstance(parsed.document.get("instances"), list) or isinstance(parsed.document.get("inputs"), list)):
        return parsed.document, parsed.binary
    return None


def binary_elements(data: bytes) -> list[bytes]:
    """The elements of a BYTES tensor in the binary extension: each a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "little")
        if offset + 4 + size > len(data):
            raise PayloadError("binary BYTES tensor is truncated: an element is longer than the data left")
        elements.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return elements


def element_image(element: object, item: int) -> bytes:
    """A v2 BYTES element as image bytes: base64 text (JSON, or binary elements made only of base64
    characters) is decoded; other binary elements are the image file itself (no format begins in base64)."""
    if isinstance(element, bytes):
        if element and _BASE64_BYTES.fullmatch(element):
            return image_from_base64(element.decode("ascii"), item)
        return element
    return image_from_base64(element, item)


def json_requests(document: Mapping[str, object], accept: str | None = None) -> Decoded:
    """``{"image": "<base64>", ...options}`` as an image request, or ``{"images": [...], ...options}``
    as several sent together (the options shared; answered ``{"images": [...]}``)."""
    options = dict(document)
    if JSON_IMAGES_FIELD not in options:
        return Decoded([ImageRequest(image_from_base64(options.pop(JSON_IMAGE_FIELD, None)), options, accept)])
    images = options.pop(JSON_IMAGES_FIELD)
    if JSON_IMAGE_FIELD in options:
        raise PayloadError('give "image" (one base64 image) or "images" (a list of them), not both')
    if not isinstance(images, list) or not images:
        raise PayloadError('"images" must be a non-empty list of base64 images')
    return Decoded([ImageRequest(image_from_base64(text, i), options, accept) for i, text in enumerate(images)], listed=True)


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


# ----------------------------------------------------------------------------- codecs
class Codec(ABC):
    """decode(row) -> Decoded; encode(decoded, results) -> Reply. Subclasses are the protocols."""

    envelope = False  # TorchServe's envelope wraps the reply (one HTTP request for all its rows)

    @abstractmethod
    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        """The image requests of one row; ``PayloadError`` if its shape is not this protocol's."""

    @abstractmethod
    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        """The reply to one row from the results of its image requests, in order."""


class PlainCodec(Codec):
    """Raw image body, multipart form, or a JSON object; one image per row."""

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        if not isinstance(row, Mapping):
            raise PayloadError(f"a request row must be a mapping of fields, not a {type(row).__name__}")
        accept = (headers or {}).get("accept")
        fields = dict(row)
        body = fields.pop(BODY_FIELD, None)
        if body is not None and not fields:
            return self._body(body, accept)
        images = [name for name in IMAGE_FIELDS if name in fields]
        if len(images) != 1 or body is not None:
            raise PayloadError(f"multipart request needs exactly one image field ({' or '.join(IMAGE_FIELDS)}), got fields {sorted(row)}")
        image = fields.pop(images[0])
        if not isinstance(image, (bytes, bytearray)):
            raise PayloadError(f"multipart field {images[0]!r} must be the image file (curl -F {images[0]}=@img.jpg)")
        return Decoded([ImageRequest(bytes(image), fields, accept)])

    @staticmethod
    def _body(body: object, accept: str | None) -> Decoded:
        if isinstance(body, Mapping):
            return json_requests(body, accept)
        if isinstance(body, (list, int, float, bool)):  # JSON the server decoded, but not an object
            raise PayloadError(f'JSON body must be an object {{"image": "<base64>", ...}}, not a {type(body).__name__}')
        text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else str(body)
        if text.lstrip().startswith("{"):  # JSON the server could not decode (no image format starts with '{')
            try:
                document = json.loads(text)
            except json.JSONDecodeError as e:
                raise PayloadError(f"malformed JSON body: {e}") from e
            if isinstance(document, Mapping):
                return json_requests(document, accept)
        if isinstance(body, (bytes, bytearray)):
            return Decoded([ImageRequest(bytes(body), {}, accept)])
        raise PayloadError(
            "request body is text, not an image: send the image bytes (curl -T img.jpg URL) "
            'or JSON {"image": "<base64>"} with Content-Type: application/json'
        )

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        if decoded.listed:
            return self.encode_list(results)
        (result,) = results
        if isinstance(result, RequestError):
            return error_reply(result)
        body, content_type, headers = encode_attention(result)
        return Reply(int(HTTPStatus.OK), body, content_type, {**precision_header([result]), **headers}, result.stats)

    @staticmethod
    def encode_list(results: Sequence[Result]) -> Reply:
        """``{"images": [...]}``: one JSON document per image, in order (the request fails as a whole)."""
        error = first_error(results)
        if error is None and any(isinstance(r, AttentionResult) and r.format != "json" for r in results):
            error = OptionError(
                f'a JSON "{JSON_IMAGES_FIELD}" list is answered in JSON: leave format out, or send the images as KServe v2 '
                "BYTES elements with binary_data_output=true for binary arrays"
            )
        if error is not None:
            return error_reply(error)
        good = [r for r in results if isinstance(r, AttentionResult)]
        body = json_bytes({JSON_IMAGES_FIELD: [json_document(r) for r in good]})
        return Reply(int(HTTPStatus.OK), body, headers=precision_header(good), stats=merged_stats(good))


def json_document(result: AttentionResult) -> dict[str, object]:
    """One result as the plain JSON answer holds it: the metadata, then the arrays."""
    return {**result.metadata(), **json_arrays(result, round_float16=True)}


def encode_attention(result: AttentionResult) -> tuple[bytes, str, dict[str, str]]:
    """(body, content type, extra headers) of one result in its ``format`` (json|npy|npz) and ``dtype``."""
    meta = result.metadata()
    if result.format == "json":
        return json_bytes(json_document(result)), CONTENT_TYPES["json"], {}
    buf = io.BytesIO()
    if result.format == "npy":
        np.save(buf, main_array(result), allow_pickle=False)
        return buf.getvalue(), CONTENT_TYPES["npy"], {META_HEADER: orjson.dumps(meta).decode()}
    if result.format == "npz":  # metadata as a 0-d unicode array: loads with allow_pickle=False
        (main, _), *others = result.sent()
        arrays: dict[str, Any] = {main.name: main_array(result), NPZ_META: np.array(orjson.dumps(meta).decode())}
        arrays.update({spec.name: spec.typed(array, result.dtype) for spec, array in others})
        np.savez(buf, **arrays)
        return buf.getvalue(), CONTENT_TYPES["npz"], {}
    raise ValueError(f"unknown format {result.format!r}; choose one of {list(CONTENT_TYPES)}")


class KServeV1Codec(Codec):
    """KServe v1 ``{"instances": [...]}``: each instance ``{"data"|"image"|"b64": "<base64>", ...options}``
    or a bare base64 string."""

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        found = kserve_document(row, headers or {})
        instances = found[0].get("instances") if found else None
        if not isinstance(instances, list):
            raise PayloadError('a KServe v1 request is {"instances": [...]}')
        return Decoded([self.instance(item, i) for i, item in enumerate(instances)])

    @staticmethod
    def instance(instance: object, index: int) -> ImageRequest:
        if isinstance(instance, str):
            return ImageRequest(image_from_base64(instance, index), {})
        if not isinstance(instance, Mapping):
            raise PayloadError(f'a v1 instance must be {{"data": "<base64 image>", ...}}, not a {type(instance).__name__}')
        options = dict(instance)
        keys = [k for k in V1_IMAGE_KEYS if k in options]
        if len(keys) != 1:
            raise PayloadError(f"a v1 instance needs exactly one of {list(V1_IMAGE_KEYS)} with the base64 image")
        image = options.pop(keys[0])
        if isinstance(image, Mapping) and "b64" in image:  # TF-serving style {"b64": "..."}
            image = image["b64"]
        return ImageRequest(image_from_base64(image, index), options)

    @staticmethod
    def prediction(result: AttentionResult) -> dict[str, object]:
        return {**result.metadata(), **json_arrays(result, round_float16=False)}

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        error = first_error(results)
        if error is not None:
            return error_reply(error)
        good = [r for r in results if isinstance(r, AttentionResult)]
        body = json_bytes({"predictions": [self.prediction(r) for r in good]})
        return Reply(int(HTTPStatus.OK), body, headers=precision_header(good), stats=merged_stats(good))


class KServeV2Codec(Codec):
    """KServe v2 / Open Inference Protocol: every element of every BYTES input is one base64 image.

    Options come from the request's ``parameters``, overridden by each input's ``parameters``.
    """

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        found = kserve_document(row, headers or {})
        if not found or not isinstance(found[0].get("inputs"), list):
            raise PayloadError('a KServe v2 request is {"inputs": [...]}')
        document, binary = found
        shared = document.get("parameters") or {}
        if not isinstance(shared, Mapping):
            raise PayloadError("v2 request parameters must be an object")
        requests: list[ImageRequest] = []
        inputs = cast(list[object], document["inputs"])
        for tensor in inputs:
            params = tensor.get("parameters") if isinstance(tensor, Mapping) else None
            size = params.get("binary_data_size") if isinstance(params, Mapping) else None
            if size is not None:  # binary tensor extension: this input's elements follow the JSON part
                if not isinstance(size, int) or not 0 <= size <= len(binary):
                    raise PayloadError(f"binary_data_size={size!r} does not fit the {len(binary)} bytes after the JSON part")
                tensor, binary = {**cast(Mapping[str, object], tensor), "data": binary_elements(binary[:size])}, binary[size:]
            requests += self.tensor(tensor, shared, first=len(requests))
        requested = document.get("outputs")
        outputs: list[object] = list(requested) if isinstance(requested, list) else []
        wanted = {str(o.get("name")): o.get("parameters") or {} for o in outputs if isinstance(o, Mapping)}
        binary_outputs: frozenset[str] | bool = bool(shared.get("binary_data_output")) or frozenset(
            name for name, params in wanted.items() if isinstance(params, Mapping) and params.get("binary_data")
        )
        echo = {"id": document["id"]} if document.get("id") else {}
        timeout = shared.get("timeout")  # KServe/Triton: microseconds
        timeout_s = positive_seconds(timeout, "v2 parameter timeout", "microseconds, e.g. 30000000") / 1e6 if timeout is not None else None
        return Decoded(requests, echo, binary_outputs, frozenset(wanted), timeout_s=timeout_s)

    @staticmethod
    def tensor(tensor: object, shared: Mapping[str, object], first: int = 0) -> list[ImageRequest]:
        """The images of one BYTES input; ``first``: the index of its first image in the document."""
        if not isinstance(tensor, Mapping) or tensor.get("datatype") != "BYTES":
            raise PayloadError('v2 inputs must be {"name": ..., "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}')
        data = tensor.get("data")
        items = data if isinstance(data, list) else [data]
        own = tensor.get("parameters") or {}
        if not items or not isinstance(own, Mapping):
            raise PayloadError("a v2 input needs data (base64 images) and parameters as an object")
        params = {k: v for k, v in shared.items() if k not in V2_REQUEST_PARAMETERS}
        params.update({k: v for k, v in own.items() if k not in V2_INPUT_PARAMETERS})
        return [ImageRequest(element_image(item, first + i), params) for i, item in enumerate(items)]

    @staticmethod
    def outputs(suffix: str, result: AttentionResult) -> list[dict[str, object]]:
        """v2 output tensors of one image, one per array in the method's output order; the first (main)
        one carries the metadata as its parameters (v2 parameters are scalars: lists become "a,b")."""
        params = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in result.metadata().items()}
        outputs: list[dict[str, object]] = []
        for spec, array in result.sent():
            data = spec.typed(array, result.dtype)
            output: dict[str, object] = {
                "name": spec.name + suffix,
                "shape": list(data.shape),
                "datatype": spec.v2_datatype(result.dtype),
                "data": data.ravel(),
            }
            outputs.append({**output, "parameters": params} if not outputs else output)
        return outputs

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        error = first_error(results)
        if error is not None:
            return error_reply(error)
        good = [r for r in results if isinstance(r, AttentionResult)]
        suffixes = [""] if len(good) == 1 else [f"_{i}" for i in range(len(good))]  # attention, or attention_0, attention_1, ...
        outputs = [output for suffix, r in zip(suffixes, good, strict=True) for output in self.outputs(suffix, r)]
        if decoded.requested_outputs:
            outputs = [o for o in outputs if o["name"] in decoded.requested_outputs]
        binary = [o for o in outputs if decoded.binary_outputs is True or (decoded.binary_outputs and o["name"] in decoded.binary_outputs)]
        raw = []
        for output in binary:  # binary tensor extension: the data leaves the JSON for the bytes after it
            data = np.ascontiguousarray(output.pop("data")).tobytes()
            output["parameters"] = {**cast(dict[str, object], output.get("parameters", {})), "binary_data_size": len(data)}
            raw.append(data)
        body = json_bytes({"model_name": server.model_name, "model_version": server.model_version, "outputs": outputs, **decoded.echo})
        headers = precision_header(good)
        if binary:
            headers[BINARY_HEADER.title()] = str(len(body))
            return Reply(int(HTTPStatus.OK), body + b"".join(raw), "application/octet-stream", headers, merged_stats(good))
        return Reply(int(HTTPStatus.OK), body, headers=headers, stats=merged_stats(good))


class V1EnvelopeCodec(KServeV1Codec):
    """Under TorchServe's ``kserve`` envelope: a row is one v1 instance; the reply its prediction object."""

    envelope = True

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        return Decoded([self.instance(row, 0)])

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        (result,) = results
        if isinstance(result, RequestError):
            return error_reply(result, envelope=True)
        prediction = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.prediction(result).items()}
        return Reply(int(HTTPStatus.OK), prediction, headers=precision_header([result]), stats=result.stats)


class V2EnvelopeCodec(KServeV2Codec):
    """Under TorchServe's ``kservev2`` envelope: a row is one v2 input whose ``data`` is one base64
    image; the reply the attention array (the envelope flattens it and drops all metadata, so the
    ``X-Attention-Precision`` header is where the precision that ran is named)."""

    envelope = True

    def decode(self, row: object, headers: Headers | None = None) -> Decoded:
        if not isinstance(row, Mapping):
            raise PayloadError("a v2 input must be an object")
        return Decoded(self.tensor({**row, "data": [row.get("data")]}, {}))

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        (result,) = results
        if isinstance(result, RequestError):
            return error_reply(result, envelope=True)
        return Reply(int(HTTPStatus.OK), main_array(result), headers=precision_header([result]), stats=result.stats)


PLAIN, KSERVE_V1, KSERVE_V2 = PlainCodec(), KServeV1Codec(), KServeV2Codec()
V1_ENVELOPE, V2_ENVELOPE = V1EnvelopeCodec(), V2EnvelopeCodec()


def route(row: object, headers: Headers | None = None) -> tuple[Codec, object]:
    """The codec of one row, from its shape (and the binary extension's header) alone (pure), and the
    row as that codec is to take it: a JSON body parsed here is handed on parsed, never parsed twice.

    Rows TorchServe builds from an HTTP request always carry a ``body`` or a file (bytes) field;
    a body that is a KServe document (decoded or not) picks that protocol. Rows without either were
    unwrapped by TorchServe's envelopes: v2 inputs carry a ``datatype``, v1 instances do not.
    """
    if isinstance(row, Mapping) and (BODY_FIELD in row or any(isinstance(v, (bytes, bytearray)) for v in row.values())):
        parsed = json_body(row, headers or {})
        if parsed is None:
            return PLAIN, row
        if isinstance(parsed.document.get("instances"), list):
            return KSERVE_V1, parsed
        if isinstance(parsed.document.get("inputs"), list):
            return KSERVE_V2, parsed
        # a plain JSON request: handed on parsed when the body is all there is (anything else, extra
        # fields or bytes after the JSON, is left as it came for the plain codec to reject)
        return PLAIN, {BODY_FIELD: parsed.document} if len(row) == 1 and not parsed.binary else row
    if isinstance(row, Mapping) and "datatype" in row:
        return V2_ENVELOPE, row
    return V1_ENVELOPE, row


def merged_stats(results: Sequence[AttentionResult]) -> dict[str, float]:
    """Metrics of a document of several images: summed times and tokens (forward passes may be shared)."""
    keys = dict.fromkeys(k for r in results for k in r.stats)
    return {k: float(sum(r.stats.get(k, 0.0) for r in results)) for k in keys}
