"""The client's one error type (``api.ClientError``, ``vitscope_client.ClientError``), in a module of its
own so that every other module can raise it without importing the HTTP API."""

from __future__ import annotations


class ClientError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1. ``status``: the server's
    HTTP status when it answered (None: no answer: unreachable, timed out)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
