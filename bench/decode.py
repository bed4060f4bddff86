"""The decode section: images/s of each way to turn a JPEG into the network's tensor
(``vitscope/decoding.py``), at batches of 1, 4 and 8, side by side in this one process:

* decode: PIL (``image.decode_image``, today's) vs torchvision's libjpeg-turbo (``decode_jpeg``), and
  on a CUDA device the batched ``decode_jpeg(list, device="cuda")`` (nvJPEG);
* resize: PIL's bilinear vs ``torch.nn.functional.interpolate`` (bilinear, antialias) of the decoded
  pixels, on the device;
* prepare: every route of ``decoding.CUDA_ROUTES`` / ``HOST_ROUTES`` end to end (header, decode,
  resize, crop, normalise), what a request pays before its forward pass.

Per round every configuration of a case and batch runs once, the order rotating each round, so the
machine's noise falls on all alike; a row's "x PIL" is the median over rounds of PIL's time / its own
in that round (its stage's PIL row), images/s the median of its rounds. The sources are the sample
photo resized to each case's size, JPEG quality 90. The notes carry the route ``plan_decoder`` picks
at load on this device, and the target asks whether that pick, made on a small probe, holds here.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.section import Run
from bench.tables import Column, Skipped, Table, Target
from bench.timing import Machine
from scripts import REPO
from vitscope.decoding import (
    DEVICE_DECODER,
    REFERENCE,
    TORCHVISION_DECODER,
    Decoded,
    DecodePlan,
    Geometry,
    PreparedTensor,
    Route,
    candidate_routes,
    plan_decoder,
    resize_pixels,
    torchvision_pixels,
)
from vitscope.image import RESAMPLE, decode_image
from vitscope.model.variants import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger("bench")

SOURCE = REPO / "data" / "samples" / "astronaut.jpg"  # a photo; resized to each case's size
BATCHES: tuple[int, ...] = (1, 4, 8)
DECODE, RESIZE, PREPARE = STAGES = ("decode", "resize", "prepare")
PIL_VARIANT = "pil"  # every stage's reference row
MAX_PIXELS = 10**8


@dataclass(frozen=True)
class Case:
    """A source JPEG of ``source`` (H, W) and the request geometry it is prepared with."""

    name: str
    source: tuple[int, int]
    geometry: Geometry

    @property
    def target(self) -> tuple[int, int]:
        resized, _ = self.geometry.sizes(self.source)
        return resized


CASES: tuple[Case, ...] = (
    Case("640x480 -> 480x480", (480, 640), Geometry(patch_size=8, max_tokens=10**9, size=(480, 480))),
    Case("1280x960 -> short side 480", (960, 1280), Geometry(patch_size=8, max_tokens=10**9, short_side=480)),
)


@dataclass
class DecodeRow:
    case: str
    stage: str
    variant: str  # pil / torchvision / device (decode), pil / torch (resize), a route's name (prepare)
    batch: int
    seconds: list[float] = field(default_factory=list)  # per round: one call of the whole batch
    ratios: list[float] = field(default_factory=list)  # per round: its stage's PIL time / its own
    max_diff: float | None = None  # max |its pixels - PIL's| in levels of 255
    skipped: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)

    @property
    def over_pil(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class DecodeFigures:
    rows: list[DecodeRow]
    plan: str  # DecodePlan.summary() of plan_decoder on this device
    route: str  # the route it picked
    sources: list[str]  # what each case's JPEG is
    rounds: int
    device: str


def source_jpeg(size: tuple[int, int], source: Path = SOURCE, quality: int = 90) -> bytes:
    """The sample photo resized to ``size`` (H, W), as a baseline JPEG."""
    img = decode_image(source.read_bytes(), MAX_PIXELS).resize((size[1], size[0]), RESAMPLE)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu().float() - b.cpu().float()).abs().max())


def configurations(case: Case, data: bytes, batch: int, device: torch.device) -> dict[tuple[str, str], Callable[[], object]]:
    """Every (stage, variant) of one case and batch, as a call of the whole batch (results on ``device``)."""
    datas = [data] * batch
    pixels = decode_image(data, MAX_PIXELS)
    stored = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # (3, H, W) uint8
    on_device = torch.stack([stored] * batch).to(device)  # (B, 3, H, W) uint8
    h, w = case.target
    calls: dict[tuple[str, str], Callable[[], object]] = {
        (DECODE, PIL_VARIANT): lambda: [decode_image(d, MAX_PIXELS) for d in datas],
        (DECODE, TORCHVISION_DECODER): lambda: [torchvision_pixels(d) for d in datas],
        (RESIZE, PIL_VARIANT): lambda: [pixels.resize((w, h), RESAMPLE) for _ in datas],
        (RESIZE, "torch"): lambda: resize_pixels(on_device, (h, w)),
    }
    if device.type == "cuda":
        plan = DecodePlan(device, Route(DEVICE_DECODER, "torch"))
        calls[(DECODE, DEVICE_DECODER)] = lambda: plan.decode_batch(datas, MAX_PIXELS)
    geometries = [case.geometry] * batch
    for route in candidate_routes(device):
        route_plan = DecodePlan(device, route)

        def prepare(plan: DecodePlan = route_plan) -> list[torch.Tensor]:
            done = plan.prepare_batch(datas, geometries, max_pixels=MAX_PIXELS, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            return [p.tensor.to(device) for p in done if isinstance(p, PreparedTensor)]

        calls[(PREPARE, route.name)] = prepare
    return calls


def agreement(case: Case, data: bytes, device: torch.device) -> dict[tuple[str, str], float]:
    """Max |pixels - PIL's pixels| (levels) of each configuration's output, computed once, untimed."""
    pil = torch.from_numpy(np.array(decode_image(data, MAX_PIXELS))).permute(2, 0, 1)
    h, w = case.target
    pil_resized = torch.from_numpy(np.array(Image.fromarray(pil.permute(1, 2, 0).numpy()).resize((w, h), RESAMPLE))).permute(2, 0, 1)
    out = {(DECODE, PIL_VARIANT): 0.0, (RESIZE, PIL_VARIANT): 0.0}
    out[(DECODE, TORCHVISION_DECODER)] = _levels(torchvision_pixels(data), pil)
    out[(RESIZE, "torch")] = _levels(resize_pixels(pil[None].to(device), (h, w))[0], pil_resized)
    if device.type == "cuda":
        (decoded,) = DecodePlan(device, Route(DEVICE_DECODER, "torch")).decode_batch([data], MAX_PIXELS)
        if isinstance(decoded, Decoded):
            out[(DECODE, DEVICE_DECODER)] = _levels(decoded.pixels, pil)
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    prepared: dict[str, torch.Tensor] = {}
    for route in candidate_routes(device):
        (p,) = DecodePlan(device, route).prepare_batch([data], [case.geometry], max_pixels=MAX_PIXELS, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if isinstance(p, PreparedTensor):
            prepared[route.name] = (p.tensor.cpu() * std + mean) * 255.0
    for name, levels in prepared.items():
        out[(PREPARE, name)] = float((levels - prepared[REFERENCE.name]).abs().max())
    return out


def bench_decode(cases: Sequence[Case], batches: Sequence[int], rounds: int, device: torch.device, source: Path = SOURCE) -> DecodeFigures:
    """Every configuration of every case and batch, ``rounds`` rounds, round-robin (the order rotating)."""
    plan = plan_decoder(device)
    rows: list[DecodeRow] = []
    sources = []
    for case in cases:
        data = source_jpeg(case.source, source)
        sources.append(f"{case.name}: {source.name} resized to {case.source[1]}x{case.source[0]}, JPEG q90, {len(data) / 1000:.0f} kB")
        diffs = agreement(case, data, device)
        for batch in batches:
            calls = configurations(case, data, batch, device)
            keys = list(calls)
            for key in keys:  # warm-up: allocations, kernels, nvJPEG's handle
                calls[key]()
            _sync(device)
            seconds: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
            ratios: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
            for r in range(rounds):
                order = keys[r % len(keys) :] + keys[: r % len(keys)]
                took = {}
                for key in order:
                    start = time.perf_counter()
                    calls[key]()
                    _sync(device)
                    took[key] = time.perf_counter() - start
                for key in keys:
                    base = took[(key[0], PIL_VARIANT if key[0] != PREPARE else REFERENCE.name)]
                    seconds[key].append(took[key])
                    ratios[key].append(base / took[key])
            for key in keys:
                rows.append(DecodeRow(case.name, key[0], key[1], batch, seconds[key], ratios[key], diffs.get(key)))
            logger.info("  decode %s, batch %d: %d configurations x %d rounds", case.name, batch, len(keys), rounds)
        if device.type != "cuda":
            for stage, variant in ((DECODE, DEVICE_DECODER), (PREPARE, Route(DEVICE_DECODER, "torch").name)):
                rows.append(DecodeRow(case.name, stage, variant, 0, skipped=f"nvJPEG needs a CUDA device, this run is on {device}"))
    return DecodeFigures(rows, plan.summary(), plan.route.name, sources, rounds, str(device))


def decode_table(figures: DecodeFigures, machine: Machine) -> Table:
    columns = (
        Column("case"),
        Column("stage"),
        Column("variant"),
        Column("batch"),
        Column("images/s", "{:.0f}"),
        Column("x PIL", "{:.2f}x"),
        Column("max abs diff vs PIL (levels)", "{:.0f}"),
    )
    table = Table(f"Decode and resize (JPEG -> tensor; {figures.device}, {figures.rounds} rounds round-robin)", columns)
    order = {stage: i for i, stage in enumerate(STAGES)}
    cases = {name: i for i, name in enumerate(dict.fromkeys(r.case for r in figures.rows))}  # as measured
    rows = sorted(figures.rows, key=lambda r: (cases[r.case], order[r.stage], r.batch == 0, r.batch))
    for r in rows:
        if r.skipped:
            table.add(r.case, r.stage, r.variant, None, Skipped(r.skipped), None, None)
        else:
            table.add(r.case, r.stage, r.variant, r.batch, r.images_per_s, r.over_pil, r.max_diff)
    table.notes += [
        "decode: `image.decode_image` (PIL: header, pixels, EXIF orientation, RGB) vs `torchvision.io.decode_jpeg` "
        '(libjpeg-turbo, the pixels only) vs, on CUDA, one batched `decode_jpeg(list, device="cuda")` (nvJPEG). '
        "resize: PIL's bilinear vs `interpolate(bilinear, antialias=True)` (uint8 kernel on the CPU, float on a GPU). "
        "prepare: each route end to end (header and limits, decode, resize, crop, normalise; the tensors on the device).",
        "Sources: " + "; ".join(figures.sources) + ".",
        f"At load: {figures.plan}.",
        f"Measured on: {machine.description}.",
    ]
    return table


def decode_targets(figures: DecodeFigures) -> list[Target]:
    """The route picked at load (a small probe) must not lose to PIL on the first case at batch 1."""
    case = figures.rows[0].case if figures.rows else ""
    picked = [
        r for r in figures.rows if r.case == case and r.stage == PREPARE and r.variant == figures.route and r.batch == 1 and not r.skipped
    ]
    if not picked:
        return []
    return [Target(f"prepare {case}, batch 1: the route picked at load ({figures.route}) vs pil+pil", picked[0].over_pil, 1.0)]


class Decode:
    key = "decode"
    title = "JPEG -> tensor: PIL vs torchvision (and nvJPEG on CUDA) decode, PIL vs torch resize, each route, batches 1/4/8"

    def __init__(self, cases: Sequence[Case] = CASES, batches: Sequence[int] = BATCHES, source: Path = SOURCE) -> None:
        self.cases, self.batches, self.source = tuple(cases), tuple(batches), source

    def measure(self, run: Run) -> DecodeFigures:
        logger.info("decode: PIL vs torchvision decode and resize, every route, round-robin ...")
        rounds = max(5, 5 * run.args.repeats)
        return bench_decode(self.cases, self.batches, rounds, torch.device(run.args.device), self.source)

    def tables(self, figures: DecodeFigures, args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [decode_table(figures, machine)]

    def targets(self, figures: DecodeFigures, args: argparse.Namespace, machine: Machine) -> list[Target]:
        return decode_targets(figures)


SECTION = Decode()
