"""The plain protocol: raw image bytes (``curl -T img.jpg``), multipart (``-F data=@img.jpg -F
layer=5``) or JSON ``{"image": "<base64>", ...options}``; answers JSON, .npy or .npz
(``format``/Accept). JSON ``{"images": ["<base64>", ...], ...options}`` sends several images together
(a method may treat them together: ``pca_fit=joint``, cross-image similarity); answers
``{"images": [...]}``."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson

from ..errors import OptionError, PayloadError, RequestError
from ..schema import AttentionResult, ImageRequest
from .base import (
    BODY_FIELD,
    CONTENT_TYPES,
    META_HEADER,
    Codec,
    Decoded,
    Headers,
    Reply,
    Result,
    ServerInfo,
    error_reply,
    first_error,
    format_from_accept,
    image_from_base64,
    json_arrays,
    json_bytes,
    main_array,
    merged_stats,
    precision_header,
)

NPZ_META = "meta"  # the npz answer's metadata: a 0-d unicode array of compact JSON
IMAGE_FIELDS: tuple[str, ...] = ("data", "image", "file")  # multipart field names that carry the image
JSON_IMAGE_FIELD = "image"
JSON_IMAGES_FIELD = "images"  # several images sent together: {"images": ["<base64>", ...], ...options}


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


class PlainCodec(Codec):
    """Raw image body, multipart form, or a JSON object; one image per row."""

    def decode_row(self, row: object, headers: Headers) -> Decoded:
        if not isinstance(row, Mapping):
            raise PayloadError(f"a request row must be a mapping of fields, not a {type(row).__name__}")
        accept = format_from_accept(headers.get("accept"))
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
