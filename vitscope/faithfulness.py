"""How faithful is a map: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018), measured
on the server beside the map a request asks for (``faithfulness=deletion,insertion``).

The protocol, exactly (docs/faithfulness.md says the same):

1. **The value per patch.** The map on the patch grid (never upsampled), one per *curve set*:
   ``attention`` the mean over the heads the response carries (all unless ``heads=``), of the
   deepest block with ``layers=``; ``rollout`` and ``similarity`` their one map; ``relevance``
   (``legrad``, ``chefer``, ``gradcam``) each target's own map, one curve set per target.
   ``pca`` has no single value per patch (three colour components whose signs are a convention):
   ``faithfulness`` with it is a 400. Each method says how (``Method.patch_values``).
2. **The order.** The P = h·w patches by descending value, ties by ascending row-major index (a
   stable sort of the negated values). The *random* order is ``numpy.random.default_rng(RANDOM_SEED)
   .permutation(P)``, seed 0: the same for every request of P patches.
3. **The steps.** For k = 0..S (S = ``faithfulness_steps``, default 16, in [2, 64]) the first
   n_k = round(k·P/S) patches of the order (halves rounded up: n_k = ⌊(2kP + S) / 2S⌋). Deletion
   replaces those n_k patches with the baseline; insertion replaces every *other* patch with it.
   So deletion starts at the image (k = 0) and ends at the baseline; insertion the other way.
4. **The baseline.** ``blur`` (default): the processed image (the normalised tensor the model reads)
   blurred by a Gaussian of sigma = one patch size in pixels (a separable kernel of radius
   ceil(3 sigma), edges replicated). ``mean``: zeros in the normalised tensor, i.e. the normalisation's mean colour.
5. **The score** of each perturbed image (the score a relevance map explains, as the response's
   ``targets`` report it, ``model.relevance.reported``): a class's softmax probability; a text's
   SigLIP sigmoid probability, or CLIP's cosine to the prompt; an ``embedding`` target's cosine to
   its reference. A map without a target (attention, rollout, similarity) scores, on a classifier,
   the probability of its top class on the unperturbed image (target ``class <k>``), so that every
   method's curves on one model are of the same score; on a model without a head, the cosine of the
   perturbed image's pooled embedding to the unperturbed image's (target ``image``).
6. **The answer.** ``faithfulness`` is a list, one entry per curve set (for ``relevance`` aligned
   with ``targets``; otherwise one entry), each ``{"target", "score", "deletion": {"auc", "curve"},
   "insertion": {...}, "random": {"deletion": {...}, "insertion": {...}}}`` with only the metrics
   asked for. ``curve`` holds the S + 1 scores; ``auc`` is the trapezoid over the fractions k/S:
   Σ_k (c_k + c_{k+1}) / 2S. ``target`` is the target's name as in ``targets`` (for a map without
   one ``class <k>`` on a classifier, ``image`` otherwise), ``score`` is ``probability`` or
   ``cosine``. A faithful map has a low deletion AUC and a high insertion AUC, compared with its
   random order's.

The perturbed copies run through the whole model with no autograd, ``batch_size`` copies per
forward pass (at most ``MAX_BATCH``, fewer for large images: ``MAX_BATCH_TOKENS``), under the
request's precision. One image costs ``forwards`` passes (the cost model counts them): per metric
S + 1 for each curve set and S + 1 for the random order, which every target of an image shares,
and for a map without a target one pass for the unperturbed image (its top class or embedding).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .errors import OptionError
from .model import relevance
from .precision import autocast
from .vocab import (
    DEFAULT_FAITHFULNESS_BASELINE,
    DEFAULT_FAITHFULNESS_STEPS,
    ModelFacts,
    Options,
    OptionSpec,
    choice_option,
    listed,
    parse_int,
)

if TYPE_CHECKING:
    from .model.vit import VisionTransformer

logger = logging.getLogger(__name__)

DELETION, INSERTION = "deletion", "insertion"
METRICS: tuple[str, ...] = (DELETION, INSERTION)  # in the answer's order
RANDOM = "random"  # the answer's key of the random order's curves
BLUR, MEAN = "blur", "mean"
BASELINES: tuple[str, ...] = (BLUR, MEAN)
MIN_STEPS, MAX_STEPS = 2, 64
RANDOM_SEED = 0  # numpy.random.default_rng(RANDOM_SEED).permutation(P): the random order
BLUR_SIGMA = 1.0  # the blur baseline's sigma, in patch sizes
BLUR_RADIUS = 3.0  # its kernel's radius, in sigmas (rounded up to whole pixels)
MAX_BATCH = 32  # perturbed copies per forward pass, at most
MAX_BATCH_TOKENS = 16384  # ... and at most this many tokens in one pass (large images: fewer copies)
IMAGE_TARGET = "image"  # the ``target`` of a map without one on a model without a head: the unperturbed image's embedding
PROBABILITY, COSINE = "probability", "cosine"  # what a curve's scores are

Scorer = Callable[[torch.Tensor], torch.Tensor]  # perturbed images (M, 3, H, W) -> scores (M, C), one column per curve set


# ----------------------------------------------------------------------------- the options
def parse_metrics(value: object, facts: ModelFacts) -> tuple[str, ...]:
    """``faithfulness``: ``deletion``, ``insertion`` or both (a JSON list or comma-separated), in ``METRICS`` order."""
    how = f"give {' or '.join(METRICS)}, or both: faithfulness={','.join(METRICS)} (a JSON list works too)"
    items = listed("faithfulness", value, ",", "metrics")
    if items is None:
        raise OptionError(f"faithfulness={value!r}: {how}")
    names = [str(item).strip().lower() if isinstance(item, str) else item for item in items]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        said = f"unknown metric(s) {[str(n)[:40] for n in unknown]}" if unknown else "no metric"
        raise OptionError(f"faithfulness={str(value)[:80]!r}: {said}; {how}")
    return tuple(metric for metric in METRICS if metric in names)


def parse_steps(value: object, facts: ModelFacts) -> int:
    steps = parse_int("faithfulness_steps", value)
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise OptionError(
            f"faithfulness_steps={steps} is out of range: give {MIN_STEPS}..{MAX_STEPS} steps per curve "
            f"(default {DEFAULT_FAITHFULNESS_STEPS})"
        )
    return steps


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "faithfulness",
        "metrics",
        parse_metrics,
        "`deletion`, `insertion` or both (`deletion,insertion`, or a JSON list): the map's deletion/insertion curves and AUCs "
        "beside a random order's, in the field `faithfulness`; JSON or npz (KServe v1/v2 too), not npy; not `method=pca` "
        "([How faithful is a map](faithfulness.md))",
    ),
    OptionSpec(
        "faithfulness_steps",
        "integer",
        parse_steps,
        f"with `faithfulness`: the steps S of each curve, in `[{MIN_STEPS}, {MAX_STEPS}]`; a curve has S + 1 points, each a "
        "forward pass of the whole model",
        DEFAULT_FAITHFULNESS_STEPS,
        interval=f"[{MIN_STEPS}, {MAX_STEPS}]",
    ),
    choice_option(
        "faithfulness_baseline",
        BASELINES,
        DEFAULT_FAITHFULNESS_BASELINE,
        "with `faithfulness`: what a removed patch becomes: `blur` (the image blurred by a Gaussian, sigma = one patch) or `mean` (the "
        "normalisation's mean colour)",
    ),
)
OPTION_NAMES: tuple[str, ...] = tuple(spec.name for spec in OPTIONS)


def check_combination(given: Sequence[str], fmt: str) -> None:
    """The 400s of faithfulness options that do not combine (``given``: the options a request gave)."""
    if "faithfulness" not in given:
        settings = [name for name in OPTION_NAMES[1:] if name in given]
        if settings:
            raise OptionError(f"{settings[0]} applies with faithfulness=deletion, insertion or both: give faithfulness too")
        return
    if fmt == "npy":
        raise OptionError(
            "faithfulness: format=npy carries one array, its metadata in a header: ask format=json or npz (or KServe v1/v2) "
            "with faithfulness"
        )


def forwards(options: Options, maps: int, targeted: bool) -> int:
    """The forward passes ``faithfulness`` adds to one image's request: per metric, S + 1 for each of
    its ``maps`` curve sets and S + 1 for the random order; one more for the unperturbed embedding
    of a map without a target (``targeted`` False)."""
    if not options.faithfulness:
        return 0
    return len(options.faithfulness) * (options.faithfulness_steps + 1) * (maps + 1) + (0 if targeted else 1)


# ----------------------------------------------------------------------------- the protocol
def ranking(values: np.ndarray) -> np.ndarray:
    """A map (h, w) -> its patches' row-major indices (P,) by descending value, ties by ascending index."""
    return np.argsort(-values.ravel(), kind="stable")


def random_ranking(patches: int, seed: int = RANDOM_SEED) -> np.ndarray:
    """The random order of ``patches`` patches (P,): seeded, the same for every request."""
    return np.random.default_rng(seed).permutation(patches)


def step_counts(patches: int, steps: int) -> np.ndarray:
    """n_k = round(k P / S) for k = 0..S, halves rounded up: (S + 1,) int."""
    k = np.arange(steps + 1)
    return (2 * k * patches + steps) // (2 * steps)


def kept(order: np.ndarray, counts: np.ndarray, metric: str, grid: tuple[int, int]) -> np.ndarray:
    """Which patches keep the image at each step (S + 1, h, w) bool: deletion keeps all but the first
    n_k of ``order``; insertion keeps only those."""
    position = np.empty(order.shape[0], dtype=np.int64)
    position[order] = np.arange(order.shape[0])  # each patch's place in the order
    first = position[None, :] < counts[:, None]  # (S + 1, P): the first n_k patches
    return (~first if metric == DELETION else first).reshape(len(counts), *grid)


def auc(curve: Sequence[float] | np.ndarray) -> float:
    """The trapezoid under ``curve`` (S + 1 scores) over the fractions k/S."""
    c = np.asarray(curve, dtype=np.float64)
    steps = len(c) - 1
    return float(((c[:-1] + c[1:]) / 2).sum() / steps)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) blurred by a separable Gaussian of ``sigma`` pixels (radius ceil(BLUR_RADIUS sigma), edges replicated)."""
    radius = max(1, math.ceil(BLUR_RADIUS * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (2r + 1,)
    channels = image.shape[0]
    out = F.pad(image.float()[None], (radius, radius, radius, radius), mode="replicate")  # (1, 3, H + 2r, W + 2r)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along x
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along y
    return out[0]  # (3, H, W)


def baseline_of(image: torch.Tensor, name: str, patch_size: int) -> torch.Tensor:
    """What removed patches become (3, H, W): the image blurred (sigma = ``BLUR_SIGMA`` patch sizes), or zeros (``mean``)."""
    if name == MEAN:
        return torch.zeros_like(image, dtype=torch.float32)
    if name == BLUR:
        return gaussian_blur(image, BLUR_SIGMA * patch_size)
    raise ValueError(f"unknown faithfulness baseline {name!r}; choose one of {list(BASELINES)}")


def perturbed(image: torch.Tensor, baseline: torch.Tensor, keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Copies of ``image`` (3, H, W) whose patches outside ``keep`` (M, h, w) are the baseline's: (M, 3, H, W)."""
    pixels = keep.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)[:, None]  # (M, 1, H, W)
    return torch.where(pixels, image[None], baseline[None])


def batch_size(tokens: int) -> int:
    """Perturbed copies per forward pass for images of ``tokens`` tokens: ``MAX_BATCH`` or fewer."""
    return max(1, min(MAX_BATCH, MAX_BATCH_TOKENS // max(tokens, 1)))


def score_copies(scorer: Scorer, image: torch.Tensor, baseline: torch.Tensor, keep: np.ndarray, patch_size: int, copies: int) -> np.ndarray:
    """The scores (M, C) of the perturbed copies ``keep`` (M, h, w) says, ``copies`` per forward pass."""
    chunks = []
    for start in range(0, keep.shape[0], copies):
        mask = torch.from_numpy(keep[start : start + copies]).to(image.device)
        chunks.append(scorer(perturbed(image, baseline, mask, patch_size)).float().cpu())  # (copies, C)
    return torch.cat(chunks).double().numpy()


def summary(curve: np.ndarray) -> dict[str, object]:
    return {"auc": auc(curve), "curve": [float(c) for c in curve]}


def curves(
    values: np.ndarray,
    image: torch.Tensor,
    baseline: torch.Tensor,
    scorer: Scorer,
    metrics: Sequence[str],
    steps: int,
    patch_size: int,
    copies: int = MAX_BATCH,
) -> list[dict[str, object]]:
    """The curves of the maps ``values`` (C, h, w), one set each, on ``image`` (3, H, W) with
    ``baseline``; ``scorer`` gives the score of each of the C maps' targets (column c: map c's).
    Each set: ``{metric: {"auc", "curve"}, ..., "random": {metric: ...}}``; the random order's
    perturbed copies are scored once, for every column."""
    maps, h, w = values.shape
    counts = step_counts(h * w, steps)
    orders = [ranking(v) for v in values] + [random_ranking(h * w)]
    keep = np.concatenate([kept(order, counts, metric, (h, w)) for order in orders for metric in metrics])  # ((C + 1) m (S + 1), h, w)
    scores = score_copies(scorer, image, baseline, keep, patch_size, copies)  # (M, C)
    n = steps + 1

    def curve(order: int, metric: int, column: int) -> np.ndarray:
        start = (order * len(metrics) + metric) * n
        return scores[start : start + n, column]  # (S + 1,)

    out: list[dict[str, object]] = []
    for c in range(maps):
        entry: dict[str, object] = {metric: summary(curve(c, m, c)) for m, metric in enumerate(metrics)}
        entry[RANDOM] = {metric: summary(curve(maps, m, c)) for m, metric in enumerate(metrics)}
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- the scores
def goal_scorer(model: VisionTransformer, goals: relevance.Goals, precision: str) -> Scorer:
    """Perturbed images (M, 3, H, W) -> the scores (M, T) of one image's resolved ``goals`` (a batch of
    one), as the response's ``targets`` report them (``relevance.reported``), no autograd."""
    if any(kind == relevance.TOP for row in goals.kinds for kind in row):
        raise ValueError("faithfulness scores resolved goals: run the explanation first (it resolves target=top)")

    def score(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(batch.device, precision):
            normed, *earlier = model.head_tokens(batch)
            return relevance.reported(model, goals.repeated(batch.shape[0]), normed, earlier[0] if earlier else None).float()

    return score


def image_goals(model: VisionTransformer, image: torch.Tensor, precision: str) -> tuple[relevance.Goals, str]:
    """The goal of a map without a target and its name, from the unperturbed image (1, 3, H, W): on a
    classifier its top class (``class <k>``), else its pooled embedding (``image``, an embedding goal)."""
    with torch.inference_mode(), autocast(image.device, precision):
        normed, *earlier = model.head_tokens(image)
        reference = model.embed_image(model.pool(normed))[0].float()  # (D,)
        logits = model.logits(normed, earlier[0] if earlier else None) if model.head is not None else None
    if logits is None:
        return relevance.make_goals([[relevance.EMBEDDING]], [[0]], [[reference]], reference.shape[0], image.device), IMAGE_TARGET
    # made outside inference mode: resolve_top writes the class into it
    goals = relevance.make_goals([[relevance.TOP]], [[0]], [[None]], reference.shape[0], image.device)
    (top,) = relevance.resolve_top(model, goals, logits, reference[None])[0]
    return goals, f"class {int(top)}"


def score_kinds(model: VisionTransformer, goals: relevance.Goals) -> list[str]:
    """What each goal's curve holds: ``probability`` (a class; SigLIP's text) or ``cosine`` (CLIP's text, an embedding)."""
    siglip = bool(model.variant.logit_bias)
    return [PROBABILITY if kind == relevance.CLASS or (kind == relevance.TEXT and siglip) else COSINE for kind in goals.kinds[0]]


def measure(
    model: VisionTransformer,
    image: torch.Tensor,
    values: np.ndarray,
    options: Options,
    precision: str,
    goals: relevance.Goals | None = None,
    targets: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """The ``faithfulness`` field of one image: ``image`` (3, H, W) normalised, on the model's device;
    ``values`` (C, h, w) its maps' values per patch (``Method.patch_values``); ``goals``: its resolved
    goals (a batch of one; None: a map without a target, scored by its top class or its own embedding)
    and ``targets`` their names (as the response's ``targets``)."""
    start = time.perf_counter()
    p = model.patch_size
    image = image.float()
    if goals is None:
        goals, name = image_goals(model, image[None], precision)
        targets = [name]
    if targets is None or len(targets) != values.shape[0] or goals.count != values.shape[0]:
        raise ValueError(f"{values.shape[0]} maps to measure for {goals.count} goals and targets {targets}: one map per target")
    tokens = model.num_prefix_tokens + (image.shape[1] // p) * (image.shape[2] // p)
    entries = curves(
        values,
        image,
        baseline_of(image, options.faithfulness_baseline, p),
        goal_scorer(model, goals, precision),
        options.faithfulness,
        options.faithfulness_steps,
        p,
        batch_size(tokens),
    )
    logger.info(
        "faithfulness %s of %d map(s), %d steps: %.0f ms",
        ",".join(options.faithfulness),
        values.shape[0],
        options.faithfulness_steps,
        (time.perf_counter() - start) * 1000,
    )
    return [{"target": name, "score": kind, **entry} for name, kind, entry in zip(targets, score_kinds(model, goals), entries, strict=True)]
