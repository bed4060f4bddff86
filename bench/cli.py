"""``make bench`` / ``python -m bench``: the seed article's eager pipeline vs our fp32/bf16/fp16 paths,
the methods, today's models, the encodings, and the servers (latency, throughput, engines).

    python -m bench                   # full run (~20 min on 2 cores), writes bench/results/bench.{md,json,png}
    python -m bench --quick           # 224x224 and 480x480 only, fewer served requests
    python -m bench --device cuda     # forward passes on the GPU

Everything is measured in this one run, with the same random weights and inputs: ratios are the
figures to compare (absolute times on a shared machine are noisy). The report starts with the
machine. Each forward configuration runs in its own process so that its peak memory (max RSS) is its
own. A reduced precision the device does not run natively (``vitscope/precision.py``: capability
flags, then a matmul probe) is reported as skipped, not timed: emulated bf16 is ~25x slower than fp32.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.batching import bench_batching
from bench.compiled import bench_compile
from bench.overload import bench_overload
from bench.plot import plot
from bench.report import build_report, markdown, to_json
from bench.servers import bench_cold_start, bench_engines, bench_served, bench_throughput
from bench.timing import (
    HF_ROW,
    METHOD_PATHS,
    PATHS,
    Machine,
    Result,
    bench_encodings,
    bench_families,
    compare_maps,
    measure,
    measure_side_by_side,
    parse_size,
    probe_machine,
)
from bench.video import bench_video, parse_clip
from scripts import REPO, archive
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import get_variant
from vitscope.precision import AUTOCAST_DTYPES, FP32

logger = logging.getLogger("bench")

SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 480), (960, 960), (1080, 1920))
QUICK_SIZES = SIZES[:2]
METHOD_SIZES: tuple[tuple[int, int], ...] = ((480, 480), (1080, 1920))
SIDE_BY_SIDE_MAX_TOKENS = 4000  # the methods' ratios are timed side by side up to 480x480 at patch 8 (minutes beyond)
SECTIONS = (
    "forward",
    "methods",
    "families",
    "encoding",
    "batching",
    "compile",
    "served",
    "throughput",
    "engines",
    "coldstart",
    "overload",
    "video",
)
# The families section (fp32, last layer): our path vs the eager N x N path on today's models.
FAMILY_ROWS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("dinov2_vits14_reg", (518, 518)),
    ("dinov2_vits14_reg", (1036, 1036)),
    ("dinov3_vits16", (512, 512)),
    (f"{HF_ROW}dinov2_vits14_reg", (518, 518)),  # the same model from a Hugging Face directory: as fast
)
IMAGE = REPO / "data" / "samples" / "astronaut.jpg"  # 512x512 -> 480x480: the served sections' request


def parse_family_row(text: str) -> tuple[str, tuple[int, int]]:
    """'dinov2_vits14_reg:518x518' -> ('dinov2_vits14_reg', (518, 518)); 'hf:dinov2_vits14_reg:518x518'
    the same model made by transformers (``HF_ROW``)."""
    name, _, size = text.rpartition(":")
    get_variant(name.removeprefix(HF_ROW))  # a clear error for an unknown model
    return name, parse_size(size)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small", help="hub name (dinov2_vits14_reg, ...) or DINO's vit_* with --patch")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="forward passes on (default: cuda if present)"
    )
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="forward paths to measure")
    parser.add_argument("--patch", type=int, default=None, help="DINO's patch size for --model vit_* (default 8)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=list(SIZES), help="HxW ...")
    parser.add_argument("--method-sizes", type=parse_size, nargs="+", default=list(METHOD_SIZES), help="HxW for the methods section")
    parser.add_argument(
        "--families", type=parse_family_row, nargs="+", default=list(FAMILY_ROWS), help="model:HxW rows of the families section"
    )
    parser.add_argument("--quick", action="store_true", help="224 and 480 only, 5 served requests")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (1 above 4000 tokens)")
    parser.add_argument("--requests", type=int, default=20, help="sequential requests for served latency")
    parser.add_argument("--seed-budget-gb", type=float, default=4.0, help="skip the seed path above this N x N memory")
    parser.add_argument("--seed-budget-s", type=float, default=300.0, help="skip the seed path above this estimated time")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure (default: everything)")
    parser.add_argument("--name", default="bench", help="results file stem: <out>/<name>.md, .json and .png")
    parser.add_argument("--throughput-requests", type=int, default=24, help="requests per throughput cell")
    parser.add_argument("--storm-clients", type=int, default=48, help="overload: clients posting back to back")
    parser.add_argument("--storm-seconds", type=float, default=40.0, help="overload: how long they post")
    parser.add_argument("--soak-requests", type=int, default=2000, help="overload: mixed requests of the soak, per engine")
    parser.add_argument(
        "--video-clips", type=parse_clip, nargs="+", default=[((480, 854), 10.0), ((1080, 1920), 2.0)], help="video: HxW:seconds ..."
    )
    parser.add_argument("--video-in-flight", type=int, default=4, help="video: our client's requests in flight")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run each forward/method configuration in this process (seconds faster each; its peak RSS is then the run's so far)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.requests, args.throughput_requests = list(QUICK_SIZES), 5, 8
        args.method_sizes = [(480, 480)]
        args.storm_clients, args.storm_seconds, args.soak_requests = 16, 15.0, 200
    variant = get_variant(args.model, args.patch)  # from here on: the hub name and its patch size
    args.model, args.patch = variant.name, variant.patch_size
    return args


def write_report(args: argparse.Namespace, machine: Machine, found: dict[str, Any]) -> str:
    """The report of the sections measured so far, to <out>/<name>.md, .json and .png: written after
    each section, so that a run cut short (a time limit on a lent machine) keeps what it measured."""
    report = build_report(args, machine, **found)
    text = markdown(report)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(to_json(report))
    if found.get("forward"):
        plot(found["forward"], machine.peaks, args.out / f"{args.name}.png")
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    variant = get_variant(args.model, args.patch)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections)
    found: dict[str, Any] = {}  # build_report's keyword arguments, section by section
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        weights = args.weights = workdir / "bench_random.pth"  # the worker configurations read args.weights
        torch.save(build_model(variant, None).state_dict(), weights)
        machine = probe_machine(torch.device(args.device), weights, variant)
        save = partial(write_report, args, machine, found)
        if "forward" in sections:
            logger.info("forward passes (one process each) ...")
            forward: list[Result] = []
            for size in args.sizes:
                for path in args.paths:
                    forward.append(measure(path, size, args, workdir, forward, machine.speeds))
            compare_maps(forward, workdir)
            found["forward"] = forward
            save()
        if "families" in sections:
            logger.info("families: DINOv2 with registers, DINOv3, fast vs eager N x N (one process each) ...")
            found["families"] = bench_families(args, workdir)
            save()
        if "methods" in sections:
            logger.info("methods: layers=all, rollout, naive rollout (one process each) ...")
            methods: list[Result] = []
            for size in args.method_sizes:
                for path in METHOD_PATHS:
                    methods.append(measure(path, size, args, workdir, methods, machine.speeds))
                if (size[0] // args.patch) * (size[1] // args.patch) <= SIDE_BY_SIDE_MAX_TOKENS:
                    measure_side_by_side(size, args, methods)
            compare_maps(methods, workdir)
            found["methods"] = methods
            save()
        if "encoding" in sections:
            logger.info("encodings ...")
            maps480 = workdir / "fp32_480x480.npy"
            grid = np.load(maps480) if maps480.exists() else np.random.default_rng(0).random((variant.num_heads, 60, 60), dtype=np.float32)
            found["encodings"] = bench_encodings(np.ascontiguousarray(grid, dtype=np.float32), args.patch, args.repeats)
            save()
        image = IMAGE.read_bytes()
        native = [p for p in AUTOCAST_DTYPES if p == FP32 or machine.speeds[p].fast]  # the precisions that run natively here
        if "batching" in sections:
            logger.info("batching: images/s by batch size, in process ...")
            found["batching"] = bench_batching(args, weights, image, native)
            save()
        if "compile" in sections:
            logger.info("torch.compile vs eager (one process each) ...")
            found["compiled"] = bench_compile(args, weights, native)
            save()
        store = workdir / "store"
        if {"served", "throughput", "engines", "coldstart", "overload", "video"} & sections and archive.main(
            ["--model", args.model, "--weights", str(weights), "--export-path", str(store)]
        ):
            raise RuntimeError("archiving the benchmark model failed")
        if "served" in sections:
            logger.info("served latency through TorchServe (%d requests) ...", args.requests)
            found["served"] = bench_served(args, weights, image, store)
            save()
        if "throughput" in sections:
            logger.info("throughput: batch size x workers x concurrency ...")
            found["throughput"] = bench_throughput(args, store / f"{variant.name}.mar", image, workdir)
            save()
        if "engines" in sections:
            logger.info("engines: the same v2 requests through TorchServe and KServe's model server ...")
            found["engines"] = bench_engines(args, store, image, workdir)
            save()
        if "coldstart" in sections:
            logger.info("cold start: each engine from start to READY, then its first requests ...")
            found["cold"] = bench_cold_start(args, store, image, workdir)
            save()
        if "overload" in sections:
            logger.info(
                "under load: %d clients x %g s, then %d mixed requests, on each engine ...",
                args.storm_clients,
                args.storm_seconds,
                args.soak_requests,
            )
            found["overload"] = bench_overload(args, store, image, workdir)
            save()
        if "video" in sections:
            logger.info("video: our client against the server vs DINO's video_generation.py loop in process ...")
            found["videos"] = bench_video(args, store, workdir)
    print(save())
    logger.info("wrote %s", args.out / f"{args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
