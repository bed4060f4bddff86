"""How faithful is each method's map, on your images: deletion and insertion AUCs ranked with 95%
bootstrap intervals, a random order beside them, and the parameter-randomisation sanity check.

    python -m bench.faithfulness --images DIR --model NAME [--weights PATH|random] \\
        --methods attention,rollout,legrad,chefer,gradcam[,ig][,edge]        # in process
    python -m bench.faithfulness --images DIR --model NAME --url http://127.0.0.1:8080   # a served model
    python -m bench.faithfulness --model region                                # the constructed model

* **The scores** are the server's own (``faithfulness=deletion,insertion``, ``vitscope/faithfulness.py``,
  docs/faithfulness.md): every map explains the image's top class (``target=top``; attention and
  rollout score it too on a classifier), so the methods' AUCs on one model are of the same score.
  In process the requests go through the service as a served request would (decode, resize, maps,
  curves); with ``--url`` they are HTTP requests to TorchServe's ``/predictions/<model>``.
* **Two maps computed here**, scored by the same protocol and score (``faithfulness.curves``):
  ``ig``, Integrated Gradients through Captum (pixels, the mean-colour baseline, ``--ig-steps``
  steps, of the top class's logit as TorchServe's explanations compute it; |attribution| summed per
  patch), the baseline users know; and ``edge``, a control that reads the image only (the gradient
  magnitude of the processed image, summed per patch): a map that ignores the model.
* **The ranking**: per method the mean over the images of the deletion AUC (lower is better) and of
  the insertion AUC (higher is better), each with a 95% percentile bootstrap interval over the images
  (``--bootstrap`` resamples, seeded), and the same for the random order.
* **The randomisation check** (Adebayo et al., 2018): the last ``--blocks`` blocks re-initialised
  (the model's own initialisation, seeded), each method's per-patch map for the same target again,
  and the Spearman correlation of each image's map before and after. A method whose maps follow
  the weights changes (a low correlation); one whose mean |correlation| is ``IGNORES`` or above ignores them (``edge``
  does, by construction). In process only: a served model cannot be re-initialised from outside.

It writes ``<out>/<name>.md`` and ``.json`` (``bench/report.py``'s format, so docs/faithfulness.md
generates its tables from the JSON) and ``.png`` (the mean curves of each method).
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from bench.report import markdown, to_json
from bench.tables import Column, Report, Table
from vitscope import faithfulness
from vitscope.errors import RequestError
from vitscope.faithfulness import DELETION, INSERTION, METRICS, RANDOM
from vitscope.model import relevance
from vitscope.model.checkpoint import RANDOM_WEIGHTS, build_model
from vitscope.model.sources import base_from_spec, load_checkpoint
from vitscope.model.variants import Variant, get_variant
from vitscope.model.vit import VisionTransformer
from vitscope.options import parse
from vitscope.precision import PrecisionPlan, describe_device
from vitscope.predictions import Predictor
from vitscope.schema import AttentionResult, ImageRequest
from vitscope.service import AttentionService, ServiceConfig

logger = logging.getLogger("bench.faithfulness")

SERVED = ("attention", "rollout", "legrad", "chefer", "gradcam")  # the server's methods
LOCAL = ("ig", "edge")  # maps computed here, in process only
DEFAULT_METHODS = ",".join(SERVED)
EXPLAIN = ("legrad", "chefer", "gradcam")  # the methods that take target=
REGION = "region"  # --model region: testkit/constructed.py's region classifier on its own images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IGNORES = 0.9  # a mean |Spearman| at or above this after re-initialisation: the map ignores the weights
IGNORED, CHANGED = "ignores the weights", "changes with the weights"  # the randomisation check's verdicts
CONFIDENCE = 0.95
SEED = 0  # random weights (--weights random) and the bootstrap's resamples
REINIT_SEED = 1  # the randomisation check's fresh blocks
RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "faithfulness"  # its tables' section in the report's JSON (bench/report.py's format)
REGION_HEAD_SCALE = 20.0  # the region model's head steepened: probabilities that move by tenths as a region goes
REGION_IMAGES = 4  # --model region without --images: its constructed images, seeds 0..3


# ----------------------------------------------------------------------------- statistics
def bootstrap(values: Sequence[float] | np.ndarray, resamples: int, seed: int = SEED) -> tuple[float, float, float]:
    """The mean of ``values`` and its ``CONFIDENCE`` percentile bootstrap interval (``resamples``
    resamples of the values with replacement, seeded): (mean, low, high). One value: its own interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    means = v[np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))].mean(axis=1)  # (R,)
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(v.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def ranks(values: np.ndarray) -> np.ndarray:
    """The ranks of ``values`` (P,) from 1, ties given their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # each distinct value's highest rank
    return (last - (counts - 1) / 2)[inverse].astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (any shape, the same number of values); 0 where one is constant."""
    ra, rb = ranks(a.ravel()), ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


# ----------------------------------------------------------------------------- the model
@dataclass
class Subject:
    """The model the maps explain, served in process (exact fp32), and what names it."""

    model: VisionTransformer
    variant: Variant
    service: AttentionService
    weights: str


def serve_in_process(model: VisionTransformer, variant: Variant, weights: str, short_side: int | None = None) -> AttentionService:
    """A service around ``model`` (exact fp32, no admission limit that a benchmark image would meet),
    resizing each image's shorter side to ``short_side`` (default: the model's pretraining size)."""
    settings: dict[str, object] = {"model": variant.name, "weights": weights, "max_tokens": 1 << 20, "max_pixels": 1 << 26}
    settings["short_side"] = short_side or variant.pretrain_img_size
    config = ServiceConfig.from_mapping(settings)
    return AttentionService(model, variant, config, precisions=PrecisionPlan.fp32_only(), predictor=Predictor(model, ()))


def region_subject() -> Subject:
    """The constructed region classifier (``testkit/constructed.py``): class k reads region k's colour only."""
    from testkit.constructed import REGION_CLASSIFIER, SIZE, region_classifier

    model = region_classifier(head_scale=REGION_HEAD_SCALE)
    return Subject(model, REGION_CLASSIFIER, serve_in_process(model, REGION_CLASSIFIER, "constructed", SIZE), "constructed")


def load_subject(name: str, weights: str, device: torch.device, short_side: int | None = None) -> Subject:
    """``name``: a hub name (docs/models.md), ``timm:<model>`` or ``open_clip:<config>``, or ``region``;
    ``weights``: a checkpoint (as ``make archive`` takes) or ``random`` (seeded)."""
    if name == REGION:
        return region_subject()
    base = base_from_spec(name) or get_variant(name)
    if weights == RANDOM_WEIGHTS:
        torch.manual_seed(SEED)
        model, variant = build_model(base, None), base
    else:
        loaded = load_checkpoint(weights, base)
        model, variant, weights = build_model(loaded.variant, loaded.state), loaded.variant, Path(weights).name
    if variant.text is not None:
        raise SystemExit(f"{name}: a model with a text tower; the harness explains image classifiers and backbones (its top class)")
    model = model.eval().requires_grad_(False).to(device)
    return Subject(model, variant, serve_in_process(model, variant, weights, short_side), weights)


def reinitialised(subject: Subject, blocks: int, seed: int = REINIT_SEED) -> Subject:
    """A copy of ``subject`` whose last ``blocks`` blocks hold a fresh model's (the model's own
    initialisation, seeded ``seed``: not the seed of a random-weight subject's own, which would give its
    blocks back): the randomisation check's model."""
    if not 1 <= blocks <= subject.variant.depth:
        raise SystemExit(f"--blocks {blocks}: give 1..{subject.variant.depth} (the model's blocks)")
    torch.manual_seed(seed)
    fresh = build_model(subject.variant, None)
    model = copy.deepcopy(subject.model)
    depth = subject.variant.depth
    for index in range(depth - blocks, depth):
        model.blocks[index].load_state_dict(fresh.blocks[index].state_dict())
    model = model.eval().requires_grad_(False)
    weights = f"{subject.weights}, last {blocks} re-initialised"
    return Subject(model, subject.variant, serve_in_process(model, subject.variant, weights, subject.service.config.short_side), weights)


# ----------------------------------------------------------------------------- one image's maps and curves
@dataclass
class Measured:
    """One method on one image: its per-patch map, its curves and their random order's."""

    values: np.ndarray | None  # (h, w); None through --url
    curves: dict[str, Any]  # metric -> {"auc", "curve"}; RANDOM -> {metric -> ...}


@dataclass
class Options:
    steps: int = faithfulness.DEFAULT_FAITHFULNESS_STEPS
    baseline: str = faithfulness.DEFAULT_FAITHFULNESS_BASELINE
    ig_steps: int = 32
    short_side: int | None = None  # each request's short_side (None: the service's default; in process, the model's size)


def request_options(method: str, options: Options, target: str, curves: bool = True) -> dict[str, object]:
    """What a request for ``method``'s map (and, with ``curves``, its curves) sends (``target``: ``top``
    or ``<k>``, for the explanation methods)."""
    fields: dict[str, object] = {"upsample": "false"}
    if options.short_side is not None:
        fields["short_side"] = str(options.short_side)
    if curves:
        fields |= {"faithfulness": ",".join(METRICS), "faithfulness_steps": str(options.steps), "faithfulness_baseline": options.baseline}
    if method != "attention":
        fields["method"] = method
    if method in EXPLAIN:
        fields["target"] = target
    return fields


def served_map(subject: Subject, image: bytes, method: str, options: Options, target: str, curves: bool = True) -> tuple[Measured, int]:
    """``method`` on ``image`` through the service in process: its map, its curves (unless not
    ``curves``: an empty entry) and the top class."""
    fields = request_options(method, options, target, curves)
    service = subject.service
    (result,) = service.explain([ImageRequest(image, fields)])
    if isinstance(result, RequestError):
        raise RuntimeError(f"{method} on an image failed: {result}")
    served, parsed = parse(fields, service.facts, service.config.defaults())  # the request's method and options, as it ran
    values = served.patch_values(parsed, result.arrays, subject.variant.patch_size)[0]  # (h, w)
    return Measured(values, (result.faithfulness or [{}])[0]), top_of(result)


def target_of(top: int) -> str:
    """What an explanation method's request names as its target: the image's top class, ``top`` on a backbone (-1)."""
    return str(top) if top >= 0 else "top"


def top_of(result: AttentionResult) -> int:
    """The most probable class of an answer's ``predictions`` (-1: none, a model without a head)."""
    predictions = result.predictions or []
    return int(str(predictions[0]["index"])) if predictions else -1


def ig_values(model: VisionTransformer, image: torch.Tensor, goals: relevance.Goals, steps: int) -> np.ndarray:
    """Integrated Gradients (Captum) of the goal's score (a classifier's logit, else the cosine to the
    reference embedding) from the mean colour (zeros in the normalised tensor) to ``image`` (3, H, W):
    |attribution| summed per patch (h, w)."""
    from captum.attr import IntegratedGradients

    def score(x: torch.Tensor) -> torch.Tensor:
        normed, *earlier = model.head_tokens(x)
        logits = model.logits(normed, earlier[0] if earlier else None) if model.head is not None else None
        embedding = model.embed_image(model.pool(normed))
        return relevance.scores(model, goals.repeated(x.shape[0]), logits, embedding, scaled=False)[:, 0]  # (M,)

    x = image[None].float().requires_grad_(True)
    with torch.enable_grad():
        attribution = IntegratedGradients(score).attribute(x, baselines=torch.zeros_like(x), n_steps=steps, internal_batch_size=8)
    return per_patch(attribution[0].abs().sum(0), model.patch_size)


def edge_values(image: torch.Tensor, patch: int) -> np.ndarray:
    """The control that ignores the model: the processed image's (3, H, W) gradient magnitude (finite
    differences, summed over the channels), summed per patch (h, w)."""
    x = image.float()
    dy = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    dy[:, 1:] = x[:, 1:] - x[:, :-1]
    dx[:, :, 1:] = x[:, :, 1:] - x[:, :, :-1]
    return per_patch((dx**2 + dy**2).sqrt().sum(0), patch)


def per_patch(pixels: torch.Tensor, patch: int) -> np.ndarray:
    """A per-pixel map (H, W) summed over each patch: (H/p, W/p)."""
    H, W = pixels.shape
    return pixels.detach().reshape(H // patch, patch, W // patch, patch).sum(dim=(1, 3)).double().cpu().numpy()


def local_values(subject: Subject, tensor: torch.Tensor, goals: relevance.Goals, method: str, options: Options) -> np.ndarray:
    """``ig``'s or ``edge``'s map (h, w) of the processed image ``tensor`` (3, H, W)."""
    if method == "ig":
        return ig_values(subject.model, tensor, goals, options.ig_steps)
    return edge_values(tensor, subject.model.patch_size)


def local_map(subject: Subject, image: bytes, method: str, options: Options, top: int, curves: bool = True) -> Measured:
    """``ig`` or ``edge`` on ``image``, scored (unless not ``curves``) by the served protocol against the
    same goal (its top class)."""
    model = subject.model
    tensor = subject.service.prepare(ImageRequest(image, {})).tensor.float()  # (3, H, W) normalised, as the maps' requests
    goals = target_goals(model, tensor, top)
    p = model.patch_size
    values = local_values(subject, tensor, goals, method, options)
    if not curves:
        return Measured(values, {})
    tokens = model.num_prefix_tokens + values.size
    (entry,) = faithfulness.curves(
        values[None],
        tensor,
        faithfulness.baseline_of(tensor, options.baseline, p),
        faithfulness.goal_scorer(model, goals, "fp32"),
        METRICS,
        options.steps,
        p,
        faithfulness.batch_size(tokens),
    )
    return Measured(values, entry)


def target_goals(model: VisionTransformer, tensor: torch.Tensor, top: int) -> relevance.Goals:
    """The goal every map of an image explains: class ``top`` on a classifier, else the image's own embedding."""
    goals, _ = faithfulness.image_goals(model, tensor[None], "fp32")
    if model.head is not None:
        goals.classes[0, 0] = top
    return goals


# ----------------------------------------------------------------------------- through HTTP
def http_map(url: str, model: str, image: bytes, method: str, options: Options) -> Measured:
    """``method``'s curves from a served model (TorchServe's /predictions/<model>, multipart form)."""
    import requests

    fields = {k: str(v) for k, v in request_options(method, options, "top").items()}
    reply = requests.post(f"{url.rstrip('/')}/predictions/{model}", files={"data": image}, data=fields, timeout=600)
    if reply.status_code != 200:
        raise RuntimeError(f"{method}: HTTP {reply.status_code}: {reply.text[:400]}")
    return Measured(None, reply.json()["faithfulness"][0])


# ----------------------------------------------------------------------------- the run
@dataclass
class Run:
    """Every method's measurements, image by image, and the randomisation check's correlations."""

    methods: list[str]
    images: list[str]
    measured: dict[str, list[Measured]] = field(default_factory=dict)
    correlations: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def aucs(self, method: str, metric: str, random: bool = False) -> list[float]:
        entries = [m.curves[RANDOM] if random else m.curves for m in self.measured[method]]
        return [float(e[metric]["auc"]) for e in entries]

    def mean_curve(self, method: str, metric: str, random: bool = False) -> np.ndarray:
        entries = [m.curves[RANDOM] if random else m.curves for m in self.measured[method]]
        return np.mean([e[metric]["curve"] for e in entries], axis=0)


def read_images(folder: Path | None, limit: int) -> list[tuple[str, bytes]]:
    """The images of ``folder`` (sorted by name, at most ``limit``); None: the region model's own."""
    if folder is None:
        from testkit.checkpoints import encode
        from testkit.constructed import region_image

        return [(f"region_image({seed})", encode(region_image(seed))) for seed in range(limit)]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise SystemExit(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(p.name, p.read_bytes()) for p in files]


def measure_all(
    subject: Subject, images: Sequence[tuple[str, bytes]], methods: Sequence[str], options: Options
) -> tuple[dict[str, list[Measured]], list[int]]:
    """Each method on each image in process; the top class of each image (-1 on a backbone)."""
    measured: dict[str, list[Measured]] = {m: [] for m in methods}
    tops: list[int] = []
    for name, image in images:
        top = top_class(subject, image)
        tops.append(top)
        for method in methods:
            m = (
                local_map(subject, image, method, options, top)
                if method in LOCAL
                else served_map(subject, image, method, options, target_of(top))[0]
            )
            measured[method].append(m)
        logger.info("%s: %s", name, ", ".join(f"{m} del {measured[m][-1].curves[DELETION]['auc']:.3f}" for m in methods))
    return measured, tops


def top_class(subject: Subject, image: bytes) -> int:
    """The image's top class as the service predicts it (-1: a model without a head)."""
    if subject.model.head is None:
        return -1
    (result,) = subject.service.explain([ImageRequest(image, {"top_k": "1", "upsample": "false"})])
    if isinstance(result, RequestError):
        raise RuntimeError(f"the image could not be read: {result}")
    return top_of(result)


def randomisation(
    subject: Subject, images: Sequence[tuple[str, bytes]], run: Run, tops: Sequence[int], blocks: int, options: Options
) -> None:
    """Each method's maps again with the last ``blocks`` blocks re-initialised, for the same targets:
    the Spearman correlation per image with the maps before, into ``run.correlations``."""
    changed = reinitialised(subject, blocks)
    for method in run.methods:
        after = []
        for (_, image), top in zip(images, tops, strict=True):
            if method in LOCAL:  # the maps only: no curves
                after.append(local_map(changed, image, method, options, top, curves=False).values)
            else:
                after.append(served_map(changed, image, method, options, target_of(top), curves=False)[0].values)
        run.correlations[method] = [
            spearman(m.values, a) for m, a in zip(run.measured[method], after, strict=True) if m.values is not None and a is not None
        ]


# ----------------------------------------------------------------------------- the report
def ci(stats: tuple[float, float, float]) -> str:
    mean, low, high = stats
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def tables(run: Run, resamples: int, blocks: int | None) -> list[Table]:
    """The ranking by deletion, by insertion, and the randomisation check."""
    out = []
    for metric, better, reverse in ((DELETION, "lower", False), (INSERTION, "higher", True)):
        table = Table(
            f"Faithfulness by {metric} AUC ({better} is better), mean over {len(run.images)} images [95% bootstrap interval]",
            (Column("rank"), Column("method"), Column(f"{metric} AUC"), Column("random order"), Column("map - random")),
            section=SECTION,
        )
        rows = []
        for method in run.methods:
            own, chance = run.aucs(method, metric), run.aucs(method, metric, random=True)
            rows.append((method, bootstrap(own, resamples), bootstrap(chance, resamples), bootstrap(np.subtract(own, chance), resamples)))
        rows.sort(key=lambda row: row[1][0], reverse=reverse)
        for rank, (method, own_s, chance_s, diff_s) in enumerate(rows, start=1):
            table.add(rank, method, ci(own_s), ci(chance_s), ci(diff_s))
        out.append(table)
    if blocks is not None and run.correlations:
        table = Table(
            f"Randomisation check: the last {blocks} block(s) re-initialised, Spearman correlation of each map before and after",
            (Column("method"), Column("mean Spearman"), Column("mean abs(Spearman)"), Column("min"), Column("max"), Column("verdict")),
            section=SECTION,
        )
        for method in run.methods:
            values = run.correlations.get(method, [])
            if values:
                size = float(np.mean(np.abs(values)))
                verdict = IGNORED if size >= IGNORES else CHANGED
                table.add(method, f"{np.mean(values):.3f}", f"{size:.3f}", f"{min(values):.3f}", f"{max(values):.3f}", verdict)
        table.notes.append(
            f'A mean abs(Spearman) of {IGNORES} or more reads "{IGNORED}": the map hardly moved (up to its sign) when the model did.'
        )
        out.append(table)
    return out


def machine_lines(device: torch.device, command: str, subject_line: str, run: Run, options: Options) -> list[str]:
    return [
        f"- Machine: {describe_device(torch.device('cpu'))}",
        f"- Forward passes on: {'the CPU above' if device.type == 'cpu' else describe_device(device)}",
        f"- torch {torch.__version__}; GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        f"- Command: `{command}`",
        f"- Model: {subject_line}; images: {', '.join(run.images)}",
        f"- Protocol: faithfulness_steps={options.steps}, faithfulness_baseline={options.baseline}; ig: {options.ig_steps} steps; "
        f"{run.seconds:.0f} s in all",
    ]


def plot(run: Run, out: Path) -> None:
    """The mean deletion and insertion curves of each method (solid) and of the random order (dashed, the first method's)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.linspace(0, 1, run.mean_curve(run.methods[0], DELETION).shape[0])
    for ax, metric in zip(axes, METRICS, strict=True):
        for method in run.methods:
            ax.plot(x, run.mean_curve(method, metric), "-", label=f"{method} ({np.mean(run.aucs(method, metric)):.3f})")
        ax.plot(x, run.mean_curve(run.methods[0], metric, random=True), "k--", label="random order")
        ax.set(
            xlabel="fraction of patches " + ("removed" if metric == DELETION else "inserted"), ylabel="score", title=f"{metric} (mean AUC)"
        )
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=100)


def write(run: Run, report: Report, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.json", out / f"{name}.png"]
    paths[0].write_text(markdown(report))
    paths[1].write_text(to_json(report))
    plot(run, paths[2])
    return paths


# ----------------------------------------------------------------------------- the command
def parse_methods(text: str, url: str | None) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SERVED + LOCAL]
    if unknown or not methods:
        raise SystemExit(f"--methods {text!r}: unknown {unknown}; choose from {', '.join(SERVED + LOCAL)}")
    if url and any(m in LOCAL for m in methods):
        raise SystemExit(
            f"--methods {','.join(m for m in methods if m in LOCAL)}: computed here, they need the model in process (drop --url)"
        )
    return list(dict.fromkeys(methods))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.faithfulness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="a folder of images (default for --model region: its constructed images)")
    parser.add_argument(
        "--model", required=True, help="a hub name, timm:<model>, open_clip:<config>, or region; with --url: the served name"
    )
    parser.add_argument("--weights", default=RANDOM_WEIGHTS, help="a checkpoint as make archive takes, or random (seeded)")
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated, of {', '.join(SERVED + LOCAL)} (default {DEFAULT_METHODS})"
    )
    parser.add_argument(
        "--url", help="a TorchServe inference URL (http://127.0.0.1:8080): the served model's curves; no randomisation check"
    )
    parser.add_argument(
        "--short-side",
        type=int,
        help="resize each image's shorter side to this (default: in process the model's pretraining size, else the server's)",
    )
    parser.add_argument("--steps", type=int, default=faithfulness.DEFAULT_FAITHFULNESS_STEPS, help="faithfulness_steps")
    parser.add_argument("--baseline", choices=faithfulness.BASELINES, default=faithfulness.DEFAULT_FAITHFULNESS_BASELINE)
    parser.add_argument("--limit", type=int, help="images at most (the first by name; default 100, or the region model's 4)")
    parser.add_argument("--blocks", type=int, default=1, help="the randomisation check re-initialises the last BLOCKS blocks (0: no check)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the images")
    parser.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients' steps")
    parser.add_argument("--device", default="cpu", help="torch device of the in-process model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="faithfulness", help="the report's file names: <out>/<name>.{md,json,png}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    methods = parse_methods(args.methods, args.url)
    if args.images is None and args.model != REGION:
        raise SystemExit("--images DIR: the images to explain (only --model region brings its own)")
    options = Options(args.steps, args.baseline, args.ig_steps, args.short_side)
    images = read_images(args.images, args.limit or (100 if args.images is not None else REGION_IMAGES))
    run = Run(methods, [name for name, _ in images])
    start = time.perf_counter()
    device = torch.device(args.device)
    if args.url:
        run.measured = {m: [http_map(args.url, args.model, image, m, options) for _, image in images] for m in methods}
        subject_line, blocks = f"{args.model} served at {args.url}", None
    else:
        subject = load_subject(args.model, args.weights, device, args.short_side)
        needs_class = [m for m in methods if m in (*EXPLAIN, "ig")]
        if subject.model.head is None and needs_class:
            raise SystemExit(
                f"--methods {','.join(needs_class)} explain a class: {args.model} has no classifier head (use attention, rollout, edge)"
            )
        run.measured, tops = measure_all(subject, images, methods, options)
        blocks = args.blocks or None
        if blocks:
            randomisation(subject, images, run, tops, blocks, options)
        subject_line = f"{subject.variant.name} ({args.model}), weights {subject.weights}"
    run.seconds = time.perf_counter() - start
    command = shlex.join(["python", "-m", "bench.faithfulness", *(sys.argv[1:] if argv is None else argv)])
    report = Report(
        f"Faithfulness: {subject_line}", machine_lines(device, command, subject_line, run, options), tables(run, args.bootstrap, blocks)
    )
    for path in write(run, report, args.out, args.name):
        logger.info("wrote %s", path)
    logger.info("%s", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
