"""Fixtures shared by the test modules: one real TorchServe for the whole session."""
from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model.service import AttentionService, create_service
from scripts import archive
from scripts.serve import private_torchserve

from .helpers import backbone_state, full_checkpoint, save

NAME = "dino_vitt16"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    url: str  # inference URL of the model
    management: str
    metrics: str  # the Prometheus endpoint
    log_dir: Path
    in_process: AttentionService  # same checkpoint and settings, loaded here


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    """dino_vitt16 (random weights in DINO's full-checkpoint layout) archived and served by TorchServe."""
    with tempfile.TemporaryDirectory(prefix="dino-e2e-") as tmp:
        store = Path(tmp) / "store"
        checkpoint = save(full_checkpoint(backbone_state(seed=5)), Path(tmp) / "tiny16_full.pth")
        # batchSize 4 (the default is 1 on CPUs): TorchServe's batching is part of what is tested
        config = yaml.safe_load((REPO / "model-config.yaml").read_text())
        config.update(batchSize=4, maxBatchDelay=50)
        (Path(tmp) / "model-config.yaml").write_text(yaml.safe_dump(config))
        args = [
            "--model", "vit_tiny", "--patch", "16", "--weights", str(checkpoint), "--export-path", str(store),
            "--config", str(Path(tmp) / "model-config.yaml"),
        ]
        assert archive.main(args) == 0
        config = yaml.safe_load(zipfile.ZipFile(store / f"{NAME}.mar").read("model-config.yaml"))
        with private_torchserve(store, NAME) as server:
            yield Served(
                url=server.url(NAME),
                management=server.props["management_address"],
                metrics=f"{server.props['metrics_address']}/metrics",
                log_dir=server.root / "logs",
                in_process=create_service(config["handler"], checkpoint),
            )
