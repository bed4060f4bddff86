"""Bounded load test against a running server (loopback only; stops after N requests or T seconds).

    python -m bench.load --url http://127.0.0.1:8080/predictions/dino_vits8 --requests 500 --concurrency 8

Mixes valid images (the bundled samples, small sizes) with invalid payloads; prints lost requests,
status counts, p50/p95/p99 latency and throughput. Exits non-zero on a lost request or a 5xx.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import requests

from scripts import REPO
from vitscope.model.variants import DEFAULT_MODEL

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Probe:
    """One kind of request: what to send and what a correct answer is."""

    name: str
    kwargs: dict  # for requests.post
    expected_status: int
    check: Callable[[requests.Response], bool] | None = None  # extra check of a correct answer


@dataclass
class LoadReport:
    sent: int = 0
    answered: int = 0
    lost: int = 0  # no HTTP answer at all (connection error, timeout)
    wrong: int = 0  # unexpected status or a failed check
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of every answer
    correct_latencies: list[float] = field(default_factory=list)  # of the answers as expected
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return (
            f"{self.sent} sent, {self.answered} answered, {self.lost} lost, {self.wrong} wrong, "
            f"{self.server_errors} 5xx; statuses {dict(sorted(self.statuses.items()))}; "
            f"latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
            f"{self.answered / self.seconds if self.seconds else 0:.1f} req/s over {self.seconds:.1f} s"
        )


def run_load(
    url: str,
    probes: list[Probe],
    total: int,
    concurrency: int,
    time_limit: float,
    timeout: float = 120.0,
    headers: dict[str, str] | None = None,
) -> LoadReport:
    """Send ``total`` requests (cycling through ``probes``) with ``concurrency`` workers, within ``time_limit``."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"load tests run against loopback only, not {host!r}")
    report = LoadReport()
    lock = threading.Lock()
    local = threading.local()
    deadline = time.monotonic() + time_limit
    schedule = itertools.islice(itertools.cycle(probes), total)

    def one(probe: Probe) -> None:
        if time.monotonic() > deadline:
            return
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        try:
            reply = session.post(url, timeout=timeout, headers=headers, **probe.kwargs)
        except requests.RequestException as e:
            with lock:
                report.sent += 1
                report.lost += 1
                report.failures.append(f"{probe.name}: {type(e).__name__}")
            return
        elapsed = time.perf_counter() - start
        ok = reply.status_code == probe.expected_status and (probe.check is None or reply.status_code != 200 or probe.check(reply))
        with lock:
            report.sent += 1
            report.answered += 1
            report.statuses[reply.status_code] += 1
            report.latencies.append(elapsed)
            if ok:
                report.correct_latencies.append(elapsed)
            else:
                report.wrong += 1
                report.failures.append(f"{probe.name}: HTTP {reply.status_code} {reply.text[:120]}")

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, schedule))
    report.seconds = time.monotonic() - start
    return report


def shape_matches(reply: requests.Response) -> bool:
    doc = reply.json()
    return np.asarray(doc["attention"]).shape[1:] == tuple(doc["image_size"])


def sample_probes(short_side: int) -> list[Probe]:
    """Valid sample images at a small size and a few invalid payloads."""
    probes = [
        Probe(path.name, {"files": {"data": path.read_bytes()}, "data": {"short_side": str(short_side)}}, 200, shape_matches)
        for path in sorted((REPO / "data" / "samples").glob("*.jpg"))
    ]
    probes += [
        Probe("junk", {"data": b"not an image"}, 400),
        Probe("empty", {"data": b""}, 400),
        Probe("bad option", {"files": {"data": b"x"}, "data": {"layer": "99"}}, 400),
    ]
    return probes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:8080/predictions/{DEFAULT_MODEL}")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    parser.add_argument("--short-side", type=int, default=64, help="resize of the valid images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_load(args.url, sample_probes(args.short_side), args.requests, args.concurrency, args.time_limit)
    print(report.summary())
    for failure in report.failures[:10]:
        print("  " + failure, file=sys.stderr)
    return 1 if report.lost or report.server_errors or report.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
