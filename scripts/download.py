"""Resumable, verified file download: temp file + HTTP Range resume + size/sha256 check + atomic rename.

Used only when fetching weights (``make weights``); nothing downloads at serving time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import requests

from vitscope.model.checkpoint import sha256_of

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


class DownloadError(RuntimeError):
    """The download failed; the message names the URL and what went wrong."""


class _Interrupted(Exception):
    """A transfer cut short; the .part file is kept for resuming."""


def partial_path(dest: Path) -> Path:
    """Where the bytes of an unfinished download of ``dest`` are kept (and resumed from)."""
    return dest.with_name(dest.name + ".part")


def _fetch_once(url: str, part: Path, timeout: float, progress: Progress | None) -> int | None:
    """Append the missing bytes of ``url`` to ``part``; return the total size if the server said it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as reply:
            if reply.status_code == 416 and offset:  # asked past the end: the .part is already complete
                return offset
            if reply.status_code not in (200, 206):
                raise DownloadError(f"{url} answered HTTP {reply.status_code} {reply.reason}")
            if reply.status_code == 200:
                offset = 0  # the server ignored the Range header: start over
            length = reply.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            done = offset
            with open(part, "ab" if offset else "wb") as f:
                for chunk in reply.iter_content(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            if total is not None and done < total:
                raise requests.exceptions.ChunkedEncodingError(f"connection closed after {done} of {total} bytes")
            return total
    except requests.ConnectionError as e:
        if part.exists() and part.stat().st_size > offset:
            raise _Interrupted(str(e)) from e
        raise DownloadError(f"cannot connect to {url}: {e}") from e
    except requests.exceptions.ChunkedEncodingError as e:
        raise _Interrupted(str(e)) from e
    except requests.Timeout as e:
        raise _Interrupted(f"timed out after {timeout:g} s") from e


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming cut transfers (also across calls) and verifying.

    On a size or checksum mismatch nothing is left behind; on an interruption that outlasts
    ``retries`` the ``.part`` file stays, and calling again resumes it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    for attempt in range(retries + 1):
        try:
            total = _fetch_once(url, part, timeout, progress)
            break
        except _Interrupted as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f"download of {url} interrupted at {have} bytes ({e}); run again to resume") from e
            logger.warning("download of %s interrupted at %d bytes (%s); resuming", url, have, e)
    size = part.stat().st_size
    for label, expected in (("size", expected_size), ("size announced by the server", total)):
        if expected is not None and size != expected:
            part.unlink()
            raise DownloadError(f"{url}: got {size} bytes, expected {expected} ({label}); the partial file was removed")
    if expected_sha256 is not None:
        actual = sha256_of(part)
        if actual != expected_sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 {actual} does not match the expected {expected_sha256}; the file was removed")
    os.replace(part, dest)
    return dest
