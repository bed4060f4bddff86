"""The methods section (fp32, one image, the forward pass and the method's arrays): a last-layer
request, layers=all, rollout, the naive full-matrix rollout, similarity and PCA at each
``--method-sizes``, each in its own process, and their ratios to a last-layer request timed side by
side in one process; its table and its targets."""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Mapping, Sequence
from functools import partial

from bench import timing
from bench.section import Run
from bench.tables import LEAD, RSS, TIMES, Cell, Column, Table, Target, size_name
from bench.timing import METHOD_PATHS, Machine, Result

logger = logging.getLogger("bench")

SIDE_BY_SIDE_MAX_TOKENS = 4000  # the methods' ratios are timed side by side up to 480x480 at patch 8 (minutes beyond)
TARGETS = {
    "layers_all_over_last_480": 1.1,
    "rollout_over_last_480": 1.6,
    "similarity_over_last_480": 1.1,
    "pca_over_last_480": 1.1,
    "rollout_1080x1920_rss_gb": 4.0,
}


def over_last_layer(r: Result, by: Mapping[tuple[str, tuple[int, int]], Result]) -> float | None:
    """A method's time over a last-layer request's: timed side by side in one process where that ran
    (``over_last_layer``), else the two processes' best times."""
    if r.over_last_layer is not None:
        return r.over_last_layer
    last = by.get(("last_layer", r.size))
    return r.best / last.best if last and last.times and r.times else None


def methods_table(results: Sequence[Result]) -> Table:
    table = Table(
        "Methods (fp32, one image, the forward pass and the method's arrays): layers=all, rollout, naive full-matrix rollout, "
        "similarity, pca",
        (
            *LEAD,
            *TIMES,
            Column("x last-layer (side by side)", "{:.2f}x"),
            *RSS,
            Column("maps"),
        ),
    )
    by = {(r.path, r.size): r for r in results}

    def measured(r: Result) -> tuple[Cell, ...]:
        return (r.best, statistics.median(r.times), over_last_layer(r, by), r.peak_rss_mb, r.loaded_rss_mb, r.agreement)

    for r in results:
        table.add_result((size_name(r.size), r.tokens, r.path), r, partial(measured, r))
    naive = next((r for r in results if r.path == "rollout_naive" and r.size == (1080, 1920) and r.skipped), None)
    if naive:
        table.notes.append(f"The naive full-matrix rollout at 1080x1920 {naive.skipped}.")
    return table


def method_targets(results: Sequence[Result]) -> list[Target]:
    by = {(r.path, r.size): r for r in results if not r.skipped}
    targets = []
    last = by.get(("last_layer", (480, 480)))
    for path in ("layers_all", "rollout", "similarity", "pca"):
        key = f"{path}_over_last_480"
        measured = by.get((path, (480, 480)))
        ratio = over_last_layer(measured, by) if measured and last else None
        if ratio is not None:
            targets.append(Target(f"{path} at 480x480, x a last-layer request", ratio, TARGETS[key], False, "{:.2f}x"))
    big = by.get(("rollout", (1080, 1920)))
    if big:
        targets.append(
            Target("rollout at 1080x1920, peak RSS GB", big.peak_rss_mb / 1024, TARGETS["rollout_1080x1920_rss_gb"], False, "{:.2f}")
        )
    return targets


class Methods:
    key = "methods"
    title = "layers=all, rollout, naive rollout, similarity, pca vs a last-layer request at each --method-sizes (fp32)"

    def measure(self, run: Run) -> list[Result]:
        logger.info("methods: layers=all, rollout, naive rollout (one process each) ...")
        args = run.args
        results: list[Result] = []
        for size in args.method_sizes:
            for path in METHOD_PATHS:
                results.append(timing.measure(path, size, args, run.workdir, results, run.machine.speeds))
            if (size[0] // args.patch) * (size[1] // args.patch) <= SIDE_BY_SIDE_MAX_TOKENS:
                timing.measure_side_by_side(size, args, results)
        timing.compare_maps(results, run.workdir)
        return results

    def tables(self, figures: list[Result], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [methods_table(figures)]

    def targets(self, figures: list[Result], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return method_targets(figures)


SECTION = Methods()
