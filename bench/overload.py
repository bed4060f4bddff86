"""Under load, on both engines with the same .mar and its default model-config.yaml (jobQueueSize,
deadline_s, the cost budget): a storm of clients that overloads one worker (refused at once with
503/504, the accepted ones answered within ~10x the service time, prompt afterwards), a soak of mixed
requests (every status as expected, the serving process's memory flat), and the largest request
admitted at the defaults."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from bench.load import Probe, run_load
from bench.section import Run
from bench.tables import Column, Table, Target
from bench.timing import Machine
from scripts import background, serve_kserve
from testkit.checkpoints import encode, random_rgb
from testkit.torchserve import free_ports, private_torchserve

logger = logging.getLogger("bench")

JSON = {"Content-Type": "application/json"}
REFUSED = (503, 504)  # what overload may answer besides 200
WARM_UP = 0.1  # share of the soak before its starting memory is read
REFUSED_BACK_OFF = 0.25  # s a storm client waits after a refusal before it posts again, as a retrying client would
TARGETS = {
    "storm_unexpected": 0,  # answers other than 200/503/504 (and lost requests) under overload
    "storm_refused_p99_s": 0.5,
    "storm_accepted_p99_over_service": 10.0,
    "storm_recovery_over_service": 2.0,
    "soak_unexpected": 0,
    "soak_rss_drift": 0.10,
}


@dataclass
class Storm:
    """One engine overloaded: ``clients`` posting the same default request back to back for ``seconds``."""

    engine: str
    clients: int
    seconds: float
    service_p50: float  # s: the same request alone, sequentially (after a warm-up)
    statuses: Counter = field(default_factory=Counter)
    accepted: list[float] = field(default_factory=list)  # s: latencies of the 200s
    refused: list[float] = field(default_factory=list)  # s: latencies of the 503s and 504s
    lost: int = 0  # no HTTP answer at all
    recovery: float = 0.0  # s: one request right after the storm

    @property
    def unexpected(self) -> int:
        return self.lost + sum(n for status, n in self.statuses.items() if status != 200 and status not in REFUSED)


@dataclass
class Soak:
    engine: str
    sent: int
    unexpected: int  # statuses other than each probe's expected one, and lost requests
    rss_start_mb: float  # the serving process after the warm-up share
    rss_end_mb: float
    failures: list[str] = field(default_factory=list)

    @property
    def drift(self) -> float:
        return self.rss_end_mb / self.rss_start_mb - 1


def v2_body(image: bytes, **parameters: object) -> bytes:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def storm(engine: str, url: str, body: bytes, clients: int, seconds: float) -> Storm:
    """``clients`` threads, each posting ``body`` and waiting for the answer, again and again for
    ``seconds`` (after a refusal, ``REFUSED_BACK_OFF`` first)."""
    with requests.Session() as session:
        session.post(url, data=body, headers=JSON, timeout=600).raise_for_status()  # warm-up
        alone = []
        for _ in range(3):
            start = time.perf_counter()
            session.post(url, data=body, headers=JSON, timeout=600).raise_for_status()
            alone.append(time.perf_counter() - start)
    result = Storm(engine, clients, seconds, statistics.median(alone))
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    reply = session.post(url, data=body, headers=JSON, timeout=600)
                except requests.RequestException:
                    with lock:
                        result.lost += 1
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    result.statuses[reply.status_code] += 1
                    (result.accepted if reply.status_code == 200 else result.refused).append(elapsed)
                if reply.status_code != 200:
                    time.sleep(REFUSED_BACK_OFF)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    start = time.perf_counter()
    requests.post(url, data=body, headers=JSON, timeout=600).raise_for_status()
    result.recovery = time.perf_counter() - start
    logger.info("  %s storm: %s", engine, dict(result.statuses))
    return result


def soak_probes() -> list[Probe]:
    """Mixed v2 requests (sizes, methods, formats) and bad ones, each with the status it must get."""
    image = encode(random_rgb(300, 400, seed=3), "JPEG")
    good: list[dict[str, object]] = [
        {"short_side": 224},
        {"short_side": 160, "dtype": "float16", "binary_data_output": True},
        {"short_side": 160, "method": "rollout", "upsample": False},
        {"short_side": 160, "method": "similarity", "point": "40,40", "upsample": False},
        {"short_side": 160, "method": "pca", "upsample": False},
        {"short_side": 160, "layers": "0,5,11", "mask": 0.6, "boxes": True, "upsample": False},
    ]
    probes = [Probe(f"v2 {p}", {"data": v2_body(image, **p)}, 200) for p in good]
    bad = {
        "layer 99": (v2_body(image, layer=99), 400),
        "not an image": (v2_body(b"hello"), 400),
        "bad base64": (json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}).encode(), 400),
        "too many tokens": (v2_body(image, size="4096x4096"), 413),
    }
    return probes + [Probe(name, {"data": body}, status) for name, (body, status) in bad.items()]


def soak(engine: str, url: str, total: int, concurrency: int, pid: int) -> Soak:
    probes = soak_probes()
    warm = max(int(total * WARM_UP), len(probes))
    first = run_load(url, probes, warm, concurrency, 3600, headers=JSON)
    start_mb = rss_mb(pid)
    rest = run_load(url, probes, total - warm, concurrency, 3600, headers=JSON)
    failures = (first.failures + rest.failures)[:5]
    unexpected = first.wrong + first.lost + rest.wrong + rest.lost
    logger.info("  %s soak: %d sent, %d unexpected, RSS %.0f -> %.0f MB", engine, first.sent + rest.sent, unexpected, start_mb, rss_mb(pid))
    return Soak(engine, first.sent + rest.sent, unexpected, start_mb, rss_mb(pid), failures)


@dataclass
class Overload:
    storms: list[Storm]
    soaks: list[Soak]
    largest: str  # the largest request admitted at the defaults, and its time


def torchserve_worker_pid(management: str, name: str) -> int:
    return int(requests.get(f"{management}/models/{name}", timeout=30).json()[0]["workers"][0]["pid"])


def bench_overload(args: argparse.Namespace, store: Path, image: bytes, workdir: Path) -> Overload:
    """Through TorchServe, then through the KServe engine (the .mar as archived): first the timed
    figures (the storms, the largest admitted request), then the soaks, whose figures (statuses,
    memory) do not depend on what else the machine runs."""
    name = args.model
    body = v2_body(image)
    storms, soaks = [], []
    for phase in ("timed", "soak"):
        with private_torchserve(store, name) as server:
            url = f"{server.props['inference_address']}/v2/models/{name}/infer"
            if phase == "timed":
                storms.append(storm("TorchServe 0.12.0", url, body, args.storm_clients, args.storm_seconds))
                largest = largest_admitted(url, name, server.props["management_address"], args.quick)
            else:
                pid = torchserve_worker_pid(server.props["management_address"], name)
                soaks.append(soak("TorchServe 0.12.0", url, args.soak_requests, 4, pid))
        pid_file = workdir / f"kserve-{phase}.pid"
        url = serve_kserve.start(name, free_ports(1)[0], store, pid_file=pid_file)
        try:
            if phase == "timed":
                storms.append(storm("KServe model server (kserve_engine)", url, body, args.storm_clients, args.storm_seconds))
            else:
                soaks.append(soak("KServe model server (kserve_engine)", url, args.soak_requests, 4, int(pid_file.read_text())))
        finally:
            background.stop(pid_file)
        logger.info("  %s done", phase)
    return Overload(storms, soaks, largest)


def largest_admitted(url: str, name: str, management: str, quick: bool) -> str:
    """The model's limits as its description states them, and the largest square request (default
    method) computed at the defaults: the cost limit found by the server's own 413s (halving the gap;
    ``timeout=1`` microsecond requests get 504 without compute when admitted), then, stepping down a
    patch at a time past the model's default deadline (504 "would end after its deadline", no compute
    either), the first request computed, timed (not in --quick)."""
    described = requests.get(f"{management}/models/{name}", params={"customized": "true"}, timeout=30).json()[0]["customizedMetadata"]
    description = json.loads(described) if isinstance(described, str) else described
    limits, patch = description["limits"], description["model"]["patch_size"]
    low, high = patch * 8, int(np.sqrt(limits["max_tokens"])) * patch  # sides in pixels
    probe = encode(random_rgb(64, 64, seed=4))

    def post(side: int, **parameters: object) -> requests.Response:
        return requests.post(url, data=v2_body(probe, size=f"{side}x{side}", upsample=False, **parameters), headers=JSON, timeout=600)

    def admitted(side: int) -> bool:
        return post(side, timeout=1).status_code != 413

    if admitted(high):
        low = high
    while high - low > patch:
        middle = (low + high) // 2 // patch * patch
        low, high = (middle, high) if admitted(middle) else (low, middle)
    budget = f"max_tokens {limits['max_tokens']}, cost budget {limits['cost_budget_s']:.0f} s"
    if quick:
        return f"{low}x{low} within the cost budget ({(low // patch) ** 2} patch tokens; {budget}): not timed in --quick"
    side = low
    while True:
        start = time.perf_counter()
        reply = post(side)
        elapsed = time.perf_counter() - start
        if reply.status_code != 504 or side <= patch:
            break
        side -= patch  # over the default deadline by its estimate: refused before any compute
    what = f"{side}x{side} ({(side // patch) ** 2} patch tokens; {budget}; within the cost budget: {low}x{low})"
    return what + f": HTTP {reply.status_code} in {elapsed:.1f} s"


def overload_tables(overload: Overload) -> list[Table]:
    storms = Table(
        "Under load: clients posting a 480x480 request back to back (KServe v2 JSON, default options), one worker",
        (
            Column("engine"),
            Column("clients x s"),
            Column("service p50 s", "{:.2f}"),
            Column("statuses"),
            Column("refused p99 s", "{:.3f}"),
            Column("accepted p50 s", "{:.1f}"),
            Column("accepted p99 s", "{:.1f}"),
            Column("accepted p99 / service", "{:.1f}"),
            Column("after: one request s", "{:.2f}"),
        ),
    )
    for r in overload.storms:
        refused = percentile_of(r.refused, 99)
        p50, p99 = percentile_of(r.accepted, 50), percentile_of(r.accepted, 99)
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(r.statuses.items())) + (f", lost: {r.lost}" if r.lost else "")
        ratio = p99 / r.service_p50 if p99 is not None else None
        storms.add(r.engine, f"{r.clients} x {r.seconds:g}", r.service_p50, statuses, refused, p50, p99, ratio, r.recovery)
    storms.notes.append(f"Largest request admitted at the defaults: {overload.largest}.")
    soaks = Table(
        "Soak: mixed requests (sizes, methods, formats, bad inputs) at concurrency 4",
        (
            Column("engine"),
            Column("requests"),
            Column("unexpected"),
            Column("RSS after warm-up MB", "{:.0f}"),
            Column("RSS end MB", "{:.0f}"),
            Column("drift", "{:+.1%}"),
        ),
    )
    for s in overload.soaks:
        soaks.add(s.engine, s.sent, s.unexpected, s.rss_start_mb, s.rss_end_mb, s.drift)
        soaks.notes += [f"{s.engine}: {failure}" for failure in s.failures]
    return [storms, soaks]


def percentile_of(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def overload_targets(overload: Overload) -> list[Target]:
    targets = []
    for r in overload.storms:
        refused, accepted = percentile_of(r.refused, 99), percentile_of(r.accepted, 99)
        targets.append(
            Target(f"{r.engine}: answers other than 200/503/504 under load", r.unexpected, TARGETS["storm_unexpected"], False, "{:d}")
        )
        if refused is None:
            targets.append(Target(f"{r.engine}: refused p99", None, TARGETS["storm_refused_p99_s"], False, na="nothing was refused"))
        else:
            targets.append(Target(f"{r.engine}: refused p99 s", refused, TARGETS["storm_refused_p99_s"], False, "{:.3f}"))
        if accepted is not None:
            ratio = accepted / r.service_p50
            targets.append(
                Target(f"{r.engine}: accepted p99 / service p50", ratio, TARGETS["storm_accepted_p99_over_service"], False, "{:.1f}")
            )
        targets.append(
            Target(
                f"{r.engine}: one request after the storm / service p50",
                r.recovery / r.service_p50,
                TARGETS["storm_recovery_over_service"],
                False,
                "{:.2f}",
            )
        )
    for s in overload.soaks:
        targets.append(Target(f"{s.engine}: soak, unexpected statuses", s.unexpected, TARGETS["soak_unexpected"], False, "{:d}"))
        targets.append(Target(f"{s.engine}: soak, RSS drift after warm-up", s.drift, TARGETS["soak_rss_drift"], False, "{:+.1%}"))
    return targets


class OverloadSection:
    key = "overload"
    title = "a storm of clients on one worker, a soak of mixed requests, the largest request admitted, on each engine"

    def measure(self, run: Run) -> Overload:
        args = run.args
        logger.info(
            "under load: %d clients x %g s, then %d mixed requests, on each engine ...",
            args.storm_clients,
            args.storm_seconds,
            args.soak_requests,
        )
        return bench_overload(args, run.store, run.image, run.workdir)

    def tables(self, figures: Overload, args: argparse.Namespace, machine: Machine) -> list[Table]:
        return overload_tables(figures)

    def targets(self, figures: Overload, args: argparse.Namespace, machine: Machine) -> list[Target]:
        return overload_targets(figures)


SECTION = OverloadSection()
