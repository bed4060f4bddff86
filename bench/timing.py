"""What the forward, methods and families sections time in-process: the forward paths (each
configuration in its own worker process, so that its peak memory is its own), their FLOPs, the matmul
peak, and the machine they ran on. Results are data (``Result``, ``Machine``); the sections' modules
(``forward.py``, ``methods.py``, ``families.py``) write them."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts import REPO
from vitscope.attention import map_agreement, patch_attention
from vitscope.methods import METHODS
from vitscope.model.checkpoint import build_model, filter_state_dict, read_checkpoint
from vitscope.model.kernels import SDPA_ONLY, KernelPlan, plan_kernels
from vitscope.model.rollout import rollout_reference
from vitscope.model.sources import load_checkpoint
from vitscope.model.variants import Variant, get_variant
from vitscope.model.vit import VisionTransformer
from vitscope.options import parse_options
from vitscope.precision import AUTOCAST_DTYPES, FP32, PrecisionPlan, Speed, cpu_info, describe_device, plan_precisions, probe_speed
from vitscope.vocab import ModelFacts

logger = logging.getLogger("bench")

PATHS = ("seed", "fp32", "bf16", "fp16")  # the seed article's eager pipeline; ours in each precision
# The methods section (fp32): a last-layer request, layers=all, rollout, the naive full-matrix rollout,
# and the feature methods (similarity to one point, PCA colours with the auto foreground).
METHOD_PATHS = ("last_layer", "layers_all", "rollout", "rollout_naive", "similarity", "pca")
# Timed side by side in one process, round-robin (the "x last-layer" ratios): every path but the naive rollout.
SIDE_BY_SIDE = "side_by_side"
SIDE_BY_SIDE_PATHS = tuple(path for path in METHOD_PATHS if path != "rollout_naive")
METHOD_REQUESTS: dict[str, dict[str, str]] = {  # the request each methods-section path makes (upsample=false)
    "last_layer": {},
    "layers_all": {"layers": "all"},
    "rollout": {"method": "rollout"},
    "similarity": {"method": "similarity", "point": "0,0"},
    "pca": {"method": "pca"},
}


# ----------------------------------------------------------------------------- the paths
def run_path(path: str, model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    """Patch-grid maps of ``path``: (heads, H/p, W/p) of the last layer for ``PATHS``, (layers, maps,
    H/p, W/p) for ``METHOD_PATHS`` (copied to the host, which also waits for a GPU to finish)."""
    p = model.patch_size
    if path == "seed":  # the seed article's pipeline: an explicit N x N softmax in every block
        with torch.inference_mode():
            row = model.get_cls_attention(x, None, explicit=True)[0, :, model.num_prefix_tokens :]  # (heads, patches)
        return row.reshape(-1, x.shape[2] // p, x.shape[3] // p).cpu().numpy()
    if path in METHOD_PATHS:
        return method_maps(path, model, x)
    return patch_attention(model, x, None, path)[0].cpu().numpy()


def method_maps(path: str, model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    """The patch-grid answer of one ``METHOD_PATHS`` entry for the first image, fp32, everything the
    service computes included (the forward pass, then the method's arrays): the main output."""
    p = model.patch_size
    if path == "rollout_naive":
        row = rollout_reference(model, x)[:, None, None, model.num_prefix_tokens :]  # (B, 1, 1, patches)
        return row.reshape(1, 1, x.shape[2] // p, x.shape[3] // p).cpu().numpy()
    options = parse_options({**METHOD_REQUESTS[path], "upsample": "false"}, ModelFacts.of(model))
    method = METHODS[options.method]
    with torch.inference_mode():
        computed = {name: t[0].cpu().numpy() for name, t in method.compute(model, x, method.forward_spec(options)).items()}
    return method.arrays(options, computed, p)[method.outputs[0].name]


def forward_flops(variant: Variant, size: tuple[int, int], path: str) -> float:
    """Multiply-adds x 2 that ``path`` executes for one image (the seed does more work than we do)."""
    n = 1 + (size[0] // variant.patch_size) * (size[1] // variant.patch_size)
    c, depth = variant.embed_dim, variant.depth
    embed = 2 * (n - 1) * 3 * variant.patch_size**2 * c
    block = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c + 2 * n * c * int(variant.mlp_ratio * c) * 2
    if path == "seed":  # every block full; the last only projects q, k, v and scores all N x N
        return embed + (depth - 1) * block + 2 * n * c * 3 * c + 2 * n * n * c
    last = 2 * n * c * c + 2 * c * c + 2 * n * c  # keys, the CLS query, one row of scores
    return embed + (depth - 1) * block + last


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (after one untimed call: allocations, oneDNN primitives)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square matmul in ``dtype`` on ``device`` (best of ``repeats``)."""
    n = 8192 if device.type == "cuda" else n  # a GPU needs a bigger GEMM to reach its peak
    a = torch.randn(n, n).to(device, dtype)
    b = torch.randn(n, n).to(device, dtype)

    def once() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return 2 * n**3 / min(timed(once, repeats)) / 1e9


def side_by_side(model: VisionTransformer, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Each of ``SIDE_BY_SIDE_PATHS`` over a last-layer request, timed in turn in this one process:
    per round, each path's time / the last layer's; the median over ``rounds`` (the order rotates each
    round, so no path always runs first or after the same one)."""
    for path in SIDE_BY_SIDE_PATHS:  # warm-up: allocations, oneDNN primitives
        run_path(path, model, x)
    ratios: dict[str, list[float]] = {path: [] for path in SIDE_BY_SIDE_PATHS}
    for r in range(rounds):
        order = SIDE_BY_SIDE_PATHS[r % len(SIDE_BY_SIDE_PATHS) :] + SIDE_BY_SIDE_PATHS[: r % len(SIDE_BY_SIDE_PATHS)]
        seconds = {path: timed(partial(run_path, path, model, x), 1, warmup=False)[0] for path in order}
        for path in SIDE_BY_SIDE_PATHS:
            ratios[path].append(seconds[path] / seconds["last_layer"])
    return {path: statistics.median(values) for path, values in ratios.items()}


# ----------------------------------------------------------------------------- one configuration per process
def parse_size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640): height x width."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m bench.timing``: one configuration in its own process (``run_configuration``); prints
    a JSON line, saves the maps. Imports only this module's needs, not the whole benchmark (seconds
    per configuration)."""
    parser = argparse.ArgumentParser(description="one benchmark configuration (internal: see bench/cli.py)")
    parser.add_argument("--path", choices=(*PATHS, *METHOD_PATHS, SIDE_BY_SIDE), required=True)
    parser.add_argument("--size", type=parse_size, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--patch", type=int, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--maps", type=Path)
    print(json.dumps(configuration(parser.parse_args(argv))))
    return 0


def configuration(args: argparse.Namespace) -> dict[str, object]:
    """Time ``args.path`` at ``args.size`` (or the methods side by side), save the maps to ``args.maps``:
    ``{"times", "peak_rss_mb", "loaded_rss_mb"}`` (on a GPU: its memory), or ``{SIDE_BY_SIDE: ratios}``."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load_model(args).to(device)
    variant = model.variant
    if args.path != "seed":  # as served: the kernels measured for its precision (the seed runs its own explicit maths)
        model.use_kernels(native_kernels(device, variant, [args.path if args.path in AUTOCAST_DTYPES else FP32]))
    h, w = args.size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    if args.path == SIDE_BY_SIDE:
        return {SIDE_BY_SIDE: side_by_side(model, x, args.repeats)}
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":  # GPU memory is the figure there; RSS is the host process
        loaded = torch.cuda.memory_allocated(device) / 2**20
    maps: list[np.ndarray] = []

    def once() -> None:
        maps[:] = [run_path(args.path, model, x)]

    # A GPU always warms up (kernel selection, allocator); big sizes on a CPU don't: that is noise next to minutes.
    times = timed(once, args.repeats, warmup=args.repeats > 1 or device.type == "cuda")
    if args.maps:
        np.save(args.maps, maps[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return {"times": times, "peak_rss_mb": peak, "loaded_rss_mb": loaded}


def load_model(args: argparse.Namespace) -> VisionTransformer:
    """The benchmark's model from ``args.weights``: a hub-layout checkpoint of ``args.model``, or a
    Hugging Face directory, read as ``make archive`` reads it (``sources.load_checkpoint``)."""
    if Path(args.weights).is_dir():
        loaded = load_checkpoint(args.weights, None)
        return build_model(loaded.variant, loaded.state)
    return build_model(get_variant(args.model, args.patch), filter_state_dict(read_checkpoint(args.weights)))


def run_configuration(args: argparse.Namespace, path: str, size: tuple[int, int], repeats: int, maps: Path | None = None) -> dict:
    """``configuration`` in a worker process of its own on a CPU, so that its max RSS is its own; in
    this process on a GPU, whose memory peak is reset per configuration (no CUDA start-up per configuration),
    or with ``args.in_process`` (no interpreter start-up per configuration; the RSS peak is then the run's)."""
    if torch.device(args.device).type == "cuda" or getattr(args, "in_process", False):
        return configuration(argparse.Namespace(**{**vars(args), "path": path, "size": size, "repeats": repeats, "maps": maps}))
    cmd = [sys.executable, "-m", "bench.timing", "--path", path, "--size", f"{size[0]}x{size[1]}", "--model", args.model]
    cmd += ["--patch", str(args.patch), "--weights", str(args.weights), "--repeats", str(repeats), "--device", args.device]
    cmd += ["--maps", str(maps)] if maps else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Result:
    """One path at one size: its times, memory and throughput, or why it was skipped."""

    path: str
    size: tuple[int, int]
    tokens: int
    times: list[float] = field(default_factory=list)  # empty when skipped
    peak_rss_mb: float = 0.0
    loaded_rss_mb: float = 0.0
    gflops: float = 0.0
    skipped: str | None = None
    agreement: str = ""  # how its maps compare with the reference path's
    over_last_layer: float | None = None  # methods: its time / a last-layer request's, timed side by side

    @property
    def best(self) -> float:
        return min(self.times)


def seed_over_budget(tokens: int, args: argparse.Namespace, done: list[Result]) -> str | None:
    """Why the seed path must be skipped at ``tokens`` (memory, or time extrapolated as N^2), else None."""
    nxn_gb = get_variant(args.model, args.patch).num_heads * (tokens + 1) ** 2 * 4 * 3 / 1e9  # scores, softmax, a copy
    if nxn_gb > args.seed_budget_gb:
        return f"N x N attention ~{nxn_gb:.0f} GB > {args.seed_budget_gb:g} GB budget"
    measured = [r for r in done if r.path == "seed" and r.times]
    if measured:
        last = max(measured, key=lambda r: r.tokens)
        estimate = last.best * (tokens / last.tokens) ** 2
        if estimate > args.seed_budget_s:
            return f"estimated ~{estimate:.0f} s > {args.seed_budget_s:g} s budget"
    return None


def method_over_budget(path: str, tokens: int, args: argparse.Namespace) -> str | None:
    """Why the naive rollout must be skipped: the memory its N x N matrices need."""
    if path != "rollout_naive":
        return None
    heads, n = get_variant(args.model, args.patch).num_heads, tokens + 1
    need_gb = (2 * heads + 4) * n * n * 4 / 1e9  # scores + softmax per head; fused, identity, product, new product
    return f"needs ~{need_gb:.0f} GB of N x N matrices > {args.seed_budget_gb:g} GB budget" if need_gb > args.seed_budget_gb else None


def measure(
    path: str, size: tuple[int, int], args: argparse.Namespace, maps_dir: Path, done: list[Result], speeds: dict[str, Speed]
) -> Result:
    """``path`` at ``size`` (``run_configuration``), unless a budget or a non-native precision rules it out."""
    tokens = (size[0] // args.patch) * (size[1] // args.patch)  # patch tokens
    result = Result(path, size, tokens)
    if path in speeds and not speeds[path].fast:
        result.skipped = speeds[path].reason
        return result
    if path in ("seed", *METHOD_PATHS):
        result.skipped = seed_over_budget(tokens, args, done) if path == "seed" else method_over_budget(path, tokens, args)
        if result.skipped:
            return result
    on_gpu = torch.device(args.device).type == "cuda"
    repeats = args.repeats if tokens <= 4000 or on_gpu else 1  # big sizes on a CPU: one timed run, no warm-up
    logger.info("  %s %dx%d (%d tokens, %d timed run(s))", path, size[0], size[1], tokens, repeats)
    try:
        data = run_configuration(args, path, size, repeats, maps_dir / f"{path}_{size[0]}x{size[1]}.npy")
    except RuntimeError as e:
        result.skipped = f"failed: {e}"
        return result
    result.times, result.peak_rss_mb, result.loaded_rss_mb = data["times"], data["peak_rss_mb"], data["loaded_rss_mb"]
    if path in PATHS:
        result.gflops = forward_flops(get_variant(args.model, args.patch), size, path) / result.best / 1e9
    return result


def measure_side_by_side(size: tuple[int, int], args: argparse.Namespace, results: list[Result]) -> None:
    """Fill ``over_last_layer`` of the methods at ``size``: ``side_by_side`` (``run_configuration``)."""
    rounds = max(args.repeats, 5)
    logger.info("  side by side %dx%d: %s, %d rounds", size[0], size[1], ", ".join(SIDE_BY_SIDE_PATHS), rounds)
    try:
        ratios = run_configuration(args, SIDE_BY_SIDE, size, rounds)[SIDE_BY_SIDE]
    except RuntimeError as e:
        logger.warning("side-by-side timing failed: %s", e)
        return
    for r in results:
        if r.size == size and r.path in ratios and not r.skipped:
            r.over_last_layer = ratios[r.path]


def compare_maps(results: list[Result], maps_dir: Path) -> None:
    """Fill ``agreement``: max |seed - fp32| and min per-head correlation of bf16/fp16 vs fp32; and
    the rollout vs the naive full-matrix product, relative to the map's maximum, where both ran."""
    for r in results:
        tag = f"{r.size[0]}x{r.size[1]}"
        if r.skipped:
            continue
        if r.path == "rollout" and (maps_dir / f"rollout_naive_{tag}.npy").exists():
            ours, naive = np.load(maps_dir / f"rollout_{tag}.npy"), np.load(maps_dir / f"rollout_naive_{tag}.npy")
            r.agreement = f"max |rollout - naive| / max = {np.abs(ours - naive).max() / np.abs(naive).max():.1e}"
        if r.path not in ("seed", "bf16", "fp16") or not (maps_dir / f"fp32_{tag}.npy").exists():
            continue
        ours = np.load(maps_dir / f"fp32_{tag}.npy")
        other = np.load(maps_dir / f"{r.path}_{tag}.npy")
        if r.path == "seed":
            r.agreement = f"max |seed - fp32| = {np.abs(other - ours).max():.1e}"
        else:
            corr = min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, other, strict=True))
            r.agreement = f"min head corr vs fp32 = {corr:.5f}"


# ----------------------------------------------------------------------------- the families section's Hugging Face rows
HF_ROW = "hf:"  # a families row "hf:<hub name>": the same model made by transformers, loaded from its directory


def hugging_face_twin(variant: Variant) -> Any:
    """A random transformers model with ``variant``'s architecture (DINOv2 with or without registers),
    to show that a model loaded from a Hugging Face directory is served as fast as the hub's."""
    import transformers  # a test/bench dependency (requirements.txt), not the served core's

    if variant.family != "dinov2" or variant.ffn != "mlp":
        raise ValueError(f"{HF_ROW}{variant.name}: the Hugging Face row is made for DINOv2 ViT-S/B/L with or without registers")
    shape: dict[str, Any] = {"hidden_size": variant.embed_dim, "num_hidden_layers": variant.depth, "num_attention_heads": variant.num_heads}
    shape |= {"patch_size": variant.patch_size, "image_size": variant.pretrain_img_size, "mlp_ratio": int(variant.mlp_ratio)}
    if variant.num_registers:
        config = transformers.Dinov2WithRegistersConfig(**shape, num_register_tokens=variant.num_registers)
        return transformers.Dinov2WithRegistersModel(config)
    return transformers.Dinov2Model(transformers.Dinov2Config(**shape))


# ----------------------------------------------------------------------------- the machine
@dataclass
class Machine:
    """What the forward passes ran on, and what this run measured of it."""

    device: torch.device
    description: str  # precision.describe_device: CPU model, flags, ATen capability, threads; or the GPU
    speeds: dict[str, Speed]  # bf16/fp16: natively fast or not, and why
    peaks: dict[str, float]  # matmul GFLOP/s; only for fp32 and the precisions that are native
    plan: PrecisionPlan  # what precision=auto runs here (for the benchmark's random-weight model)
    kernels: KernelPlan = SDPA_ONLY  # the attention kernels measured here, as the server measures them at load
    cpu_flags: frozenset[str] = frozenset()  # precision.cpu_info's flags when the passes ran on the CPU (amx_bf16, ...)


def probe_machine(device: torch.device, weights: Path, variant: Variant) -> Machine:
    """Describe the device, decide which reduced precisions are native (as the server does), and
    measure the matmul peak of fp32 and of those precisions only (an emulated peak is ~0)."""
    logger.info("probing %s: precisions, matmul peaks ...", device)
    speeds = {p: probe_speed(device, p) for p in AUTOCAST_DTYPES if p != FP32}
    model = build_model(variant, filter_state_dict(read_checkpoint(weights))).to(device)
    plan = plan_precisions(device, lambda p: map_agreement(model, device, p), speed=lambda _device, p: speeds[p])
    peaks = {p: matmul_peak(device, dtype) for p, dtype in AUTOCAST_DTYPES.items() if p == FP32 or speeds[p].fast}
    kernels = native_kernels(device, variant, [p for p in AUTOCAST_DTYPES if p == FP32 or speeds[p].fast])
    flags = cpu_info().flags if device.type == "cpu" else frozenset()
    return Machine(device, describe_device(device), speeds, peaks, plan, kernels, flags)


def native_kernels(device: torch.device, variant: Variant, precisions: list[str]) -> KernelPlan:
    """The attention kernels for ``precisions``, measured as ``create_service`` does at load."""
    dtypes = [AUTOCAST_DTYPES[p] for p in precisions]
    return plan_kernels(device, dtypes, variant.num_heads, variant.embed_dim // variant.num_heads)


if __name__ == "__main__":
    sys.exit(worker_main())
