"""Errors a single request can end in; each carries the HTTP status it is answered with and a
short ``reason`` (for metrics: rejected requests by reason)."""

from __future__ import annotations

from http import HTTPStatus


class RequestError(ValueError):
    """The client sent something we cannot serve: answered with ``status`` and ``{"error": str(e)}``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    reason: str = "bad_request"


class PayloadError(RequestError):
    """The request's shape: body, multipart fields, JSON document, base64."""

    reason = "payload"


class ImageError(RequestError):
    """Bytes that are not a usable image: unsupported, truncated, corrupt, smaller than a patch."""

    reason = "image"


class OptionError(RequestError):
    """An unknown, ill-typed or out-of-range option."""

    reason = "option"


class PayloadTooLarge(RequestError):
    """Over a configured limit (pixels, tokens): answered with 413 naming the limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    reason = "too_large"


class DeadlineExceeded(RequestError):
    """The request's deadline passed before its forward pass started, or would pass before it ended:
    answered with 504, and nothing computed."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    reason = "deadline"


class Overloaded(RequestError):
    """The engine's queue is full: answered at once with 503 (and ``Retry-After``), nothing queued."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "queue_full"
