"""Fixtures shared by the test modules: one real TorchServe for the whole session, the fixtures that
start a JVM or a browser, and the markers.

A test is marked by what it needs: ``e2e`` when it uses, directly or through another fixture, one of
``E2E_FIXTURES`` (they start TorchServe's JVM or a browser); every other test is ``unit`` (in process,
no Java). Run one kind with ``pytest -m unit`` or ``pytest -m e2e``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.checkpoints import backbone_state, full_checkpoint, save
from testkit.handler import MODEL_NAME
from testkit.torchserve import VMARGS_ENV, ModelApiServer, PrivateServer, TorchServe, model_api_torchserve, private_torchserve
from tests.support.archives import archive_tiny, model_config
from vitscope.service import AttentionService, create_service

NAME = MODEL_NAME  # the archive of TINY (vit_tiny/16)
E2E_FIXTURES = ("served", "torchserve", "model_api", "browser")  # they start a JVM (TorchServe) or a browser


# The modules measured slowest (each one worker's for minutes): scheduled first, so that the other
# worker's share of the rest does not leave one of them running alone at the end (make test passes
# --no-loadscope-reorder, which keeps this order instead of xdist's by test count).
SLOWEST_FIRST = ("test_client.py", "test_hardening.py", "test_viewer.py", "test_bench.py", "test_kserve_engine.py", "test_e2e.py")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``: ``-n auto``), each worker takes its share of the cores for
    torch's threads, and so do the processes it starts (TorchServe's and KServe's workers, scripts run
    as subprocesses: ``OMP_NUM_THREADS``), so that nothing oversubscribes them: OpenMP threads that
    wait for a core by spinning make every process on the machine many times slower."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        share = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)
    # The tests' TorchServes live for seconds to minutes: the client JIT alone and the serial GC start
    # them faster and spend less of the cores on compiling and collecting (bench/'s servers keep the defaults).
    os.environ.setdefault(VMARGS_ENV, "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs (``e2e``, else ``unit``); order the modules that start servers
    first (``SLOWEST_FIRST``, then the other e2e modules, then the rest), each module's tests as written."""
    e2e_modules: set[str] = set()
    for item in items:
        e2e = any(name in E2E_FIXTURES for name in getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.e2e if e2e else pytest.mark.unit)
        if e2e:
            e2e_modules.add(item.path.name)

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (SLOWEST_FIRST.index(name), 0) if name in SLOWEST_FIRST else (len(SLOWEST_FIRST), 0 if name in e2e_modules else 1)

    items.sort(key=rank)  # stable: each module's tests keep their order


@pytest.fixture(scope="session")
def torchserve() -> TorchServe:
    """Starts a private TorchServe (free ports, its own temp dir, always stopped): ``with
    torchserve(store, name) as server``. Its tests are e2e."""
    return private_torchserve


@pytest.fixture(scope="session")
def model_api() -> Iterator[ModelApiServer]:
    """One TorchServe for the session with the model-registration API on and no model of its own
    (config.properties otherwise): a test that only needs its archive served by a TorchServe
    registers it (``with model_api.register(store / f"{name}.mar") as name``, unregistered after)
    instead of starting a JVM of its own. Its tests are e2e."""
    with model_api_torchserve() as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Callable[[], Any]:
    """Starts Debian's chromium, headless, driven by selenium (the caller quits it). Its tests are e2e;
    they are skipped, saying what to install, where chromium or its driver is missing."""
    missing = [package for package, program in (("chromium", "chromium"), ("chromium-driver", "chromedriver")) if not shutil.which(program)]
    if missing:
        pytest.skip(f"needs Debian's {' and '.join(missing)} (apt-get install chromium chromium-driver; make test does it as root)")

    def start() -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))

    return start


@dataclass
class Served:
    url: str  # inference URL of the model
    management: str
    metrics: str  # the Prometheus endpoint
    log_dir: Path
    in_process: AttentionService  # same checkpoint and settings, loaded here
    server: PrivateServer


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    """dino_vitt16 (random weights in DINO's full-checkpoint layout) archived and served by TorchServe."""
    with tempfile.TemporaryDirectory(prefix="dino-e2e-") as tmp:
        store = Path(tmp) / "store"
        checkpoint = save(full_checkpoint(backbone_state(seed=5)), Path(tmp) / "tiny16_full.pth")
        # batchSize 4 (the default is 1 on CPUs): TorchServe's batching is part of what is tested; it
        # batches what has queued (test_e2e queues requests behind a slow one), so the tests' mostly
        # one-at-a-time requests need not each wait 50 ms for a batch that never fills
        # jobQueueSize 16: these tests run up to 8 clients at once and expect every answer (the queue's
        # bound, 503 past it, is tested on servers of their own in test_overload.py).
        # One attention kernel in every process that serves this archive (TorchServe's worker, the KServe
        # engine, in process): the tests compare their answers to the last bit, and each process would
        # otherwise measure its own choice under the test suite's load.
        settings = model_config(Path(tmp), {"attention_kernel": "sdpa"}, batchSize=4, maxBatchDelay=5, jobQueueSize=16)
        archive_tiny(store, checkpoint, settings)
        config = yaml.safe_load(zipfile.ZipFile(store / f"{NAME}.mar").read("model-config.yaml"))
        with private_torchserve(store, NAME) as server:
            yield Served(
                url=server.url(NAME),
                management=server.props["management_address"],
                metrics=f"{server.props['metrics_address']}/metrics",
                log_dir=server.root / "logs",
                in_process=create_service(config["handler"], checkpoint, response_timeout_s=float(config["responseTimeout"])),
                server=server,
            )
