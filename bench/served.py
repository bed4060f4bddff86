"""The served section: the latency of the same request through a real TorchServe and in process
(the handler with TorchServe's Context, no HTTP), and what encoding the response costs; its table and
its targets."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.section import Run
from bench.servers import percentile
from bench.tables import Column, Table, Target
from bench.timing import Machine, timed
from testkit.torchserve import private_torchserve
from vitscope.model.variants import get_variant
from vitscope.protocols import PLAIN
from vitscope.protocols.base import ServerInfo
from vitscope.service import create_service

logger = logging.getLogger("bench")

TARGETS = {
    "encode_fraction_of_served": 0.05,
    "served_over_inprocess": 1.2,
}


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


def served_table(served: Served) -> Table:
    table = Table(
        f"Served latency (480x480 JPEG, {served.requests} sequential requests, default options)",
        (Column(""), Column("p50 s", "{:.3f}"), Column("p95 s", "{:.3f}")),
        notes=[f"Response {served.response_mb:.1f} MB; encoding it takes {served.encode_s:.3f} s."],
    )
    table.add("TorchServe (curl-like PUT)", served.served_p50, served.served_p95)
    table.add("in-process (same pipeline, no HTTP)", served.inprocess_p50, served.inprocess_p95)
    return table


def served_targets(served: Served) -> list[Target]:
    return [
        Target(
            "response encoding, fraction of the served request time",
            served.encode_s / served.served_p50,
            TARGETS["encode_fraction_of_served"],
            False,
            "{:.1%}",
        ),
        Target("served p50 / in-process p50", served.served_p50 / served.inprocess_p50, TARGETS["served_over_inprocess"], False, "{:.2f}"),
    ]


class ServedSection:
    key = "served"
    title = "latency through TorchServe vs the same pipeline in process, and the response encoding's share"

    def measure(self, run: Run) -> Served:
        logger.info("served latency through TorchServe (%d requests) ...", run.args.requests)
        return bench_served(run.args, run.weights, run.image, run.store)

    def tables(self, figures: Served, args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [served_table(figures)]

    def targets(self, figures: Served, args: argparse.Namespace, machine: Machine) -> list[Target]:
        return served_targets(figures)


SECTION = ServedSection()
