"""What the benchmark measures through real servers: TorchServe's latency against the same pipeline
in process, its throughput per batch size and worker count, and the same requests through KServe's
model server. Results are data (dicts of figures); ``report.py`` writes them."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml

from bench.load import Probe, run_load
from bench.timing import timed
from scripts import background, serve_kserve
from testkit.torchserve import free_ports, private_torchserve
from vitscope import layout
from vitscope.model.variants import get_variant
from vitscope.protocols import PLAIN, ServerInfo
from vitscope.service import create_service

logger = logging.getLogger("bench")

ENGINE_CONCURRENCY = 4  # clients in flight for the engines section's images/s
THROUGHPUT_CONFIGS = ((1, 1), (4, 1), (1, 2), (4, 2))  # (TorchServe batchSize, workers)
CONCURRENCY = (1, 4, 8)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Served:
    """The same request through TorchServe and in process (the handler with TorchServe's Context, no HTTP)."""

    served_p50: float
    served_p95: float
    inprocess_p50: float
    inprocess_p95: float
    encode_s: float  # encoding the response, in process
    requests: int
    response_mb: float


def bench_served(args: argparse.Namespace, weights: Path, image: bytes, store: Path) -> Served:
    """p50/p95 of the same request through a real TorchServe and in process."""
    from testkit.handler import answer  # TorchServe's Context: only the served sections need TorchServe installed

    variant = get_variant(args.model, args.patch)
    service = create_service({"model": variant.name}, weights)
    in_process = timed(lambda: answer(service, [{"body": image}]), args.requests)
    served: list[float] = []
    with private_torchserve(store, variant.name) as server:
        url = server.url(variant.name)
        with requests.Session() as session:
            for i in range(args.requests + 1):
                start = time.perf_counter()
                reply = session.put(url, data=image, timeout=600)
                elapsed = time.perf_counter() - start
                reply.raise_for_status()
                if i:  # the first request warms the worker up
                    served.append(elapsed)
    decoded = PLAIN.decode({"body": image})
    results = service.explain(decoded.requests)
    encode = min(timed(lambda: PLAIN.encode(decoded, results, ServerInfo()), 3))
    return Served(
        percentile(served, 50),
        percentile(served, 95),
        percentile(in_process, 50),
        percentile(in_process, 95),
        encode,
        args.requests,
        len(reply.content) / 1e6,
    )


# ----------------------------------------------------------------------------- engines
@dataclass
class EngineFigures:
    engine: str
    p50: float  # sequential requests
    p95: float
    images_per_s: float  # ENGINE_CONCURRENCY in flight


def v2_request(image: bytes) -> bytes:
    """One KServe v2 JSON request for ``image`` with default options: what both engines are sent."""
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor], "parameters": {}}).encode()


def post_v2(session: requests.Session, url: str, body: bytes) -> float:
    """Seconds of one v2 JSON POST of ``body`` to ``url`` (an error status raises)."""
    start = time.perf_counter()
    session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=600).raise_for_status()
    return time.perf_counter() - start


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


# ----------------------------------------------------------------------------- cold start
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


# ----------------------------------------------------------------------------- throughput
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
