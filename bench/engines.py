"""The engines section: the same .mar and the same KServe v2 JSON requests through TorchServe and
through KServe's model server (``kserve_engine``): sequential latency and images/s in flight."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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

ENGINE_CONCURRENCY = 4  # clients in flight for the images/s


@dataclass
class EngineFigures:
    engine: str
    p50: float  # sequential requests
    p95: float
    images_per_s: float  # ENGINE_CONCURRENCY in flight


def engine_figures(engine: str, url: str, body: bytes, requests_n: int) -> EngineFigures:
    """p50/p95 of ``requests_n`` sequential POSTs (after one warm-up), and images/s with ENGINE_CONCURRENCY in flight."""
    with requests.Session() as session:
        post_v2(session, url, body)  # warm-up
        sequential = [post_v2(session, url, body) for _ in range(requests_n)]
    start = time.perf_counter()
    with ThreadPoolExecutor(ENGINE_CONCURRENCY) as pool:
        list(pool.map(lambda _: post_v2(requests.Session(), url, body), range(requests_n)))
    rate = requests_n / (time.perf_counter() - start)
    return EngineFigures(engine, percentile(sequential, 50), percentile(sequential, 95), rate)


def bench_engines(args: argparse.Namespace, store: Path, image: bytes, workdir: Path) -> list[EngineFigures]:
    """The same .mar and the same v2 requests through TorchServe and through KServe's model server."""
    name = args.model
    body = v2_request(image)
    rows = []
    with private_torchserve(store, name) as server:
        url = f"{server.props['inference_address']}/v2/models/{name}/infer"
        rows.append(engine_figures("TorchServe 0.12.0", url, body, args.requests))
    pid_file = workdir / "kserve.pid"
    url = serve_kserve.start(name, free_ports(1)[0], store, pid_file=pid_file)
    try:
        rows.append(engine_figures("KServe model server (kserve_engine)", url, body, args.requests))
    finally:
        background.stop(pid_file)
    return rows


def engines_table(rows: Sequence[EngineFigures], requests: int) -> Table:
    table = Table(
        f"Engines: the same .mar, the same KServe v2 JSON request (480x480 JPEG, default options), {requests} requests",
        (
            Column("engine"),
            Column("p50 s (sequential)", "{:.3f}"),
            Column("p95 s", "{:.3f}"),
            Column(f"images/s ({ENGINE_CONCURRENCY} in flight)", "{:.2f}"),
        ),
    )
    for r in rows:
        table.add(r.engine, r.p50, r.p95, r.images_per_s)
    if len(rows) == 2:
        table.notes.append(f"KServe p50 / TorchServe p50: {rows[1].p50 / rows[0].p50:.2f}")
    return table


class Engines:
    key = "engines"
    title = "the same .mar and v2 requests through TorchServe and KServe's model server"

    def measure(self, run: Run) -> list[EngineFigures]:
        logger.info("engines: the same v2 requests through TorchServe and KServe's model server ...")
        return bench_engines(run.args, run.store, run.image, run.workdir)

    def tables(self, figures: list[EngineFigures], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [engines_table(figures, args.requests)]

    def targets(self, figures: list[EngineFigures], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Engines()
