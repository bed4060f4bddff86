"""Benchmark: the seed's eager pipeline vs our fp32/bf16/fp16 paths, encodings, and TorchServe latency.

    python -m bench.bench_attention            # full run (~20 min on 2 cores), writes bench/results/
    python -m bench.bench_attention --quick    # 224x224 and 480x480 only, fewer served requests
    python -m bench.bench_attention --device cuda   # forward passes on the GPU

Everything is measured in this one run, with the same random weights and inputs: ratios are the
figures to compare (absolute times on a shared machine are noisy). The report starts with the
machine. Each forward configuration runs in its own process so that its peak memory (max RSS) is
its own. A reduced precision the device does not run natively (``dino_attention/precision.py``: capability
flags, then a matmul probe) is reported as skipped, not timed: emulated bf16 is ~25x slower than fp32.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import requests
import torch
import yaml

from bench.load import Probe, run_load
from dino_attention import layout
from dino_attention.attention import map_agreement, patch_attention, upsample_nearest
from dino_attention.methods import DEFAULT_METHOD, METHODS, ModelFacts
from dino_attention.methods.maps import GRID, MAPS
from dino_attention.model.checkpoint import build_model, filter_state_dict, read_checkpoint
from dino_attention.model.rollout import rollout_reference
from dino_attention.model.variants import DEFAULT_MODEL, Variant, get_variant
from dino_attention.model.vit import VisionTransformer
from dino_attention.options import parse_options
from dino_attention.precision import AUTOCAST_DTYPES, FP32, PrecisionPlan, Speed, describe_device, plan_precisions, probe_speed
from dino_attention.protocols import PLAIN, ServerInfo, encode_attention
from dino_attention.schema import AttentionResult
from dino_attention.service import create_service
from scripts import REPO, archive, background, serve_kserve
from tests.support.handler import answer
from tests.support.torchserve import free_ports, private_torchserve

logger = logging.getLogger("bench")

SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 480), (960, 960), (1080, 1920))
QUICK_SIZES = SIZES[:2]
PATHS = ("seed", "fp32", "bf16", "fp16")  # fp32/bf16/fp16: our path in that precision
SECTIONS = ("forward", "methods", "families", "encoding", "served", "throughput", "engines")
ENGINE_CONCURRENCY = 4  # clients in flight for the engines section's images/s
# The methods section (fp32): a last-layer request, layers=all, rollout, and the naive full-matrix rollout.
METHOD_PATHS = ("last_layer", "layers_all", "rollout", "rollout_naive")
METHOD_SIZES: tuple[tuple[int, int], ...] = ((480, 480), (1080, 1920))
# The families section (fp32, last layer): our path vs the eager N x N path on today's models.
FAMILY_ROWS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("dinov2_vits14_reg", (518, 518)),
    ("dinov2_vits14_reg", (1036, 1036)),
    ("dinov3_vits16", (512, 512)),
)
TARGETS = {  # what the benchmark checks, printed next to each figure
    "fp32_vs_seed_480": 3.5,
    "bf16_vs_seed": 10.0,
    "bf16_peak_fraction": 0.5,
    "gpu_1080x1920_s": 0.1,  # vit_small/8 at 1080x1920 on an H100-class GPU, bf16/fp16
    "encode_fraction_of_served": 0.05,
    "served_over_inprocess": 1.2,
    "layers_all_over_last_480": 1.1,
    "rollout_over_last_480": 1.6,
    "rollout_1080x1920_rss_gb": 4.0,
}


# ----------------------------------------------------------------------------- the paths
def run_path(path: str, model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    """Patch-grid maps (heads, H/p, W/p) of the last layer by ``path`` (copied to the host, which
    also waits for a GPU to finish)."""
    p = model.patch_size
    if path == "seed":  # the seed article's pipeline: an explicit N x N softmax in every block
        with torch.inference_mode():
            row = model.get_cls_attention(x, None, explicit=True)[0, :, model.num_prefix_tokens :]  # (heads, patches)
        return row.reshape(-1, x.shape[2] // p, x.shape[3] // p).cpu().numpy()
    if path in METHOD_PATHS:
        return method_maps(path, model, x)
    return patch_attention(model, x, None, path)[0].cpu().numpy()


def method_maps(path: str, model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    """Patch-grid maps of one ``METHOD_PATHS`` entry, fp32: (layers, maps, H/p, W/p)."""
    p = model.patch_size
    if path == "rollout_naive":
        row = rollout_reference(model, x)[:, None, None, model.num_prefix_tokens :]  # (B, 1, 1, patches)
        return row.reshape(1, 1, x.shape[2] // p, x.shape[3] // p).cpu().numpy()
    raw = {"layers": "all"} if path == "layers_all" else {"method": "rollout"} if path == "rollout" else {}
    options = parse_options(raw, ModelFacts.of(model))
    method = METHODS[options.method]
    with torch.inference_mode():
        return method.compute(model, x, method.forward_spec(options))[GRID][0].cpu().numpy()  # (layers, maps, H/p, W/p)


def method_over_budget(path: str, tokens: int, args: argparse.Namespace) -> str | None:
    """Why the naive rollout must be skipped: the memory its N x N matrices need."""
    if path != "rollout_naive":
        return None
    heads, n = get_variant(args.model, args.patch).num_heads, tokens + 1
    need_gb = (2 * heads + 4) * n * n * 4 / 1e9  # scores + softmax per head; fused, identity, product, new product
    return f"needs ~{need_gb:.0f} GB of N x N matrices > {args.seed_budget_gb:g} GB budget" if need_gb > args.seed_budget_gb else None


# ----------------------------------------------------------------------------- FLOPs
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


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> list[float]:
    if warmup:  # allocations, oneDNN primitive creation
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- worker process
def worker(args: argparse.Namespace) -> int:
    """One forward configuration in its own process: prints a JSON line, saves the maps."""
    variant = get_variant(args.model, args.patch)
    device = torch.device(args.device)
    model = build_model(variant, filter_state_dict(read_checkpoint(args.weights))).to(device)
    h, w = args.size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    maps: list[np.ndarray] = []

    def once() -> None:
        maps[:] = [run_path(args.path, model, x)]

    times = timed(once, args.repeats, warmup=args.repeats > 1)  # big sizes: warm-up is noise next to minutes
    np.save(args.maps, maps[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":  # GPU memory is the figure there; RSS is the host process
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps({"times": times, "peak_rss_mb": peak, "loaded_rss_mb": rss_loaded}))
    return 0


@dataclass
class Result:
    path: str
    size: tuple[int, int]
    tokens: int
    times: list[float] = field(default_factory=list)  # empty when skipped
    peak_rss_mb: float = 0.0
    loaded_rss_mb: float = 0.0
    gflops: float = 0.0
    skipped: str | None = None
    agreement: str = ""


def seed_over_budget(tokens: int, args: argparse.Namespace, done: list[Result]) -> str | None:
    """Why the seed path must be skipped at ``tokens`` (memory, or time extrapolated as N^2), else None."""
    nxn_gb = get_variant(args.model, args.patch).num_heads * (tokens + 1) ** 2 * 4 * 3 / 1e9  # scores, softmax, a copy
    if nxn_gb > args.seed_budget_gb:
        return f"N x N attention ~{nxn_gb:.0f} GB > {args.seed_budget_gb:g} GB budget"
    measured = [r for r in done if r.path == "seed" and r.times]
    if measured:
        last = max(measured, key=lambda r: r.tokens)
        estimate = min(last.times) * (tokens / last.tokens) ** 2
        if estimate > args.seed_budget_s:
            return f"estimated ~{estimate:.0f} s > {args.seed_budget_s:g} s budget"
    return None


def measure(
    path: str,
    size: tuple[int, int],
    args: argparse.Namespace,
    weights: Path,
    maps_dir: Path,
    done: list[Result],
    speeds: dict[str, Speed],
) -> Result:
    tokens = (size[0] // args.patch) * (size[1] // args.patch)  # patch tokens
    result = Result(path, size, tokens)
    if path in speeds and not speeds[path].fast:
        result.skipped = speeds[path].reason
        return result
    if path in ("seed", *METHOD_PATHS):
        result.skipped = seed_over_budget(tokens, args, done) if path == "seed" else method_over_budget(path, tokens, args)
        if result.skipped:
            return result
    repeats = args.repeats if tokens <= 4000 else 1  # big sizes: one timed run, no warm-up
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_attention",
        "--worker",
        "--path",
        path,
        "--size",
        f"{size[0]}x{size[1]}",
        "--model",
        args.model,
        "--patch",
        str(args.patch),
        "--weights",
        str(weights),
        "--repeats",
        str(repeats),
        "--maps",
        str(maps_dir / f"{path}_{size[0]}x{size[1]}.npy"),
        "--device",
        args.device,
    ]
    logger.info("  %s %dx%d (%d tokens, %d timed run(s))", path, size[0], size[1], tokens, repeats)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        result.skipped = f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        return result
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    result.times, result.peak_rss_mb, result.loaded_rss_mb = data["times"], data["peak_rss_mb"], data["loaded_rss_mb"]
    if path in PATHS:
        result.gflops = forward_flops(get_variant(args.model, args.patch), size, path) / min(result.times) / 1e9
    return result


def methods_report(results: list[Result], maps_dir: Path) -> list[str]:
    """The methods table and its targets: each path's time against a last-layer request of the same size."""
    if not results:
        return []
    by = {(r.path, r.size): r for r in results}
    lines = [
        "",
        "## Methods (fp32, one image): layers=all, rollout, naive full-matrix rollout",
        "",
        "| size | tokens | path | min s | median s | x last-layer | peak RSS MB | maps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        name = f"{r.size[0]}x{r.size[1]}"
        if r.skipped:
            lines.append(f"| {name} | {r.tokens} | {r.path} | {r.skipped}: skipped | | | | |")
            continue
        last = by.get(("last_layer", r.size))
        relative = f"{min(r.times) / min(last.times):.2f}x" if last and last.times else ""
        lines.append(
            f"| {name} | {r.tokens} | {r.path} | {min(r.times):.3f} | {statistics.median(r.times):.3f} | {relative} "
            f"| {r.peak_rss_mb:.0f} (loaded {r.loaded_rss_mb:.0f}) | {method_agreement(r, maps_dir)} |"
        )
    lines += ["", "Targets:", ""]
    for path, key in (("layers_all", "layers_all_over_last_480"), ("rollout", "rollout_over_last_480")):
        measured, last = by.get((path, (480, 480))), by.get(("last_layer", (480, 480)))
        if measured and last and measured.times and last.times:
            ratio = min(measured.times) / min(last.times)
            lines.append(f"- {path} at 480x480: {ratio:.2f}x a last-layer request ({verdict(ratio, TARGETS[key], False)})")
    big = by.get(("rollout", (1080, 1920)))
    if big and big.times:
        gb = big.peak_rss_mb / 1024
        lines.append(f"- rollout at 1080x1920 peak RSS: {gb:.2f} GB ({verdict(gb, TARGETS['rollout_1080x1920_rss_gb'], False)})")
    naive = by.get(("rollout_naive", (1080, 1920)))
    if naive and naive.skipped:
        lines.append(f"- naive full-matrix rollout at 1080x1920: {naive.skipped}")
    return lines


def bench_families(args: argparse.Namespace, workdir: Path) -> list[str]:
    """``args.families`` (default ``FAMILY_ROWS``): each model (random weights in its official layout) at each size, our fp32 path
    and the eager N x N path (the seed's maths), each in its own process; the maps compared."""
    lines = [
        "",
        "## Today's models (fp32, one image, last layer): our path vs the eager N x N path",
        "",
        "| model | size | tokens | path | min s | median s | peak RSS MB | speed-up vs eager | maps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(model for model, _ in args.families):
        variant = get_variant(name)
        model_args = argparse.Namespace(**{**vars(args), "model": name, "patch": variant.patch_size})
        folder = workdir / name
        folder.mkdir()
        torch.manual_seed(0)
        weights = folder / "random.pth"
        torch.save(build_model(variant, None).state_dict(), weights)
        done: list[Result] = []
        for model, size in args.families:
            if model == name:
                done += [measure(path, size, model_args, weights, folder, done, {}) for path in ("seed", "fp32")]
        compare_maps(done, folder)
        for r in done:
            eager = next(e for e in done if e.path == "seed" and e.size == r.size)
            label = "eager N x N" if r.path == "seed" else "ours (SDPA + [CLS] row)"
            if r.skipped:
                lines.append(f"| {name} | {r.size[0]}x{r.size[1]} | {r.tokens} | {label} | {r.skipped}: skipped | | | | |")
                continue
            speedup = f"{min(eager.times) / min(r.times):.1f}x" if r.path != "seed" and eager.times else ""
            lines.append(
                f"| {name} | {r.size[0]}x{r.size[1]} | {r.tokens} | {label} | {min(r.times):.3f} | {statistics.median(r.times):.3f} "
                f"| {r.peak_rss_mb:.0f} (loaded {r.loaded_rss_mb:.0f}) | {speedup} | {eager.agreement if r.path != 'seed' else ''} |"
            )
    return lines


def method_agreement(r: Result, maps_dir: Path) -> str:
    """Rollout vs the naive full-matrix product, relative to the map's maximum, where both ran."""
    tag = f"{r.size[0]}x{r.size[1]}"
    if r.path != "rollout" or not (maps_dir / f"rollout_naive_{tag}.npy").exists():
        return ""
    ours, naive = np.load(maps_dir / f"rollout_{tag}.npy"), np.load(maps_dir / f"rollout_naive_{tag}.npy")
    return f"max |rollout - naive| / max = {np.abs(ours - naive).max() / np.abs(naive).max():.1e}"


def compare_maps(results: list[Result], maps_dir: Path) -> None:
    """Fill ``agreement``: max |seed - fp32| and min per-head correlation of bf16/fp16 vs fp32."""
    for r in results:
        tag = f"{r.size[0]}x{r.size[1]}"
        if r.skipped or r.path == "fp32" or not (maps_dir / f"fp32_{tag}.npy").exists():
            continue
        ours = np.load(maps_dir / f"fp32_{tag}.npy")
        other = np.load(maps_dir / f"{r.path}_{tag}.npy")
        if r.path == "seed":
            r.agreement = f"max |seed - fp32| = {np.abs(other - ours).max():.1e}"
        else:
            corr = min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, other, strict=True))
            r.agreement = f"min head corr vs fp32 = {corr:.5f}"


# ----------------------------------------------------------------------------- encodings
def bench_encodings(maps: np.ndarray, patch: int, repeats: int) -> list[dict]:
    """Time and size of each response encoding of the same maps (heads, H/p, W/p)."""
    up = upsample_nearest(maps, patch)
    heads, h, w = maps.shape
    base = AttentionResult(
        model="bench",
        patch_size=patch,
        layer=11,
        num_heads=heads,
        heads=list(range(heads)),
        weights="random",
        input_size=[h * patch, w * patch],
        resized_size=[h * patch, w * patch],
        image_size=[h * patch, w * patch],
        grid=[h, w],
        upsampled=True,
        precision="fp32",
        precision_requested="fp32",
        dtype="float32",
        arrays={MAPS.name: up},
        outputs=METHODS[DEFAULT_METHOD].outputs,
    )

    def body(fmt: str, dtype: str, upsampled: bool = True) -> bytes:
        result = replace(base, format=fmt, dtype=dtype, upsampled=upsampled, arrays={MAPS.name: up if upsampled else maps})
        return encode_attention(result)[0]

    cases: dict[str, Callable[[], bytes]] = {
        "json.dumps(tolist()) [seed-style]": lambda: json.dumps({**base.metadata(), "attention": up.tolist()}).encode(),
        "orjson, upsampled float32 [default]": lambda: body("json", "float32"),
        "orjson, upsampled dtype=float16": lambda: body("json", "float16"),
        "orjson, upsample=false": lambda: body("json", "float32", upsampled=False),
        "npy, upsampled float32": lambda: body("npy", "float32"),
        "npz, upsampled float16": lambda: body("npz", "float16"),
        "npz, upsample=false float16": lambda: body("npz", "float16", upsampled=False),
    }
    rows = []
    for name, fn in cases.items():
        size = len(fn())
        rows.append({"format": name, "seconds": min(timed(fn, repeats)), "mb": size / 1e6})
    return rows


# ----------------------------------------------------------------------------- served latency
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_served(args: argparse.Namespace, weights: Path, image: bytes, store: Path) -> dict:
    """p50/p95 of the same request through a real TorchServe and in-process (the handler with TorchServe's Context, no HTTP)."""
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
    return {
        "served_p50": percentile(served, 50),
        "served_p95": percentile(served, 95),
        "inprocess_p50": percentile(in_process, 50),
        "inprocess_p95": percentile(in_process, 95),
        "encode_s": encode,
        "requests": args.requests,
        "response_mb": len(reply.content) / 1e6,
    }


# ----------------------------------------------------------------------------- engines
def v2_request(image: bytes) -> bytes:
    """One KServe v2 JSON request for ``image`` with default options: what both engines are sent."""
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor], "parameters": {}}).encode()


def engine_figures(url: str, body: bytes, requests_n: int) -> dict:
    """p50/p95 of ``requests_n`` sequential POSTs (after one warm-up), and images/s with ENGINE_CONCURRENCY in flight."""
    headers = {"Content-Type": "application/json"}

    def post(session: requests.Session) -> float:
        start = time.perf_counter()
        session.post(url, data=body, headers=headers, timeout=600).raise_for_status()
        return time.perf_counter() - start

    with requests.Session() as session:
        post(session)  # warm-up
        sequential = [post(session) for _ in range(requests_n)]
    start = time.perf_counter()
    with ThreadPoolExecutor(ENGINE_CONCURRENCY) as pool:
        list(pool.map(lambda _: post(requests.Session()), range(requests_n)))
    rate = requests_n / (time.perf_counter() - start)
    return {"p50": percentile(sequential, 50), "p95": percentile(sequential, 95), "images_per_s": rate}


def bench_engines(args: argparse.Namespace, store: Path, image: bytes, workdir: Path) -> list[dict]:
    """The same .mar and the same v2 requests through TorchServe and through KServe's model server."""
    name = args.model
    body = v2_request(image)
    rows = []
    with private_torchserve(store, name) as server:
        url = f"{server.props['inference_address']}/v2/models/{name}/infer"
        rows.append({"engine": "TorchServe 0.12.0", **engine_figures(url, body, args.requests)})
    pid_file = workdir / "kserve.pid"
    url = serve_kserve.start(name, free_ports(1)[0], store, pid_file=pid_file)
    try:
        rows.append({"engine": "KServe model server (kserve_engine)", **engine_figures(url, body, args.requests)})
    finally:
        background.stop(pid_file)
    return rows


def engines_report(rows: list[dict], args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"## Engines: the same .mar, the same KServe v2 JSON request (480x480 JPEG, default options), {args.requests} requests",
        "",
        f"| engine | p50 s (sequential) | p95 s | images/s ({ENGINE_CONCURRENCY} in flight) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['engine']} | {r['p50']:.3f} | {r['p95']:.3f} | {r['images_per_s']:.2f} |" for r in rows]
    if len(rows) == 2:
        lines += ["", f"KServe p50 / TorchServe p50: {rows[1]['p50'] / rows[0]['p50']:.2f}"]
    return lines


# ----------------------------------------------------------------------------- throughput
THROUGHPUT_CONFIGS = ((1, 1), (4, 1), (1, 2), (4, 2))  # (TorchServe batchSize, workers)
CONCURRENCY = (1, 4, 8)


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


def bench_throughput(args: argparse.Namespace, mar: Path, image: bytes, workdir: Path) -> list[dict]:
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
                report = run_load(server.url(name), [probe], args.throughput_requests, concurrency, 600)
                rows.append(
                    {
                        "batch_size": batch_size,
                        "workers": workers,
                        "concurrency": concurrency,
                        "images_per_s": report.statuses[200] / report.seconds,
                        "p50": percentile(report.latencies, 50),
                        "errors": report.sent - report.statuses[200],
                    }
                )
    return rows


# ----------------------------------------------------------------------------- report
@dataclass
class Machine:
    """What the forward passes ran on, and what this run measured of it."""

    device: torch.device
    description: str  # precision.describe_device: CPU model, flags, ATen capability, threads; or the GPU
    speeds: dict[str, Speed]  # bf16/fp16: natively fast or not, and why
    peaks: dict[str, float]  # matmul GFLOP/s; only for fp32 and the precisions that are native
    plan: PrecisionPlan  # what precision=auto runs here (for the benchmark's random-weight model)

    def header(self, title: str) -> list[str]:
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        peaks = [f"{p} {self.peaks[p]:.0f} GFLOP/s" for p in AUTOCAST_DTYPES if p in self.peaks]
        peaks += [f"{p} not measured ({s.reason})" for p, s in self.speeds.items() if not s.fast]
        return [
            f"# {title}",
            "",
            f"- Machine: {cpu_line()}",
            f"- Forward passes on: {'the CPU above' if self.device.type == 'cpu' else self.description}",
            f"- torch {torch.__version__}; GPU: {', '.join(gpus) or 'none'}",
            "- Reduced precisions: " + "; ".join(f"{p}: {s.reason}" for p, s in self.speeds.items()),
            f"- precision=auto runs {self.plan.auto} here ({self.plan.reasons.get('auto', '')})",
            f"- Matmul peak measured in this run: {', '.join(peaks)}.",
        ]


def cpu_line() -> str:
    """The host CPU, whatever the forward passes ran on."""
    return describe_device(torch.device("cpu"))


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{'meets' if ok else 'MISSES'} target {'>=' if higher_is_better else '<='} {target:g}"


def reduced_targets(by: dict, machine: Machine) -> list[str]:
    """bf16 against the seed and against its own peak, or "n/a here" where bf16 is not native."""
    seed, bf = by.get(("seed", (480, 480))), by.get(("bf16", (480, 480)))
    speed = machine.speeds.get("bf16")
    if speed is not None and not speed.fast:
        why = f"n/a here: bf16 {speed.reason}"
        return [f"- bf16 path vs seed at 480x480: {why}", f"- bf16 path at 480x480, fraction of the bf16 matmul peak: {why}"]
    lines = []
    if seed and bf and not seed.skipped and not bf.skipped:
        ratio = min(seed.times) / min(bf.times)
        lines.append(f"- bf16 path vs seed at 480x480: {ratio:.1f}x ({verdict(ratio, TARGETS['bf16_vs_seed'])})")
    if bf and not bf.skipped:
        frac = bf.gflops / machine.peaks["bf16"]
        lines.append(f"- bf16 path at 480x480: {100 * frac:.0f}% of the bf16 matmul peak ({verdict(frac, TARGETS['bf16_peak_fraction'])})")
    return lines


def gpu_target(by: dict, machine: Machine, args: argparse.Namespace) -> str:
    """vit_small/8 at 1080x1920 in bf16/fp16 on a GPU, or why that cannot be measured here."""
    name = f"- vit_small/8 at 1080x1920 on a GPU (bf16/fp16) < {TARGETS['gpu_1080x1920_s']:g} s"
    if machine.device.type != "cuda":
        return f"{name}: n/a here (forward passes ran on the CPU; no GPU in this run)"
    if args.model != DEFAULT_MODEL:
        return f"{name}: n/a here (this run measured {args.model})"
    done = [by[(p, (1080, 1920))] for p in ("bf16", "fp16") if (p, (1080, 1920)) in by and not by[(p, (1080, 1920))].skipped]
    if not done:
        return f"{name}: n/a here (1080x1920 not measured in bf16/fp16)"
    best = min(min(r.times) for r in done)
    return f"{name}: {best:.3f} s ({verdict(best, TARGETS['gpu_1080x1920_s'], False)})"


def report(
    results: list[Result],
    machine: Machine,
    encodings: list[dict],
    served: dict | None,
    throughput: list[dict],
    args,
    methods: Sequence[str] = (),
) -> str:
    by = {(r.path, r.size): r for r in results}
    memory = "peak GPU MB" if machine.device.type == "cuda" else "peak RSS MB"
    lines = machine.header(f"Benchmark: {args.model}")
    if results:
        lines += [
            "",
            "## Forward pass (one image, last layer)",
            "",
            f"| size | tokens | path | min s | median s | GFLOP/s | % of peak | {memory} | speed-up vs seed | maps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for size in args.sizes if results else []:
        seed = by.get(("seed", size))
        for path in PATHS:
            r = by.get((path, size))
            if r is None:
                continue
            name = f"{size[0]}x{size[1]}"
            if r.skipped:
                lines.append(f"| {name} | {r.tokens} | {path} | {r.skipped}: skipped | | | | | | |")
                continue
            best, median = min(r.times), statistics.median(r.times)
            peak = machine.peaks[path if path in machine.peaks else "fp32"]  # the seed runs fp32
            speedup = ""
            if seed and not seed.skipped and path != "seed":
                speedup = f"{min(seed.times) / best:.1f}x"
            lines.append(
                f"| {name} | {r.tokens} | {path} | {best:.3f} | {median:.3f} | {r.gflops:.0f} | {100 * r.gflops / peak:.0f}% "
                f"| {r.peak_rss_mb:.0f} (loaded {r.loaded_rss_mb:.0f}) | {speedup} | {r.agreement} |"
            )
    lines += ["", "## Targets", ""]
    seed480, fp480 = by.get(("seed", (480, 480))), by.get(("fp32", (480, 480)))
    if seed480 and fp480 and not seed480.skipped:
        ratio = min(seed480.times) / min(fp480.times)
        lines.append(f"- fp32 path vs seed at 480x480: {ratio:.1f}x ({verdict(ratio, TARGETS['fp32_vs_seed_480'])})")
    lines += reduced_targets(by, machine)
    big = by.get(("fp32", (1080, 1920)))
    if big and not big.skipped:
        lines.append(f"- 1080x1920 fp32 {memory}: {big.peak_rss_mb:.0f} MB ({verdict(big.peak_rss_mb / 1024, 4.0, False)} GB)")
    lines.append(gpu_target(by, machine, args))
    if served:
        frac = served["encode_s"] / served["served_p50"]
        ratio = served["served_p50"] / served["inprocess_p50"]
        lines.append(
            f"- response encoding: {100 * frac:.1f}% of the served request time "
            f"({verdict(frac, TARGETS['encode_fraction_of_served'], False)})"
        )
        lines.append(f"- served p50 / in-process p50: {ratio:.2f} ({verdict(ratio, TARGETS['served_over_inprocess'], False)})")
    lines += list(methods)
    if encodings:
        heads = get_variant(args.model, args.patch).num_heads
        lines += ["", f"## Response encoding (480x480 maps, {heads} heads)", "", "| format | seconds | MB |", "| --- | --- | --- |"]
        lines += [f"| {e['format']} | {e['seconds']:.3f} | {e['mb']:.2f} |" for e in encodings]
    if served:
        lines += [
            "",
            f"## Served latency (480x480 JPEG, {served['requests']} sequential requests, default options)",
            "",
            "| | p50 s | p95 s |",
            "| --- | --- | --- |",
            f"| TorchServe (curl-like PUT) | {served['served_p50']:.3f} | {served['served_p95']:.3f} |",
            f"| in-process (same pipeline, no HTTP) | {served['inprocess_p50']:.3f} | {served['inprocess_p95']:.3f} |",
            "",
            f"Response {served['response_mb']:.1f} MB; encoding it takes {served['encode_s']:.3f} s.",
        ]
    if throughput:
        lines += [
            "",
            f"## Throughput through TorchServe (224x224, upsample=false, {args.throughput_requests} requests per cell)",
            "",
            "| batchSize | workers | concurrency | images/s | p50 s | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {t['batch_size']} | {t['workers']} | {t['concurrency']} | {t['images_per_s']:.2f} | {t['p50']:.3f} | {t['errors']} |"
            for t in throughput
        ]
    return "\n".join(lines) + "\n"


def plot(results: list[Result], peaks: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_time, ax_rate = fig.subplots(1, 2)
    for path, colour in zip(PATHS, ("tab:red", "tab:blue", "tab:green", "tab:purple"), strict=True):
        done = [r for r in results if r.path == path and not r.skipped]
        if not done:
            continue
        ax_time.plot([r.tokens for r in done], [min(r.times) for r in done], "o-", color=colour, label=path)
        ax_rate.plot([r.tokens for r in done], [r.gflops for r in done], "o-", color=colour, label=path)
    for dtype, style in zip(peaks, ("--", ":", "-."), strict=False):  # at most three peaks
        ax_rate.axhline(peaks[dtype], color="gray", linestyle=style, label=f"{dtype} matmul peak")
    ax_time.set(xscale="log", yscale="log", xlabel="patch tokens", ylabel="seconds (min)", title="forward time")
    ax_rate.set(xscale="log", xlabel="patch tokens", ylabel="GFLOP/s", title="achieved throughput")
    ax_time.legend()
    ax_rate.legend(fontsize=8)
    fig.savefig(out, dpi=100)


def probe_machine(device: torch.device, weights: Path, variant: Variant) -> Machine:
    """Describe the device, decide which reduced precisions are native (as the server does), and
    measure the matmul peak of fp32 and of those precisions only (an emulated peak is ~0)."""
    logger.info("probing %s: precisions, matmul peaks ...", device)
    speeds = {p: probe_speed(device, p) for p in AUTOCAST_DTYPES if p != FP32}
    model = build_model(variant, filter_state_dict(read_checkpoint(weights))).to(device)
    plan = plan_precisions(device, lambda p: map_agreement(model, device, p), speed=lambda _device, p: speeds[p])
    peaks = {p: matmul_peak(device, dtype) for p, dtype in AUTOCAST_DTYPES.items() if p == FP32 or speeds[p].fast}
    return Machine(device, describe_device(device), speeds, peaks, plan)


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_family_row(text: str) -> tuple[str, tuple[int, int]]:
    """'dinov2_vits14_reg:518x518' -> ('dinov2_vits14_reg', (518, 518))."""
    name, _, size = text.partition(":")
    get_variant(name)  # a clear error for an unknown model
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
    parser.add_argument("--name", default="bench", help="results file stem: <out>/<name>.md and .png")
    parser.add_argument("--throughput-requests", type=int, default=24, help="requests per throughput cell")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS + METHOD_PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=parse_size, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--maps", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.requests, args.throughput_requests = list(QUICK_SIZES), 5, 8
        args.method_sizes = [(480, 480)]
    variant = get_variant(args.model, args.patch)  # from here on: the hub name and its patch size
    args.model, args.patch = variant.name, variant.patch_size
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    variant = get_variant(args.model, args.patch)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dino-bench-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        weights = workdir / "bench_random.pth"
        torch.save(build_model(variant, None).state_dict(), weights)
        machine = probe_machine(torch.device(args.device), weights, variant)
        results: list[Result] = []
        encodings, served, throughput = [], None, []
        if "forward" in args.sections:
            logger.info("forward passes (one process each) ...")
            for size in args.sizes:
                for path in args.paths:
                    results.append(measure(path, size, args, weights, workdir, results, machine.speeds))
            compare_maps(results, workdir)
        methods: list[Result] = []
        methods_lines: list[str] = []
        families_lines: list[str] = []
        if "families" in args.sections:
            logger.info("families: DINOv2 with registers, DINOv3, fast vs eager N x N (one process each) ...")
            families_lines = bench_families(args, workdir)
        if "methods" in args.sections:
            logger.info("methods: layers=all, rollout, naive rollout (one process each) ...")
            for size in args.method_sizes:
                for path in METHOD_PATHS:
                    methods.append(measure(path, size, args, weights, workdir, methods, machine.speeds))
            methods_lines = methods_report(methods, workdir)
        if "encoding" in args.sections:
            logger.info("encodings ...")
            maps480 = workdir / "fp32_480x480.npy"
            grid = np.load(maps480) if maps480.exists() else np.random.default_rng(0).random((variant.num_heads, 60, 60), dtype=np.float32)
            encodings = bench_encodings(np.ascontiguousarray(grid, dtype=np.float32), args.patch, args.repeats)
        image = (REPO / "data" / "samples" / "astronaut.jpg").read_bytes()  # 512x512 -> 480x480
        engines_lines: list[str] = []
        if {"served", "throughput", "engines"} & set(args.sections):
            store = workdir / "store"
            if archive.main(["--model", args.model, "--weights", str(weights), "--export-path", str(store)]):
                raise RuntimeError("archiving the benchmark model failed")
        if "served" in args.sections:
            logger.info("served latency through TorchServe (%d requests) ...", args.requests)
            served = bench_served(args, weights, image, store)
        if "throughput" in args.sections:
            logger.info("throughput: batch size x workers x concurrency ...")
            throughput = bench_throughput(args, store / f"{variant.name}.mar", image, workdir)
        if "engines" in args.sections:
            logger.info("engines: the same v2 requests through TorchServe and KServe's model server ...")
            engines_lines = engines_report(bench_engines(args, store, image, workdir), args)
    text = report(results, machine, encodings, served, throughput, args, [*methods_lines, *families_lines, *engines_lines])
    (args.out / f"{args.name}.md").write_text(text)
    if results:
        plot(results, machine.peaks, args.out / f"{args.name}.png")
    print(text)
    logger.info("wrote %s", args.out / f"{args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
