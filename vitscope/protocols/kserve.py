"""KServe's protocols: v1 ``/v1/models/{m}:predict`` ``{"instances": [{"data": "<base64>", ...options}]}``,
answered ``{"predictions": [...]}``; v2 (the Open Inference Protocol) ``/v2/models/{m}/infer``
``{"inputs": [{"datatype": "BYTES", "data": [...]}]}`` with options as ``parameters``, answered with
proper tensors (shape [heads, H, W], FP32/FP16), and its binary tensor extension.

``decode_document`` takes a document as parsed JSON; ``KServeV2Codec.decode_request`` takes the
tensors KServe's own server has already decoded (``kserve_engine``), without re-serialising them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, cast

import numpy as np

from ..errors import PayloadError
from ..schema import AttentionResult, ImageRequest
from ..vocab import OutputSpec
from .base import (
    BINARY_HEADER,
    Codec,
    Decoded,
    Headers,
    Reply,
    Result,
    ServerInfo,
    error_reply,
    first_error,
    image_from_base64,
    json_arrays,
    json_body,
    json_bytes,
    merged_stats,
    positive_seconds,
    precision_header,
)

V1_IMAGE_KEYS: tuple[str, ...] = ("data", "image", "b64")  # where a v1 instance may carry its base64 image
# v2 parameters that belong to the protocol (binary tensor extension, scheduling), not to our options
V2_REQUEST_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
V2_INPUT_PARAMETERS = frozenset({"binary_data_size"})
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "bool": "BOOL", "int32": "INT32"}  # numpy element type -> v2 datatype
_BASE64_BYTES = re.compile(rb"[A-Za-z0-9+/=\s]+")


def v2_datatype(output: OutputSpec, dtype: str) -> str:
    """The Open Inference Protocol datatype of an output (``dtype``: the request's float type)."""
    return V2_DATATYPES[output.element_type(dtype)]


class V2Tensor(Protocol):
    """One v2 input tensor: a JSON input (``V2Input``) or KServe's own decoded ``InferInput``."""

    @property
    def datatype(self) -> object: ...
    @property
    def data(self) -> object: ...
    @property
    def parameters(self) -> object: ...


V2_INPUT_SHAPE = 'v2 inputs must be {"name": ..., "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}'


def shared_parameters(parameters: object) -> Mapping[str, object]:
    """A v2 request's ``parameters`` (absent: none); ``PayloadError`` if they are not an object."""
    parameters = parameters or {}
    if not isinstance(parameters, Mapping):
        raise PayloadError("v2 request parameters must be an object")
    return parameters


@dataclass(frozen=True)
class V2Input:
    """A v2 input as a JSON document holds it (binary extension elements already split out)."""

    datatype: object
    data: object
    parameters: object


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


class KServeV1Codec(Codec):
    """KServe v1 ``{"instances": [...]}``: each instance ``{"data"|"image"|"b64": "<base64>", ...options}``
    or a bare base64 string."""

    def claims(self, document: Mapping[str, object]) -> bool:
        return isinstance(document.get("instances"), list)

    def decode_row(self, row: object, headers: Headers) -> Decoded:
        found = kserve_document(row, headers)
        return self.decode_document(found[0] if found else {})

    def decode_document(self, document: Mapping[str, object]) -> Decoded:
        """The image requests of a v1 document (parsed JSON)."""
        instances = document.get("instances")
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


def v2_parameter(value: object) -> object:
    """A metadata value as a v2 parameter (a scalar): lists of scalars joined by ",", other nested values as JSON."""
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        return ",".join(map(str, value))
    if isinstance(value, (list, dict)):
        return json_bytes(value).decode()
    return value


class KServeV2Codec(Codec):
    """KServe v2 / Open Inference Protocol: every element of every BYTES input is one base64 image.

    Options come from the request's ``parameters``, overridden by each input's ``parameters``.
    """

    def claims(self, document: Mapping[str, object]) -> bool:
        return isinstance(document.get("inputs"), list)

    def decode_row(self, row: object, headers: Headers) -> Decoded:
        found = kserve_document(row, headers)
        if not found or not isinstance(found[0].get("inputs"), list):
            raise PayloadError('a KServe v2 request is {"inputs": [...]}')
        return self.decode_document(*found)

    def decode_document(self, document: Mapping[str, object], binary: bytes = b"") -> Decoded:
        """The image requests of a v2 document (parsed JSON) and the bytes after it (binary extension)."""
        shared = shared_parameters(document.get("parameters"))
        inputs: list[V2Tensor] = []
        for tensor in cast(list[object], document.get("inputs")):
            if not isinstance(tensor, Mapping):
                raise PayloadError(V2_INPUT_SHAPE)
            params, data = tensor.get("parameters"), tensor.get("data")
            size = params.get("binary_data_size") if isinstance(params, Mapping) else None
            if size is not None:  # binary tensor extension: this input's elements follow the JSON part
                if not isinstance(size, int) or not 0 <= size <= len(binary):
                    raise PayloadError(f"binary_data_size={size!r} does not fit the {len(binary)} bytes after the JSON part")
                data, binary = binary_elements(binary[:size]), binary[size:]
            inputs.append(V2Input(tensor.get("datatype"), data, params))
        requested = document.get("outputs")
        outputs = [
            (str(o.get("name")), o.get("parameters")) for o in (requested if isinstance(requested, list) else []) if isinstance(o, Mapping)
        ]
        return self.decode_request(inputs, shared, outputs, document.get("id"))

    def decode_request(
        self, inputs: Sequence[V2Tensor], parameters: object, outputs: Sequence[tuple[str, object]] = (), request_id: object = None
    ) -> Decoded:
        """The image requests of a v2 request however it was decoded: its input tensors, its
        parameters, the outputs it names (name, parameters) and its id. KServe's own server hands
        its ``InferRequest``'s parts here as they are (``kserve_engine``)."""
        shared = shared_parameters(parameters)
        requests: list[ImageRequest] = []
        for tensor in inputs:
            requests += self.tensor(tensor, shared, first=len(requests))
        wanted = {name: params or {} for name, params in outputs}
        binary_outputs: frozenset[str] | bool = bool(shared.get("binary_data_output")) or frozenset(
            name for name, params in wanted.items() if isinstance(params, Mapping) and params.get("binary_data")
        )
        echo = {"id": request_id} if request_id else {}
        timeout = shared.get("timeout")  # KServe/Triton: microseconds
        timeout_s = positive_seconds(timeout, "v2 parameter timeout", "microseconds, e.g. 30000000") / 1e6 if timeout is not None else None
        return Decoded(requests, echo, binary_outputs, frozenset(wanted), timeout_s=timeout_s)

    @staticmethod
    def tensor(tensor: V2Tensor, shared: Mapping[str, object], first: int = 0) -> list[ImageRequest]:
        """The images of one BYTES input; ``first``: the index of its first image in the document."""
        if tensor.datatype != "BYTES":
            raise PayloadError(V2_INPUT_SHAPE)
        data = tensor.data
        items = data if isinstance(data, list) else [data]
        own = tensor.parameters or {}
        if not items or not isinstance(own, Mapping):
            raise PayloadError("a v2 input needs data (base64 images) and parameters as an object")
        params = {k: v for k, v in shared.items() if k not in V2_REQUEST_PARAMETERS}
        params.update({k: v for k, v in own.items() if k not in V2_INPUT_PARAMETERS})
        return [ImageRequest(element_image(item, first + i), params) for i, item in enumerate(items)]

    @staticmethod
    def outputs(suffix: str, result: AttentionResult) -> list[dict[str, object]]:
        """v2 output tensors of one image, one per array in the method's output order; the first (main)
        one carries the metadata as its parameters (v2 parameters are scalars: lists of numbers become
        "a,b", anything else nested, e.g. ``predictions``, a JSON string)."""
        params = {k: v2_parameter(v) for k, v in result.metadata().items()}
        outputs: list[dict[str, object]] = []
        for spec, array in result.sent():
            data = spec.typed(array, result.dtype)
            output: dict[str, object] = {
                "name": spec.name + suffix,
                "shape": list(data.shape),
                "datatype": v2_datatype(spec, result.dtype),
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
