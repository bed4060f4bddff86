"""The forward section as a picture: time and achieved GFLOP/s against the tokens, with the matmul peaks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bench.timing import PATHS, Result

COLOURS = dict(zip(PATHS, ("tab:red", "tab:blue", "tab:green", "tab:purple"), strict=True))


def plot(results: Sequence[Result], peaks: dict[str, float], out: Path) -> None:
    """Two panels (log-log time, GFLOP/s) of every measured path, written to ``out`` (PNG)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_time, ax_rate = fig.subplots(1, 2)
    for path, colour in COLOURS.items():
        done = [r for r in results if r.path == path and not r.skipped]
        if not done:
            continue
        ax_time.plot([r.tokens for r in done], [r.best for r in done], "o-", color=colour, label=path)
        ax_rate.plot([r.tokens for r in done], [r.gflops for r in done], "o-", color=colour, label=path)
    for dtype, style in zip(peaks, ("--", ":", "-."), strict=False):  # at most three peaks
        ax_rate.axhline(peaks[dtype], color="gray", linestyle=style, label=f"{dtype} matmul peak")
    ax_time.set(xscale="log", yscale="log", xlabel="patch tokens", ylabel="seconds (min)", title="forward time")
    ax_rate.set(xscale="log", xlabel="patch tokens", ylabel="GFLOP/s", title="achieved throughput")
    ax_time.legend()
    ax_rate.legend(fontsize=8)
    fig.savefig(out, dpi=100)
