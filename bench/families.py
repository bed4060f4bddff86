"""The families section (fp32, last layer): our path vs the eager N x N path (the seed's maths) on
today's models (``--families`` rows, random weights in each model's official layout), each in its own
process, and the same model made by transformers and loaded from its directory (``hf:`` rows)."""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from bench.section import Run
from bench.tables import RSS, TIMES, Cell, Column, Table, Target, size_name
from bench.timing import HF_ROW, Machine, Result, compare_maps, hugging_face_twin, measure
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import get_variant

logger = logging.getLogger("bench")


def bench_families(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Result]]:
    """``args.families``: each model (random weights in its official layout) at each size, the eager
    N x N path (the seed's maths) and our fp32 path, each in its own process; the maps compared."""
    rows: list[tuple[str, Result]] = []
    for name in dict.fromkeys(model for model, _ in args.families):
        hub = name.removeprefix(HF_ROW)
        variant = get_variant(hub)
        folder = workdir / name.replace(":", "_")
        folder.mkdir()
        weights = folder / ("hf" if name.startswith(HF_ROW) else "random.pth")
        model_args = argparse.Namespace(**{**vars(args), "model": hub, "patch": variant.patch_size, "weights": weights})
        torch.manual_seed(0)
        if name.startswith(HF_ROW):
            hugging_face_twin(variant).save_pretrained(weights)
        else:
            torch.save(build_model(variant, None).state_dict(), weights)
        done: list[Result] = []
        for model, size in args.families:
            if model == name:
                done += [measure(path, size, model_args, folder, done, {}) for path in ("seed", "fp32")]
        compare_maps(done, folder)
        rows += [(name, r) for r in done]
    return rows


def families_table(rows: Sequence[tuple[str, Result]]) -> Table:
    table = Table(
        "Today's models (fp32, one image, last layer): our path vs the eager N x N path",
        (
            Column("model"),
            Column("size"),
            Column("tokens"),
            Column("path"),
            *TIMES,
            *RSS,
            Column("speed-up vs eager", "{:.1f}x"),
            Column("maps"),
        ),
    )

    def measured(r: Result, eager: Result) -> tuple[Cell, ...]:
        ours = r.path != "seed"
        speedup = eager.best / r.best if ours and eager.times else None
        return (r.best, statistics.median(r.times), r.peak_rss_mb, r.loaded_rss_mb, speedup, eager.agreement if ours else "")

    for name, r in rows:
        eager = next(e for model, e in rows if model == name and e.path == "seed" and e.size == r.size)
        label = "eager N x N" if r.path == "seed" else "ours (SDPA + [CLS] row)"
        table.add_result((name, size_name(r.size), r.tokens, label), r, partial(measured, r, eager))
    ours = {(name, r.size): r for name, r in rows if r.path != "seed" and r.times}
    for (name, size), r in ours.items():
        hub = ours.get((name.removeprefix(HF_ROW), size))
        if name.startswith(HF_ROW) and hub:
            table.notes.append(
                f"{name}: the same architecture made by transformers and loaded from its `save_pretrained` directory as "
                f"`make archive` loads it; at {size_name(size)} it takes {r.best / hub.best:.2f}x the hub-loaded model's time."
            )
    return table


class Families:
    key = "families"
    title = "DINOv2 with registers, DINOv3 (and hf: rows, loaded from a Hugging Face directory): ours vs eager N x N"

    def measure(self, run: Run) -> list[tuple[str, Result]]:
        logger.info("families: DINOv2 with registers, DINOv3, fast vs eager N x N (one process each) ...")
        return bench_families(run.args, run.workdir)

    def tables(self, figures: list[tuple[str, Result]], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [families_table(figures)]

    def targets(self, figures: list[tuple[str, Result]], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Families()
