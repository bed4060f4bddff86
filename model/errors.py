"""Errors a single request can end in; each carries the HTTP status it should be answered with."""
from __future__ import annotations

from http import HTTPStatus


class RequestError(ValueError):
    """The client sent something we cannot serve: answered with ``status`` and ``{"error": str(e)}``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST


class PayloadTooLarge(RequestError):
    """Over a configured limit (pixels, tokens): answered with 413 naming the limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
