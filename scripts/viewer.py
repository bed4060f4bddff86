"""Serve the attention viewer (``viewer/``, static files) on loopback, in the background.

    python -m scripts.viewer start --port 8090      # prints the URL; the page talks to `make serve`'s TorchServe
    python -m scripts.viewer stop

TorchServe must allow the page's origin (``http://127.0.0.1:<port>``): config.properties sets
``cors_allowed_origin`` to the default port's.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from scripts import REPO

logger = logging.getLogger("viewer")

VIEWER_DIR = REPO / "viewer"
PID_FILE = REPO / "logs" / "viewer.pid"
DEFAULT_PORT = 8090


def url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Return once ``url`` answers; ``RuntimeError`` if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the viewer's server exited (code {process.returncode}): is the port taken? see logs/viewer.log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s; see logs/viewer.log")


def start(port: int) -> str:
    """Start ``python -m http.server`` for viewer/ on 127.0.0.1:port in its own session; return the URL."""
    stop()
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PID_FILE.parent / "viewer.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(VIEWER_DIR)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PID_FILE.write_text(str(process.pid))
    try:
        wait_until_up(url_of(port), process)
    except RuntimeError:
        stop()
        raise
    return url_of(port)


def stop() -> bool:
    """Stop the viewer's server if the pid file names one; True if one was stopped."""
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        return False
    PID_FILE.unlink(missing_ok=True)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    if args.action == "stop":
        logger.info("viewer stopped" if stop() else "no viewer running")
        return 0
    try:
        url = start(args.port)
    except RuntimeError as e:
        logger.error("%s", e)
        return 1
    logger.info("viewer: %s (TorchServe must allow this origin: cors_allowed_origin in config.properties)", url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
