"""The coldstart section: each engine from start to READY on the archive (as ``make serve`` /
``make serve-kserve`` start it), then its first v2 request against the next ones."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.section import Run
from bench.servers import percentile, post_v2, v2_request
from bench.tables import Column, Table, Target
from bench.timing import Machine
from scripts import background, serve_kserve
from testkit.torchserve import free_ports, private_torchserve

logger = logging.getLogger("bench")


@dataclass
class ColdStart:
    """From starting an engine to READY (the model loaded, its precision, kernels and cost measured),
    then the first request's latency against the next ones'."""

    engine: str
    ready_s: float
    first_s: float
    warm_p50_s: float


def bench_cold_start(args: argparse.Namespace, store: Path, image: bytes, workdir: Path) -> list[ColdStart]:
    """Start each engine on the archive as ``make serve`` / ``make serve-kserve`` do, time READY and
    the first requests (the served section's default request)."""
    name, body = args.model, v2_request(image)
    rows = []
    start = time.perf_counter()
    with private_torchserve(store, name) as server:
        ready = time.perf_counter() - start
        url = f"{server.props['inference_address']}/v2/models/{name}/infer"
        rows.append(ColdStart("TorchServe 0.12.0", ready, *first_and_warm(url, body, args.requests)))
    pid_file = workdir / "kserve_cold.pid"
    start = time.perf_counter()
    url = serve_kserve.start(name, free_ports(1)[0], store, pid_file=pid_file)
    try:
        ready = time.perf_counter() - start
        rows.append(ColdStart("KServe model server (kserve_engine)", ready, *first_and_warm(url, body, args.requests)))
    finally:
        background.stop(pid_file)
    return rows


def first_and_warm(url: str, body: bytes, requests_after: int) -> tuple[float, float]:
    """The first v2 request's seconds and the p50 of ``requests_after`` more (at least 3)."""
    with requests.Session() as session:
        times = [post_v2(session, url, body) for _ in range(1 + max(requests_after, 3))]
    return times[0], percentile(times[1:], 50)


def cold_start_table(rows: Sequence[ColdStart]) -> Table:
    table = Table(
        "Cold start: from starting the engine to READY (model loaded; precision, attention kernels and cost measured), "
        "then the first v2 request",
        (
            Column("engine"),
            Column("to READY s", "{:.1f}"),
            Column("first request s", "{:.2f}"),
            Column("warm p50 s", "{:.2f}"),
            Column("first / warm", "{:.2f}x"),
        ),
    )
    for r in rows:
        table.add(r.engine, r.ready_s, r.first_s, r.warm_p50_s, r.first_s / r.warm_p50_s)
    return table


class ColdStartSection:
    key = "coldstart"
    title = "each engine from start to READY, then its first requests"

    def measure(self, run: Run) -> list[ColdStart]:
        logger.info("cold start: each engine from start to READY, then its first requests ...")
        return bench_cold_start(run.args, run.store, run.image, run.workdir)

    def tables(self, figures: list[ColdStart], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [cold_start_table(figures)]

    def targets(self, figures: list[ColdStart], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = ColdStartSection()
