"""Serve the attention viewer (``viewer/``, static files) on loopback, in the background.

    python -m scripts.viewer start --port 8090      # prints the URL; the page talks to `make serve`'s TorchServe
    python -m scripts.viewer stop

TorchServe must allow the page's origin (``http://127.0.0.1:<port>``): config.properties sets
``cors_allowed_origin`` to the default port's.
"""

from __future__ import annotations

import argparse
import logging
import sys

from scripts import REPO, VIEWER_PORT, background

logger = logging.getLogger("viewer")

VIEWER_DIR = REPO / "viewer"
PID_FILE = background.LOG_DIR / "viewer.pid"


def url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def start(port: int) -> str:
    """Start ``python -m http.server`` for viewer/ on 127.0.0.1:port in the background; return the URL."""
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(VIEWER_DIR)]
    background.start(command, PID_FILE, url_of(port))
    return url_of(port)


def stop() -> bool:
    """Stop the viewer's server; True if one was running."""
    return background.stop(PID_FILE)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--port", type=int, default=VIEWER_PORT)
    args = parser.parse_args(argv)
    return background.run_action(
        args.action,
        "viewer",
        lambda: start(args.port),
        stop,
        lambda url: f"viewer: {url} (TorchServe must allow this origin: cors_allowed_origin in config.properties)",
        logger,
    )


if __name__ == "__main__":
    sys.exit(main())
