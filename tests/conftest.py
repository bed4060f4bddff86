"""Fixtures shared by the test modules: one real TorchServe for the whole session."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model.service import AttentionService, create_service
from scripts import archive
from scripts.serve import read_properties, torchserve_command, wait_ready

from .helpers import backbone_state, full_checkpoint, save

REPO = Path(__file__).resolve().parent.parent
NAME = "dino_vitt16"


@dataclass
class Served:
    url: str  # inference URL of the model
    management: str
    in_process: AttentionService  # same checkpoint and settings, loaded here


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(path: Path, model_store: Path) -> dict[str, str]:
    """The repo's config.properties on free ports and a private model store."""
    props = read_properties(REPO / "config.properties")
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    props.update(
        inference_address=f"http://127.0.0.1:{inference}",
        management_address=f"http://127.0.0.1:{management}",
        metrics_address=f"http://127.0.0.1:{metrics}",
        grpc_inference_port=str(grpc_inference),
        grpc_management_port=str(grpc_management),
        model_store=str(model_store),
    )
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return props


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    root = Path(tempfile.mkdtemp(prefix="ts-"))  # short: worker unix sockets are created in here
    store, logs = root / "store", root / "logs"
    logs.mkdir()
    checkpoint = save(full_checkpoint(backbone_state(seed=5)), root / "tiny16_full.pth")
    assert archive.main(["--model", "vit_tiny", "--patch", "16", "--weights", str(checkpoint), "--export-path", str(store)]) == 0
    props = write_config(root / "config.properties", store)
    env = {**os.environ, "TEMP": str(root), "TMPDIR": str(root), "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}
    with open(logs / "console.log", "w") as console:
        proc = subprocess.Popen(
            torchserve_command(root / "config.properties", store, NAME, foreground=True),
            env=env, cwd=root, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_ready(props["management_address"], NAME, logs, timeout=240, process=proc)
        config = yaml.safe_load(zipfile.ZipFile(store / f"{NAME}.mar").read("model-config.yaml"))
        yield Served(
            url=f"{props['inference_address']}/predictions/{NAME}",
            management=props["management_address"],
            in_process=create_service(config["handler"], checkpoint),
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


