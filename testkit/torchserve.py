"""A private TorchServe for tests and benchmarks: free loopback ports, its own temp dir, always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts import REPO
from scripts.serve import FAILURE_MARKERS, KEY_FILE, ServeError, auth_header, log_tail, read_properties, torchserve_command, wait_ready


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


VMARGS_ENV = "VITSCOPE_TEST_VMARGS"  # JVM flags of every private server, where set (tests/conftest.py: short-lived JVMs)


def write_private_config(source: Path, path: Path, model_store: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``source`` config.properties moved to free loopback ports and ``model_store``, with the JVM flags
    of ``VMARGS_ENV`` where it is set and neither names any; returns its properties."""
    props = read_properties(source)
    if os.environ.get(VMARGS_ENV) and "vmargs" not in props and "vmargs" not in (extra or {}):
        props["vmargs"] = os.environ[VMARGS_ENV]
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
    with _torchserve(model_store, model_name, config, timeout, extra) as server:
        yield server


@dataclass(frozen=True)
class ModelApiServer(PrivateServer):
    """A private TorchServe with the model-registration API on and no model of its own: a test
    registers the archive it serves (``register``), and unregisters it when done."""

    @contextlib.contextmanager
    def register(self, mar: Path, timeout: float = 240.0) -> Iterator[str]:
        """``mar`` (its file name, less .mar, is the model's name) registered with one worker, READY
        (synchronous); yields the name; unregistered (its worker stopped) on exit."""
        name = mar.stem
        management = self.props["management_address"]
        params = {"url": mar.resolve().as_uri(), "initial_workers": "1", "synchronous": "true"}
        reply = requests.post(f"{management}/models", params=params, timeout=timeout)
        if reply.status_code != 200:
            raise ServeError(f"registering {name} failed: HTTP {reply.status_code} {reply.text[:500]}\n{log_tail(self.root / 'logs')}")
        try:
            yield name
        finally:
            requests.delete(f"{management}/models/{name}", timeout=timeout)


@contextlib.contextmanager
def model_api_torchserve(
    config: Path = REPO / "config.properties", timeout: float = 240.0, extra: dict[str, str] | None = None
) -> Iterator[ModelApiServer]:
    """A private TorchServe as ``private_torchserve`` starts one, with ``enable_model_api=true`` and no
    model loaded at start (an empty model store): ready once its management API answers."""
    store = Path(tempfile.mkdtemp(prefix="ts-store-"))
    try:
        with _torchserve(store, None, config, timeout, {"enable_model_api": "true", **(extra or {})}) as server:
            yield ModelApiServer(server.props, server.root)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _wait_for_management(url: str, logs: Path, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"TorchServe exited with code {process.returncode}\n{log_tail(logs)}")
        try:
            if requests.get(f"{url}/models", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise ServeError(f"TorchServe's management API not up after {timeout:.0f} s\n{log_tail(logs)}")


def _until_settled(url: str, model_name: str, logs: Path, timeout: float, process: subprocess.Popen, key_file: Path) -> None:
    """Poll every 0.1 s until ``model_name`` has a READY worker, the server has exited or its log names a
    failure (``wait_ready``, which then decides and says why, polls every 0.5 s: test time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        ts_log = logs / "ts_log.log"
        if ts_log.exists() and any(m in ts_log.read_text(errors="replace") for m in FAILURE_MARKERS):
            return
        try:
            reply = requests.get(f"{url}/models/{model_name}", timeout=2, headers=auth_header(key_file, "management"))
            if reply.ok and any(w.get("status") == "READY" for w in reply.json()[0].get("workers", [])):
                return
        except (requests.RequestException, ValueError, IndexError):
            pass
        time.sleep(0.1)


@contextlib.contextmanager
def _torchserve(
    model_store: Path, model_name: str | None, config: Path, timeout: float, extra: dict[str, str] | None
) -> Iterator[PrivateServer]:
    root = Path(tempfile.mkdtemp(prefix="ts-"))  # short path: worker unix sockets are created in here
    logs = root / "logs"
    logs.mkdir()
    props = write_private_config(config, root / "config.properties", model_store, extra)
    env = {**os.environ, "TEMP": str(root), "TMPDIR": str(root), "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}
    command = torchserve_command(root / "config.properties", model_store, model_name or "", foreground=True)
    if model_name is None:  # no model at start: the command without its --models NAME=NAME.mar
        at = command.index("--models")
        command = command[:at] + command[at + 2 :]
    with open(logs / "console.log", "w") as console:
        proc = subprocess.Popen(command, env=env, cwd=root, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if model_name is None:
            _wait_for_management(props["management_address"], logs, timeout, proc)
        else:
            start = time.monotonic()
            _until_settled(props["management_address"], model_name, logs, timeout, proc, root / KEY_FILE)
            left = max(1.0, timeout - (time.monotonic() - start))
            wait_ready(props["management_address"], model_name, logs, timeout=left, process=proc, key_file=root / KEY_FILE)
        yield PrivateServer(props, root)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
