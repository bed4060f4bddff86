"""The compile section: ``torch.compile`` of the served forward pass (last-layer [CLS] attention),
evaluated net of its costs against eager, one process per precision and mode (compiled code and its
caches stay in that process):

* ``compile_s``: the first call, compilation included (what a warm-up at load would cost);
* ``new_size_s``: the first call at each new image size (``dynamic=True``: a recompile shows here
  and in ``graphs``, the number of graphs compiled in all);
* ``eager_s`` / ``compiled_s``: the median request once warm, at the first size, side by side;
* ``max_diff``: the largest difference of the maps from eager's.

    python -m bench.compiled --device cpu --precision bf16 [--freezing]   # one JSON line
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch._dynamo.utils  # the counters of compiled graphs
import torch._inductor.config

from bench.section import Run
from bench.tables import Column, Skipped, Table, Target, size_name
from bench.timing import Machine, native_kernels, timed
from scripts import REPO
from vitscope.model.checkpoint import build_model, filter_state_dict, read_checkpoint
from vitscope.model.variants import get_variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import AUTOCAST_DTYPES, FP32, autocast

logger = logging.getLogger("bench")

SIZES: tuple[tuple[int, int], ...] = ((480, 480), (448, 640), (512, 384))  # the first is timed; the others are new sizes
COMPILE_MIN_GAIN = 1.1  # torch.compile must make a request this much faster to be worth its compile time and risks


@dataclass(frozen=True)
class CompileFigures:
    precision: str
    mode: str  # "default" or "freezing" (inductor folds the weights into the graph: CPU only)
    compile_s: float = 0.0
    new_size_s: tuple[float, ...] = ()
    graphs: int = 0
    eager_s: float = 0.0
    compiled_s: float = 0.0
    max_diff: float = 0.0
    failed: str = ""  # why compiling failed, if it did

    @property
    def gain(self) -> float:
        return self.eager_s / self.compiled_s if self.compiled_s else 0.0

    @property
    def break_even_requests(self) -> float:
        """Requests a compiled worker must serve before the compile time is paid back (inf if never)."""
        saved = self.eager_s - self.compiled_s
        return self.compile_s / saved if saved > 0 else float("inf")


def evaluate(model: VisionTransformer, device: torch.device, precision: str, mode: str, repeats: int) -> CompileFigures:
    """Eager vs compiled on ``SIZES`` (see the module docstring)."""
    torch._inductor.config.freezing = mode == "freezing"
    inputs = [torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device) for h, w in SIZES]

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.get_cls_attention_layers(x, [-1])  # (1, 1, heads, N)

    compiled_forward = torch.compile(forward, dynamic=True)

    def call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            out = fn(x).float().cpu()  # to the host: waits for a GPU too
        return out

    reference = call(forward, inputs[0])
    start = time.perf_counter()
    try:
        first = call(compiled_forward, inputs[0])
    except Exception as e:  # inductor raises many kinds; the report names it
        return CompileFigures(precision, mode, failed=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    compile_s = time.perf_counter() - start
    new_sizes = tuple(timed(partial(call, compiled_forward, x), 1, warmup=False)[0] for x in inputs[1:])
    eager, compiled = [], []
    for _ in range(repeats):  # side by side, alternating
        eager += timed(partial(call, forward, inputs[0]), 1, warmup=False)
        compiled += timed(partial(call, compiled_forward, inputs[0]), 1, warmup=False)
    return CompileFigures(
        precision,
        mode,
        compile_s,
        new_sizes,
        int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
        statistics.median(eager),
        statistics.median(compiled),
        float((first - reference).abs().max()),
    )


def bench_compile(args: argparse.Namespace, weights: Path, precisions: list[str]) -> list[CompileFigures]:
    """``evaluate`` for each precision (and, on a CPU, with freezing too), each in its own process."""
    modes = ("default", "freezing") if args.device == "cpu" else ("default",)
    rows = []
    for precision in precisions:
        for mode in modes:
            cmd = [sys.executable, "-m", "bench.compiled", "--model", args.model, "--weights", str(weights)]
            cmd += ["--device", args.device, "--precision", precision, "--mode", mode, "--repeats", str(max(args.repeats, 3))]
            logger.info("  torch.compile %s %s ...", precision, mode)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                tail = proc.stderr.strip().splitlines()[-1:] or [str(proc.returncode)]
                rows.append(CompileFigures(precision, mode, failed=tail[0][:160]))
                continue
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(CompileFigures(**{**data, "new_size_s": tuple(data["new_size_s"])}))
    return rows


def compile_table(rows: Sequence[CompileFigures]) -> Table:
    sizes = ", ".join(size_name(s) for s in SIZES[1:])
    table = Table(
        f"torch.compile(dynamic=True) of the last-layer forward pass vs eager ({size_name(SIZES[0])}, then new sizes {sizes})",
        (
            Column("precision"),
            Column("mode"),
            Column("compile s (first call)"),
            Column("first call at a new size, s"),
            Column("graphs"),
            Column("eager s", "{:.3f}"),
            Column("compiled s", "{:.3f}"),
            Column("gain", "{:.2f}x"),
            Column("requests to pay back"),
            Column("max |diff|", "{:.1e}"),
        ),
    )
    for r in rows:
        if r.failed:
            table.add(r.precision, r.mode, Skipped(f"failed ({r.failed})"), *[None] * 7)
            continue
        payback = f"{r.break_even_requests:.0f}" if r.break_even_requests != float("inf") else "never"
        new_sizes = ", ".join(f"{s:.1f}" for s in r.new_size_s)
        table.add(r.precision, r.mode, f"{r.compile_s:.1f}", new_sizes, r.graphs, r.eager_s, r.compiled_s, r.gain, payback, r.max_diff)
    table.notes.append(compile_verdict(rows))
    return table


def compile_verdict(rows: Sequence[CompileFigures]) -> str:
    """Adopt torch.compile only where it wins net of its costs: faster per request, and no recompile per image size."""
    worth = [r for r in rows if not r.failed and r.gain >= COMPILE_MIN_GAIN and r.graphs <= 1]
    if worth:
        return "Verdict: worth serving compiled here: " + ", ".join(f"{r.precision} {r.mode} {r.gain:.2f}x" for r in worth) + "."
    reasons = []
    ran = [r for r in rows if not r.failed]
    if ran and max(r.graphs for r in ran) > 1:
        reasons.append(f"every new image size compiles again ({max(r.graphs for r in ran)} graphs for {len(SIZES)} sizes)")
    if ran and max(r.gain for r in ran) < COMPILE_MIN_GAIN:
        reasons.append(f"the best gain per request is {max(r.gain for r in ran):.2f}x (< {COMPILE_MIN_GAIN}x)")
    return "Verdict: not adopted here: " + ("; ".join(reasons) or "compiling failed") + "."


class Compiled:
    key = "compile"
    title = "torch.compile vs eager, net of compile and recompile time (one process each)"

    def measure(self, run: Run) -> list[CompileFigures]:
        logger.info("torch.compile vs eager (one process each) ...")
        return bench_compile(run.args, run.weights, run.native)

    def tables(self, figures: list[CompileFigures], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [compile_table(figures)]

    def targets(self, figures: list[CompileFigures], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Compiled()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dino_vits8")
    parser.add_argument("--weights", type=Path, default=None, help="a checkpoint (default: random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=list(AUTOCAST_DTYPES), default=FP32)
    parser.add_argument("--mode", choices=("default", "freezing"), default="default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variant = get_variant(args.model)
    device = torch.device(args.device)
    torch.manual_seed(0)
    state = filter_state_dict(read_checkpoint(args.weights)) if args.weights else None
    model = build_model(variant, state).to(device).eval()
    model.use_kernels(native_kernels(device, variant, [args.precision]))
    print(json.dumps(asdict(evaluate(model, device, args.precision, args.mode, args.repeats))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
