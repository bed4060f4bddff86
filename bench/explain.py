"""The explain section (fp32, one image): what explaining a decision costs, and the memory it holds.

* **Cost**, side by side in one process (round-robin, ``bench/towers.round_robin``), each a served
  request through the service (decode, resize, forward, maps): a ViT-B/16 classifier's last-layer
  attention request against ``legrad``, ``chefer`` and ``gradcam`` with ``target=top``, at 224x224
  and 480x480; and a CLIP ViT-B/16 with its text tower, ``legrad`` and ``chefer`` for one text prompt
  against eight (the image's forward pass is shared by the prompts).
* **Memory** (on the CPU: resident memory), each configuration in a process of its own (its peak RSS is its own): ``legrad`` and
  ``chefer`` on the ViT-B/16 classifier at 512x512, 1024x1024 and 2048x2048 (1,024 to 16,384 patch
  tokens), ours against the naive form (every block's softmax attention explicit and kept for
  autograd: ``testkit/references.py``, what the tests pin ours to). The naive form is skipped, with
  its estimate, where its N x N tensors alone would pass ``--explain-naive-budget-gb``.

Every model has random weights built from its configuration: a speed and memory comparison.

    python -m bench --sections explain --name explain      # writes bench/results/explain.{md,json}
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.section import Run
from bench.tables import Column, Skipped, Table, Target, size_name
from bench.timing import Machine
from bench.towers import VIT_B16, Shape, clip_image, round_robin, vit_classifier
from vitscope.errors import RequestError
from vitscope.model.checkpoint import build_model
from vitscope.model.tokenizer import OPENCLIP_BPE, ClipTokenizer
from vitscope.model.variants import TextVariant, Variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import PrecisionPlan
from vitscope.predictions import Predictor
from vitscope.schema import ImageRequest
from vitscope.service import AttentionService, ServiceConfig

logger = logging.getLogger("bench")

COST_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 480))
MEMORY_SIZES: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024), (2048, 2048))
LAST_LAYER = "last_layer"  # the plain attention request every method is compared to
METHODS = ("legrad", "chefer", "gradcam")
MEMORY_METHODS = ("legrad", "chefer")  # gradcam reads tokens, not attention maps: no N x N form to compare
OURS, NAIVE = "ours", "naive"
PROMPTS = (
    "a photo of a cat",
    "a red car",
    "a dog on a sofa",
    "a bicycle",
    "a tree in winter",
    "a cup of coffee",
    "an astronaut",
    "a city street at night",
)
CLIP_TEXT = TextVariant(vocab_size=49408, context_length=77, embed_dim=512, depth=12, num_heads=8, proj_dim=512, act="quick_gelu")
TARGETS = {"legrad": 2.5, "chefer": 4.0, "prompts": 1.5, "linear": 1.5}  # x last-layer; 8 prompts x 1; growth x tokens' growth


# ----------------------------------------------------------------------------- the models and the requests
def clip_with_text(s: Shape, text: TextVariant = CLIP_TEXT) -> Variant:
    return replace(clip_image(s), name="clip_b16", text=text)


def service_of(variant: Variant, device: torch.device) -> AttentionService:
    """A served model of ``variant`` on ``device``, random weights (seeded), exact fp32, its text tower's
    tokenizer open_clip's BPE file (a test dependency: nothing downloaded)."""
    torch.manual_seed(0)
    model = build_model(variant, None).eval().to(device)
    tokenizer = None
    if variant.text is not None:
        import open_clip

        tokenizer = ClipTokenizer.from_bpe_file(Path(open_clip.__file__).parent / OPENCLIP_BPE, variant.text.context_length)
    config = ServiceConfig.from_mapping({"model": variant.name, "weights": "bench", "max_tokens": 1 << 20, "max_pixels": 1 << 26})
    return AttentionService(model, variant, config, precisions=PrecisionPlan.fp32_only(), predictor=Predictor(model, (), tokenizer))


def jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    """A random image of exactly ``size`` (H, W), so that the request's ``size=`` resizes nothing."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def request(service: AttentionService, image: bytes, options: dict[str, object]) -> None:
    """One served request; a request error is a failed benchmark, not a figure."""
    (result,) = service.explain([ImageRequest(image, options)])
    if isinstance(result, RequestError):
        raise RuntimeError(f"the benchmark request {options} failed: {result}")


def options_of(path: str, size: tuple[int, int], prompts: int = 0) -> dict[str, object]:
    options: dict[str, object] = {"size": f"{size[0]}x{size[1]}"}
    if path != LAST_LAYER:
        options["method"] = path
    if prompts:
        options["target"] = json.dumps([f"text:{p}" for p in PROMPTS[:prompts]])
    return options


# ----------------------------------------------------------------------------- cost
@dataclass
class CostRow:
    """One model at one size: each configuration's seconds, one per round."""

    model: str
    size: tuple[int, int]
    tokens: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def best(self, key: str) -> float:
        return min(self.times[key])

    def over(self, key: str, base: str) -> float:
        return self.best(key) / self.best(base)


def prompt_key(method: str, prompts: int) -> str:
    return f"{method}:{prompts}"


def bench_cost(shape: Shape, text: TextVariant, sizes: Sequence[tuple[int, int]], rounds: int, device: torch.device) -> list[CostRow]:
    """The classifier's last-layer request vs each method, then CLIP's one prompt vs eight, timed round-robin."""
    rows: list[CostRow] = []
    classifier, clip = service_of(vit_classifier(shape), device), service_of(clip_with_text(shape, text), device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for size in sizes:
        image, tokens = jpeg(size), (size[0] // shape.patch_size) * (size[1] // shape.patch_size)
        calls: dict[str, Callable[[], object]] = {
            p: partial(request, classifier, image, options_of(p, size)) for p in (LAST_LAYER, *METHODS)
        }
        logger.info("  explain cost %s (%s): %d configurations x %d rounds", shape.name, size_name(size), len(calls), rounds)
        rows.append(CostRow(f"ViT classifier ({shape.name})", size, tokens, round_robin(calls, rounds, sync)))
        calls = {
            prompt_key(m, n): partial(request, clip, image, options_of(m, size, n)) for m in ("legrad", "chefer") for n in (1, len(PROMPTS))
        }
        rows.append(CostRow(f"CLIP with its text tower ({shape.name})", size, tokens, round_robin(calls, rounds, sync)))
    return rows


# ----------------------------------------------------------------------------- memory (a process each)
@dataclass
class MemoryRow:
    method: str
    form: str  # OURS or NAIVE
    size: tuple[int, int]
    tokens: int
    loaded_rss_mb: float = 0.0  # the worker's peak RSS with the model built and the input made
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    skipped: str = ""

    @property
    def held_mb(self) -> float:
        """What the explanation itself held at its peak: peak RSS over the loaded RSS."""
        return self.peak_rss_mb - self.loaded_rss_mb


def naive_estimate_gb(method: str, shape: Shape, tokens: int) -> float:
    """The naive form's N x N tensors alone: every block's attention (heads, N, N) in fp32 kept for
    autograd; chefer also gets every block's gradient of it at once, legrad one block's at a time."""
    n = tokens + 1  # the class token
    per_block = shape.num_heads * n * n * 4 / 2**30
    return per_block * (2 * shape.depth if method == "chefer" else shape.depth + 2)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


@torch.no_grad()  # (not torch.set_grad_enabled(False): run in process, --in-process, it would outlive the call)
def memory_worker(method: str, form: str, size: tuple[int, int], shape: Shape) -> dict[str, float]:
    """Run one explanation (target: class 0) in this process; its RSS before and at its peak, and its seconds."""
    variant = vit_classifier(shape)
    if form == OURS:
        service = service_of(variant, torch.device("cpu"))
        image = jpeg(size)
        run: Callable[[], object] = partial(request, service, image, {**options_of(method, size), "target": "0"})
    else:
        from testkit.references import chefer_reference, legrad_reference

        torch.manual_seed(0)
        model = build_model(variant, None).eval()
        assert isinstance(model, VisionTransformer)
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        target = ("class", 0)
        run = (
            partial(legrad_reference, model, x, target, model.depth - 2)
            if method == "legrad"
            else partial(chefer_reference, model, x, target)
        )
    loaded = max_rss_mb()
    start = time.perf_counter()
    run()
    return {"loaded_rss_mb": loaded, "peak_rss_mb": max_rss_mb(), "seconds": time.perf_counter() - start}


def measured(row: MemoryRow, figures: dict[str, float]) -> MemoryRow:
    """``row`` with a worker's figures."""
    return replace(row, loaded_rss_mb=figures["loaded_rss_mb"], peak_rss_mb=figures["peak_rss_mb"], seconds=figures["seconds"])


def measure_memory(row: MemoryRow, shape: Shape) -> MemoryRow:
    command = [
        sys.executable,
        "-m",
        "bench.explain",
        "--worker",
        row.method,
        row.form,
        f"{row.size[0]}x{row.size[1]}",
        json.dumps(asdict(shape)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory worker {row.method}/{row.form} at {size_name(row.size)} failed:\n{done.stderr[-2000:]}")
    return measured(row, json.loads(done.stdout.strip().splitlines()[-1]))


def bench_memory(shape: Shape, sizes: Sequence[tuple[int, int]], naive_budget_gb: float, in_process: bool = False) -> list[MemoryRow]:
    """Each method, size and form in a worker process (``in_process``: in this one, faster, but its peak
    RSS is then the run's so far, as ``--in-process`` says)."""
    rows: list[MemoryRow] = []
    for method in MEMORY_METHODS:
        for size in sizes:
            tokens = (size[0] // shape.patch_size) * (size[1] // shape.patch_size)
            for form in (OURS, NAIVE):
                row = MemoryRow(method, form, size, tokens)
                estimate = naive_estimate_gb(method, shape, tokens)
                if form == NAIVE and estimate > naive_budget_gb:
                    rows.append(replace(row, skipped=f"its N x N tensors alone are {estimate:.1f} GB (over {naive_budget_gb:g} GB)"))
                    continue
                logger.info("  explain memory %s %s at %s ...", method, form, size_name(size))
                if in_process:
                    rows.append(measured(row, memory_worker(method, form, size, shape)))
                else:
                    rows.append(measure_memory(row, shape))
    return rows


# ----------------------------------------------------------------------------- tables and targets
@dataclass
class Figures:
    cost: list[CostRow]
    memory: list[MemoryRow]
    shape: str


def cost_tables(rows: Sequence[CostRow], machine: Machine) -> list[Table]:
    methods = Table(
        "Explaining a decision (fp32, one image, a served request): legrad, chefer, gradcam (target=top) vs a last-layer attention request",
        (
            Column("model"),
            Column("size"),
            Column("tokens"),
            Column("last-layer s", "{:.3f}"),
            *(Column(f"{m} s", "{:.3f}") for m in METHODS),
            *(Column(f"{m} x last-layer", "{:.2f}x") for m in METHODS),
        ),
    )
    prompts = Table(
        f"Text prompts (fp32, one image): {len(PROMPTS)} prompts in one request vs one, CLIP ViT-B/16 with its text tower",
        (
            Column("model"),
            Column("size"),
            Column("method"),
            Column("1 prompt s", "{:.3f}"),
            Column(f"{len(PROMPTS)} prompts s", "{:.3f}"),
            Column(f"{len(PROMPTS)} x 1", "{:.2f}x"),
        ),
    )
    for r in rows:
        if LAST_LAYER in r.times:
            cells = [r.best(m) for m in METHODS] + [r.over(m, LAST_LAYER) for m in METHODS]
            methods.add(r.model, size_name(r.size), r.tokens, r.best(LAST_LAYER), *cells)
        else:
            for m in ("legrad", "chefer"):
                one, many = prompt_key(m, 1), prompt_key(m, len(PROMPTS))
                prompts.add(r.model, size_name(r.size), m, r.best(one), r.best(many), r.over(many, one))
    rounds = min((len(t) for r in rows for t in r.times.values()), default=0)
    methods.notes += [
        f"Best of {rounds} rounds, round-robin in one process after one untimed call each: each a request through the service "
        "(JPEG decode, resize, the forward pass, the maps, the predictions). The last-layer request is `method=attention` at "
        "the last block. Random weights: a speed comparison.",
        f"Measured on: {machine.description}.",
    ]
    prompts.notes += [
        "The same image and service; `target` a JSON list of the prompts. The text embeddings are cached by the model's "
        "predictor as when served (the untimed first call fills the cache): the figure is the image side's cost.",
    ]
    return [methods, prompts]


def memory_table(rows: Sequence[MemoryRow], shape: str) -> Table:
    table = Table(
        f"Explanation memory ({shape} classifier, fp32, one image, target: a class): ours vs the naive N x N form, a process each",
        (
            Column("method"),
            Column("form"),
            Column("size"),
            Column("tokens"),
            Column("seconds", "{:.1f}"),
            Column("loaded RSS MB", "{:.0f}"),
            Column("peak RSS MB", "{:.0f}"),
            Column("held MB (peak - loaded)", "{:.0f}"),
        ),
    )
    for r in rows:
        lead = (r.method, r.form, size_name(r.size), r.tokens)
        if r.skipped:
            table.add(*lead, Skipped(r.skipped), None, None, None)
        else:
            table.add(*lead, r.seconds, r.loaded_rss_mb, r.peak_rss_mb, r.held_mb)
    table.notes.append(
        "ours: a served request (`size=HxW`, the map upsampled); naive: the reference the tests pin ours to "
        "(`testkit/references.py`: every block's softmax attention explicit and kept for autograd). Peak RSS is the "
        "process's maximum resident set (`getrusage`); loaded is the same with the model built and the input made."
    )
    return table


def targets_of(figures: Figures) -> list[Target]:
    targets: list[Target] = []
    for r in figures.cost:
        if LAST_LAYER in r.times:
            for m in ("legrad", "chefer"):
                targets.append(
                    Target(
                        f"{m} at {size_name(r.size)} ({r.model}), x a last-layer request",
                        r.over(m, LAST_LAYER),
                        TARGETS[m],
                        False,
                        "{:.2f}x",
                    )
                )
        else:
            many = prompt_key("legrad", len(PROMPTS))
            what = f"legrad, {len(PROMPTS)} text prompts x one, at {size_name(r.size)} ({r.model})"
            targets.append(Target(what, r.over(many, prompt_key("legrad", 1)), TARGETS["prompts"], False, "{:.2f}x"))
    ours = {(r.method, r.tokens): r for r in figures.memory if r.form == OURS and not r.skipped}
    for method in MEMORY_METHODS:
        sizes = sorted(t for m, t in ours if m == method)
        if len(sizes) >= 2:
            small, big = ours[(method, sizes[-2])], ours[(method, sizes[-1])]
            what = f"{method}: memory held from {small.tokens} to {big.tokens} tokens, over the tokens' growth (1: linear)"
            if small.held_mb > 0:
                growth = (big.held_mb / small.held_mb) / (big.tokens / small.tokens)
                targets.append(Target(what, growth, TARGETS["linear"], False, "{:.2f}x"))
            else:
                na = f"at {small.tokens} tokens the explanation held nothing above the loaded RSS (a run in one process: --in-process)"
                targets.append(Target(what, None, TARGETS["linear"], False, na=na))
    return targets


class Explain:
    key = "explain"
    title = "legrad/chefer/gradcam vs a last-layer request, 8 text prompts vs 1, and their memory vs the naive N x N form"

    def __init__(
        self,
        cost_sizes: Sequence[tuple[int, int]] = COST_SIZES,
        memory_sizes: Sequence[tuple[int, int]] = MEMORY_SIZES,
        shape: Shape = VIT_B16,
        text: TextVariant = CLIP_TEXT,
    ) -> None:
        self.cost_sizes, self.memory_sizes, self.shape, self.text = tuple(cost_sizes), tuple(memory_sizes), shape, text

    def measure(self, run: Run) -> Figures:
        # memory first: its workers need the RAM that this process's cost runs (large explanations) hold on to
        logger.info("explain: memory (a process each), then cost (round-robin in this process) ...")
        with torch.no_grad():
            memory = bench_memory(self.shape, self.memory_sizes, run.args.explain_naive_budget_gb, run.args.in_process)
            cost = bench_cost(self.shape, self.text, self.cost_sizes, run.args.repeats, torch.device(run.args.device))
        return Figures(cost, memory, self.shape.name)

    def tables(self, figures: Figures, args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [*cost_tables(figures.cost, machine), memory_table(figures.memory, figures.shape)]

    def targets(self, figures: Figures, args: argparse.Namespace, machine: Machine) -> list[Target]:
        return targets_of(figures)


SECTION = Explain()


def main(argv: list[str] | None = None) -> int:
    """The memory worker: ``python -m bench.explain --worker METHOD FORM HxW SHAPE_JSON`` prints one JSON line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "FORM", "SIZE", "SHAPE"), required=True)
    method, form, size, shape = parser.parse_args(argv).worker
    h, w = (int(v) for v in size.split("x"))
    print(json.dumps(memory_worker(method, form, (h, w), Shape(**json.loads(shape)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
