"""Where one served forward pass spends its time, operator by operator (``torch.profiler``).

Runs the served last-layer path (``attention.patch_attention``) of a random-weight model, once to
warm up and ``--repeats`` times under the profiler, and prints the machine, the kernel plan, the
time per pass and the operators by self time (a markdown table). For finding where a precision
loses its matmul speed-up (issue 23: bf16 on AMX), not for figures: the profiler adds overhead.

    python -m bench.profile --model dino_vits8 --size 480x480 --precision bf16 [--kernel sdpa] [--top 20]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.timing import native_kernels, parse_size
from vitscope.attention import patch_attention
from vitscope.model.checkpoint import build_model
from vitscope.model.kernels import ATTENTION_KERNELS
from vitscope.model.variants import get_variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import AUTOCAST_DTYPES, PRECISIONS, describe_device

logger = logging.getLogger("bench")


def operator_table(prof: profile, repeats: int, top: int) -> list[str]:
    """The ``top`` operators by self time, per forward pass: markdown rows."""
    timed = sorted(((e.self_device_time_total + e.self_cpu_time_total, e) for e in prof.key_averages()), key=lambda t: t[0], reverse=True)
    total = sum(own for own, _ in timed) or 1.0  # microseconds
    rows = ["| operator | calls per pass | self ms per pass | share |", "| --- | --- | --- | --- |"]
    for own, e in timed[:top]:
        rows.append(f"| {e.key} | {e.count // repeats} | {own / 1000 / repeats:.1f} | {own / total:.0%} |")
    return rows


def profile_pass(model: VisionTransformer, x: torch.Tensor, precision: str, repeats: int) -> tuple[float, profile]:
    """Seconds per pass (timed without the profiler) and the profile of ``repeats`` passes."""
    patch_attention(model, x, None, precision)  # warm-up: kernel selection, caches
    start = time.perf_counter()
    for _ in range(repeats):
        patch_attention(model, x, None, precision)
    seconds = (time.perf_counter() - start) / repeats
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            patch_attention(model, x, None, precision)
    return seconds, prof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dino_vits8")
    parser.add_argument("--patch", type=int, default=None, help="DINO v1 patch size (8 or 16)")
    parser.add_argument("--size", type=parse_size, default=(480, 480), help="HxW, multiples of the patch")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--kernel", choices=ATTENTION_KERNELS, default="auto", help="auto: measure the kernel plan as at load")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    variant = get_variant(args.model, args.patch)
    model = build_model(variant, None).to(device)
    if args.kernel == "auto":
        model.use_kernels(native_kernels(device, variant, [args.precision]))
    height, width = args.size
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    seconds, prof = profile_pass(model, x, args.precision, args.repeats)
    dtype = str(AUTOCAST_DTYPES[args.precision]).removeprefix("torch.")
    lines = [
        f"- Machine: {describe_device(device)}; torch {torch.__version__}",
        f"- {variant.name} at {height}x{width}, {args.precision} ({dtype}), {model.kernels.summary()}",
        f"- {seconds:.3f} s per pass (mean of {args.repeats}, timed without the profiler)",
        "",
        *operator_table(prof, args.repeats, args.top),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
