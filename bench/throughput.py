"""The throughput section: images/s through TorchServe for each (batchSize, workers) of the .mar's
model-config.yaml x client concurrency, the 503 refusals of a full job queue counted apart."""

from __future__ import annotations

import argparse
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.load import Probe, run_load
from bench.section import Run
from bench.servers import percentile
from bench.tables import Column, Table, Target
from bench.timing import Machine
from testkit.torchserve import private_torchserve
from vitscope import layout

logger = logging.getLogger("bench")

THROUGHPUT_CONFIGS = ((1, 1), (4, 1), (1, 2), (4, 2))  # (TorchServe batchSize, workers)
CONCURRENCY = (1, 4, 8)


@dataclass
class Throughput:
    batch_size: int
    workers: int
    concurrency: int
    images_per_s: float  # answered (200) per second
    p50: float | None  # of the answered requests (None: none answered)
    refused: int  # 503: more clients in flight than the job queue holds (model-config.yaml's jobQueueSize)
    errors: int  # anything else: lost, or another status


def archive_variant(mar: Path, store: Path, batch_size: int, workers: int) -> None:
    """Copy of ``mar`` into ``store`` with model-config.yaml's batch size and workers replaced
    (and torch threads split between the workers, so they do not oversubscribe the cores)."""
    store.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(store / mar.name, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == layout.MODEL_CONFIG:
                config = yaml.safe_load(data)
                config.update(batchSize=batch_size, minWorkers=workers, maxWorkers=workers)
                config["handler"]["threads"] = max(1, (os.cpu_count() or 1) // workers)
                data = yaml.safe_dump(config).encode()
            dst.writestr(item, data)


def bench_throughput(args: argparse.Namespace, mar: Path, image: bytes, workdir: Path) -> list[Throughput]:
    """Images/s through TorchServe for each (batch size, workers) x client concurrency."""
    name = mar.stem
    probe = Probe("image", {"files": {"data": image}, "data": {"short_side": "224", "upsample": "false"}}, 200)
    rows = []
    for batch_size, workers in THROUGHPUT_CONFIGS:
        store = workdir / f"store_b{batch_size}_w{workers}"
        archive_variant(mar, store, batch_size, workers)
        with private_torchserve(store, name) as server:
            run_load(server.url(name), [probe], 2 * workers, workers, 600)  # warm every worker up
            for concurrency in CONCURRENCY:
                logger.info("  batchSize %d, %d worker(s), concurrency %d", batch_size, workers, concurrency)
                load = run_load(server.url(name), [probe], args.throughput_requests, concurrency, 600)
                ok, refused = load.statuses[200], load.statuses[503]
                p50 = percentile(load.correct_latencies, 50) if load.correct_latencies else None
                rows.append(Throughput(batch_size, workers, concurrency, ok / load.seconds, p50, refused, load.sent - ok - refused))
    return rows


def throughput_table(rows: Sequence[Throughput], requests: int) -> Table:
    table = Table(
        f"Throughput through TorchServe (224x224, upsample=false, {requests} requests per cell)",
        (
            Column("batchSize"),
            Column("workers"),
            Column("concurrency"),
            Column("images/s", "{:.2f}"),
            Column("p50 s (answered)", "{:.3f}"),
            Column("refused (503)"),
            Column("errors"),
        ),
    )
    for t in rows:
        table.add(t.batch_size, t.workers, t.concurrency, t.images_per_s, t.p50, t.refused, t.errors)
    if any(t.refused for t in rows):
        table.notes.append(
            "Refused: the clients in flight outnumbered what the job queue holds (model-config.yaml's jobQueueSize) and the "
            "running requests; TorchServe answers those at once with 503, by design (README, Under load)."
        )
    return table


class ThroughputSection:
    key = "throughput"
    title = "images/s through TorchServe by batchSize x workers x client concurrency"

    def measure(self, run: Run) -> list[Throughput]:
        logger.info("throughput: batch size x workers x concurrency ...")
        return bench_throughput(run.args, run.store / f"{run.args.model}.mar", run.image, run.workdir)

    def tables(self, figures: list[Throughput], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [throughput_table(figures, args.throughput_requests)]

    def targets(self, figures: list[Throughput], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = ThroughputSection()
