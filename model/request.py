"""Split one request payload into image bytes and raw options.

A payload is a mapping of field name -> value, the shape TorchServe (and most servers) give:
* raw body (``curl -T img.jpg`` or ``--data-binary @img.jpg``): ``{"body": b"<image bytes>"}``;
* multipart (``curl -F data=@img.jpg -F short_side=320``): ``{"data": b"...", "short_side": "320"}``;
* JSON (``{"image": "<base64>", "short_side": 320}``): ``{"body": {...}}`` once decoded, or the
  undecoded bytes/text of it.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from .errors import PayloadError

BODY_FIELD = "body"  # TorchServe's name for a non-multipart request body
IMAGE_FIELDS: tuple[str, ...] = ("data", "image", "file")  # multipart field names that carry the image
JSON_IMAGE_FIELD = "image"
_URL_PREFIXES = ("http://", "https://", "ftp://", "file://", "s3://", "gs://")


def split_payload(payload: Mapping[str, object]) -> tuple[bytes, dict[str, object]]:
    """(image bytes, raw options) of one request; ``RequestError`` if the shape is not one we accept."""
    fields = dict(payload)
    body = fields.pop(BODY_FIELD, None)
    if body is not None and not fields:
        return _split_body(body)
    images = [name for name in IMAGE_FIELDS if name in fields]
    if len(images) != 1 or body is not None:
        raise PayloadError(
            f"multipart request needs exactly one image field ({' or '.join(IMAGE_FIELDS)}), got fields {sorted(payload)}"
        )
    image = fields.pop(images[0])
    if not isinstance(image, (bytes, bytearray)):
        raise PayloadError(f"multipart field {images[0]!r} must be the image file (curl -F {images[0]}=@img.jpg)")
    return bytes(image), fields


def _split_body(body: object) -> tuple[bytes, dict[str, object]]:
    if isinstance(body, Mapping):
        return _split_json(body)
    if isinstance(body, (list, int, float, bool)):  # JSON the server decoded, but not an object
        raise PayloadError(f'JSON body must be an object {{"image": "<base64>", ...}}, not a {type(body).__name__}')
    text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else str(body)
    if text.lstrip().startswith("{"):  # JSON the server could not decode (no image format starts with '{')
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise PayloadError(f"malformed JSON body: {e}") from e
        if isinstance(document, Mapping):
            return _split_json(document)
    if isinstance(body, (bytes, bytearray)):
        return bytes(body), {}
    raise PayloadError(
        "request body is text, not an image: send the image bytes (curl -T img.jpg URL) "
        'or JSON {"image": "<base64>"} with Content-Type: application/json'
    )


def _split_json(document: Mapping[str, object]) -> tuple[bytes, dict[str, object]]:
    fields = dict(document)
    image = fields.pop(JSON_IMAGE_FIELD, None)
    if not isinstance(image, str) or not image:
        raise PayloadError('JSON request needs "image": a base64-encoded image string')
    if image.lower().startswith(_URL_PREFIXES):
        raise PayloadError('"image" must be base64 image data; URLs are not fetched by this server')
    if image.startswith("data:"):  # data URL: data:image/png;base64,....
        image = image.partition(",")[2]
    try:
        return base64.b64decode(image, validate=True), fields
    except (binascii.Error, ValueError) as e:
        raise PayloadError(f'"image" is not valid base64: {e}') from e
