"""The batching section: images/s of the service in process, by batch size, for each precision that
runs natively. A batch is B requests handed to ``AttentionService.explain`` at once (as TorchServe's
``batchSize`` or the KServe engine's batcher hands them): decode, resize, one forward pass for all,
the maps; the response encoding is left out (the encoding section times it)."""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.section import Run
from bench.tables import Column, Table, Target
from bench.timing import Machine, timed
from vitscope.errors import RequestError
from vitscope.model.variants import get_variant
from vitscope.schema import ImageRequest
from vitscope.service import AttentionService, create_service

logger = logging.getLogger("bench")

GPU_BATCHES = (1, 8, 32)
CPU_BATCHES = (1, 4)  # a CPU runs a 480x480 image in seconds: larger batches only add minutes
REQUEST = {"upsample": "false"}  # maps on the patch grid: the model's work, not the upsampling's
SIDE = 480  # the requests' short side by default: the served default (the 512x512 sample -> 480x480)


@dataclass(frozen=True)
class BatchFigures:
    precision: str
    batch: int
    seconds: float  # median seconds per batch
    images_per_s: float
    forward_share: float  # the forward pass's share of the batch's time (the rest: decode, resize, maps)


def batch_sizes(device: torch.device) -> tuple[int, ...]:
    return GPU_BATCHES if device.type == "cuda" else CPU_BATCHES


def explain_batch(service: AttentionService, requests: list[ImageRequest], forward_ms: list[float]) -> None:
    """One batch through the service; appends the milliseconds of its forward pass to ``forward_ms``."""
    results = service.explain(requests)
    first = results[0]
    failed = [r for r in results if isinstance(r, RequestError)]
    if failed or isinstance(first, RequestError):
        raise RuntimeError(f"the batching request failed: {failed[0]}")
    forward_ms.append(first.stats["forward_ms"])


def bench_batching(args: argparse.Namespace, weights: Path, image: bytes, precisions: list[str]) -> list[BatchFigures]:
    """Each precision's service, each batch size: the median of ``args.repeats`` batches (after one)."""
    device = torch.device(args.device)
    variant = get_variant(args.model, args.patch)
    rows: list[BatchFigures] = []
    for precision in precisions:
        service = create_service({"model": variant.name, "precision": precision}, weights, device)
        request = ImageRequest(image, {**REQUEST, "short_side": str(args.batching_side)})
        for batch in batch_sizes(device):
            forward_ms: list[float] = []
            times = timed(partial(explain_batch, service, [request] * batch, forward_ms), args.repeats)
            seconds = statistics.median(times)
            share = statistics.median(forward_ms[1:]) / 1000 / seconds
            rows.append(BatchFigures(precision, batch, seconds, batch / seconds, share))
            logger.info("  %s batch %d: %.1f images/s", precision, batch, batch / seconds)
    return rows


def batching_table(rows: Sequence[BatchFigures], size: str) -> Table:
    table = Table(
        f"Batching in process ({size}, upsample=false; decode, resize, forward, maps; no encoding)",
        (
            Column("precision"),
            Column("batch"),
            Column("s per batch", "{:.3f}"),
            Column("images/s", "{:.1f}"),
            Column("forward share", "{:.0%}"),
        ),
    )
    for r in rows:
        table.add(r.precision, r.batch, r.seconds, r.images_per_s, r.forward_share)
    return table


class Batching:
    key = "batching"
    title = "images/s of the service in process by batch size, each native precision"

    def measure(self, run: Run) -> list[BatchFigures]:
        logger.info("batching: images/s by batch size, in process ...")
        return bench_batching(run.args, run.weights, run.image, run.native)

    def tables(self, figures: list[BatchFigures], args: argparse.Namespace, machine: Machine) -> list[Table]:
        side = args.batching_side
        return [batching_table(figures, f"{side}x{side}")]

    def targets(self, figures: list[BatchFigures], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Batching()
