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
from pathlib import Path
from typing import Any

import torch

from bench import (
    batching,
    coldstart,
    compiled,
    decode,
    encoding,
    engines,
    explain,
    families,
    forward,
    methods,
    overload,
    served,
    throughput,
    towers,
    video,
)
from bench.report import write_report
from bench.section import Run, Section
from bench.timing import HF_ROW, PATHS, parse_size, probe_machine
from bench.video import parse_clip
from scripts import REPO
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import get_variant

logger = logging.getLogger("bench")

# The sections, in the order they run and the report shows them; each its own module (bench/section.py).
SECTIONS: tuple[Section, ...] = (
    forward.SECTION,
    methods.SECTION,
    families.SECTION,
    towers.SECTION,
    explain.SECTION,
    decode.SECTION,
    encoding.SECTION,
    batching.SECTION,
    compiled.SECTION,
    served.SECTION,
    throughput.SECTION,
    engines.SECTION,
    coldstart.SECTION,
    overload.SECTION,
    video.SECTION,
)

SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 480), (960, 960), (1080, 1920))
QUICK_SIZES = SIZES[:2]
METHOD_SIZES: tuple[tuple[int, int], ...] = ((480, 480), (1080, 1920))
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
    epilog = "sections (--sections), in the order they run:\n" + "\n".join(f"  {s.key:<11} {s.title}" for s in SECTIONS)
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument(
        "--batching-side", type=int, default=batching.SIDE, help="batching: the requests' short side (default: the served default, 480)"
    )
    parser.add_argument("--seed-budget-gb", type=float, default=4.0, help="skip the seed path above this N x N memory")
    parser.add_argument(
        "--explain-naive-budget-gb", type=float, default=12.0, help="explain: skip the naive N x N form above this estimated memory"
    )
    parser.add_argument("--seed-budget-s", type=float, default=300.0, help="skip the seed path above this estimated time")
    keys = [s.key for s in SECTIONS]
    parser.add_argument(
        "--sections", nargs="+", choices=keys, default=keys, metavar="SECTION", help="what to measure (default: every section below)"
    )
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    variant = get_variant(args.model, args.patch)
    args.out.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {}  # each section's figures, by its key
    text = ""
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        weights = args.weights = workdir / "bench_random.pth"  # the worker configurations read args.weights
        torch.save(build_model(variant, None).state_dict(), weights)
        machine = probe_machine(torch.device(args.device), weights, variant)
        run = Run(args, machine, workdir, IMAGE.read_bytes())
        for section in SECTIONS:
            if section.key in args.sections:
                found[section.key] = section.measure(run)
                text = write_report(args, machine, found, SECTIONS, section.key)
    print(text)
    logger.info("wrote %s", args.out / f"{args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
