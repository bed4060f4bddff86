"""Start TorchServe in the background with this repo's config and wait until the model is READY.

python -m scripts.serve start --model-name dino_vits8
python -m scripts.serve stop
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts import REPO
from vitscope.model.variants import DEFAULT_MODEL

logger = logging.getLogger("serve")

KEY_FILE = "key_file.json"  # written by TorchServe into its working directory when token auth is on
FAILURE_MARKERS = ("Load model failed", "Backend worker process died", "Failed to load model")


class ServeError(RuntimeError):
    """TorchServe did not come up with the model READY."""


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java .properties file (comments and blanks skipped)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def torchserve_command(config: Path, model_store: Path, model_name: str, foreground: bool = False) -> list[str]:
    cmd = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--ncs",
        "--ts-config",
        str(config),
        "--model-store",
        str(model_store),
        "--models",
        f"{model_name}={model_name}.mar",
    ]
    return [*cmd, "--foreground"] if foreground else cmd


def log_tail(log_dir: Path, lines: int = 40) -> str:
    log = log_dir / "model_log.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no model_log.log)"


def api_key(key_file: Path, api: str) -> str | None:
    """The ``api`` ("inference" or "management") token from TorchServe's key_file.json, if it exists."""
    try:
        return json.loads(key_file.read_text())[api]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def auth_header(key_file: Path, api: str) -> dict[str, str]:
    key = api_key(key_file, api)
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_until_settled(log: Path, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
    """Wait until ``log`` has not grown for ``quiet_s`` (at most ``limit_s``)."""
    deadline, size, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = log.stat().st_size if log.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def wait_ready(
    management_url: str,
    model_name: str,
    log_dir: Path,
    timeout: float = 180.0,
    process: subprocess.Popen | None = None,
    key_file: Path | None = None,
) -> None:
    """Poll the management API until a worker of ``model_name`` is READY; ``ServeError`` on failure.

    With token auth on, the management key is read from ``key_file`` (TorchServe writes it at start).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServeError(f"TorchServe exited with code {process.returncode}\n{log_tail(log_dir)}")
        ts_log = log_dir / "ts_log.log"
        if ts_log.exists() and any(m in ts_log.read_text(errors="replace") for m in FAILURE_MARKERS):
            wait_until_settled(log_dir / "model_log.log")  # the worker's traceback arrives line by line
            raise ServeError(f"model {model_name} failed to load; model_log.log says:\n{log_tail(log_dir)}")
        try:
            headers = auth_header(key_file, "management") if key_file else {}
            reply = requests.get(f"{management_url}/models/{model_name}", timeout=2, headers=headers)
            if reply.ok and any(w.get("status") == "READY" for w in reply.json()[0].get("workers", [])):
                return
        except (requests.ConnectionError, requests.Timeout, ValueError, IndexError):
            pass
        time.sleep(0.5)
    raise ServeError(f"model {model_name} not READY after {timeout:.0f} s\n{log_tail(log_dir)}")


def stop(quiet: bool = False) -> None:
    """Stop the TorchServe started from this machine's pid file, waiting until it has exited."""
    output = subprocess.DEVNULL if quiet else None
    subprocess.run([str(Path(sys.executable).with_name("torchserve")), "--stop", "--foreground"], check=False, stdout=output)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "key"), help="key: print the inference key of key_file.json")
    parser.add_argument("--model-name", default=DEFAULT_MODEL, help="archive in the model store, without .mar")
    parser.add_argument("--config", type=Path, default=REPO / "config.properties")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--log-dir", type=Path, default=REPO / "logs")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for READY")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    if args.action == "stop":
        stop()
        return 0
    if args.action == "key":
        key = api_key(REPO / KEY_FILE, "inference")
        print(key or "")
        return 0 if key else 1
    if not (args.model_store / f"{args.model_name}.mar").exists():
        logger.error("%s/%s.mar not found: run `make archive` first", args.model_store, args.model_name)
        return 2
    props = read_properties(args.config)
    stop(quiet=True)  # `make serve` restarts: a running TorchServe would hold the ports and the old archive
    args.log_dir.mkdir(parents=True, exist_ok=True)
    for old in args.log_dir.glob("*.log"):
        old.unlink()  # failure detection reads these logs
    env = {**os.environ, "LOG_LOCATION": str(args.log_dir), "METRICS_LOCATION": str(args.log_dir)}
    with open(args.log_dir / "torchserve.out", "w") as out:  # TorchServe's console chatter
        started = subprocess.run(
            torchserve_command(args.config, args.model_store, args.model_name), env=env, cwd=REPO, stdout=out, stderr=out
        )
    if started.returncode:
        return started.returncode
    try:
        wait_ready(props["management_address"], args.model_name, args.log_dir, args.timeout, key_file=REPO / KEY_FILE)
    except ServeError as e:
        logger.error("%s", e)
        stop()
        return 1
    logger.info("%s is READY: %s/predictions/%s", args.model_name, props["inference_address"], args.model_name)
    if api_key(REPO / KEY_FILE, "inference"):
        logger.info("token auth is ON: send `Authorization: Bearer <inference key>` from %s", REPO / KEY_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
