"""A private TorchServe for tests and benchmarks: free loopback ports, its own temp dir, always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO
from scripts.serve import KEY_FILE, read_properties, torchserve_command, wait_ready


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_private_config(source: Path, path: Path, model_store: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``source`` config.properties moved to free loopback ports and ``model_store``; returns its properties."""
    props = read_properties(source)
    if "metrics_config" in props:  # relative to the config's folder; the private server runs elsewhere
        props["metrics_config"] = str((source.parent / props["metrics_config"]).resolve())
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    props.update(
        inference_address=f"http://127.0.0.1:{inference}",
        management_address=f"http://127.0.0.1:{management}",
        metrics_address=f"http://127.0.0.1:{metrics}",
        grpc_inference_address="127.0.0.1",
        grpc_inference_port=str(grpc_inference),
        grpc_management_address="127.0.0.1",
        grpc_management_port=str(grpc_management),
        model_store=str(model_store),
        **(extra or {}),
    )
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return props


@dataclass(frozen=True)
class PrivateServer:
    props: dict[str, str]  # its config.properties
    root: Path  # temp dir: config, logs (root/logs), worker sockets

    def url(self, model_name: str) -> str:
        return f"{self.props['inference_address']}/predictions/{model_name}"

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE


TorchServe = Callable[..., AbstractContextManager[PrivateServer]]  # private_torchserve, as the tests' fixture hands it over


@contextlib.contextmanager
def private_torchserve(
    model_store: Path,
    model_name: str,
    config: Path = REPO / "config.properties",
    timeout: float = 240.0,
    extra: dict[str, str] | None = None,
) -> Iterator[PrivateServer]:
    """A TorchServe of its own (free ports, temp dir, logs, pid file) for tests and benchmarks.

    Runs in the foreground in a new process group, which is always killed on exit.
    """
    root = Path(tempfile.mkdtemp(prefix="ts-"))  # short path: worker unix sockets are created in here
    logs = root / "logs"
    logs.mkdir()
    props = write_private_config(config, root / "config.properties", model_store, extra)
    env = {**os.environ, "TEMP": str(root), "TMPDIR": str(root), "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}
    with open(logs / "console.log", "w") as console:
        proc = subprocess.Popen(
            torchserve_command(root / "config.properties", model_store, model_name, foreground=True),
            env=env,
            cwd=root,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(props["management_address"], model_name, logs, timeout=timeout, process=proc, key_file=root / KEY_FILE)
        yield PrivateServer(props, root)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
