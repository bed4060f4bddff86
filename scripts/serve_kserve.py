"""Serve an archived model with KServe's model server (kserve_engine) on loopback, in the background.

    python -m scripts.serve_kserve start --model-name dino_vits8 --port 8086   # waits until the model is ready
    python -m scripts.serve_kserve stop

It serves ``model_store/<name>.mar`` (what `make archive` wrote), the same archive TorchServe serves.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from scripts import KSERVE_ENGINE_PORT, REPO, background
from vitscope.model.variants import DEFAULT_MODEL

logger = logging.getLogger("serve_kserve")

PID_FILE = background.LOG_DIR / "kserve.pid"
ENTRY = ["-m", "kserve_engine"]  # the Dockerfile's entry point: the same module


def model_folder(model_store: Path, name: str, folder: Path | None = None) -> Path:
    """``folder`` (default: a fresh temporary one) holding only ``<name>.mar`` (linked), as a storage
    URI would deliver it to /mnt/models."""
    mar = model_store / f"{name}.mar"
    if not mar.is_file():
        raise FileNotFoundError(f"{mar} does not exist: run `make archive MODEL=...` first")
    folder = folder or Path(tempfile.mkdtemp(prefix="dino-kserve-store-"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / mar.name).symlink_to(mar.resolve())
    return folder


def command(model_dir: Path, name: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, *ENTRY, "--model_dir", str(model_dir), "--model_name", name, "--http_port", str(port), "--host", host]


def start(name: str, port: int, model_store: Path, timeout: float = 240.0, pid_file: Path | None = None) -> str:
    """Start the KServe model server for ``name`` (its pid file: ``pid_file``, default logs/kserve.pid);
    return its v2 inference URL once the model is ready."""
    pid_file = pid_file or PID_FILE
    base = f"http://127.0.0.1:{port}"
    folder = model_folder(model_store, name, pid_file.with_name("kserve-model"))
    background.start(command(folder, name, port), pid_file, f"{base}/v2/models/{name}/ready", timeout)
    return f"{base}/v2/models/{name}/infer"


def stop() -> bool:
    return background.stop(PID_FILE)


def ready_line(name: str, url: str) -> str:
    return (
        f"{name} is READY on KServe's model server: {url} (v1: {url.replace('/v2/models/', '/v1/models/').replace('/infer', ':predict')})"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--model-name", default=DEFAULT_MODEL)
    parser.add_argument("--port", type=int, default=KSERVE_ENGINE_PORT)
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    args = parser.parse_args(argv)
    return background.run_action(
        args.action,
        "KServe model server",
        lambda: start(args.model_name, args.port, args.model_store),
        stop,
        lambda url: ready_line(args.model_name, url),
        logger,
    )


if __name__ == "__main__":
    sys.exit(main())
