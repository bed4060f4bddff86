"""The benchmark script runs end to end on a tiny configuration (figures are not asserted)."""
from __future__ import annotations

from pathlib import Path

from bench import bench_attention
from model.variants import get_variant


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    args = ["--model", "vit_tiny", "--patch", "16", "--sizes", "32x48", "64x64", "--repeats", "1",
            "--sections", "forward", "encoding", "--out", str(tmp_path), "--name", "tiny"]
    assert bench_attention.main(args) == 0
    report = (tmp_path / "tiny.md").read_text()
    for row in ("| 32x48 | 6 | seed |", "| 64x64 | 16 | fp32 |", "| 64x64 | 16 | bf16 |", "orjson, upsample=false"):
        assert row in report
    assert "max |seed - fp32|" in report and (tmp_path / "tiny.png").stat().st_size > 1000


def test_flop_count_of_our_path_is_below_the_seeds() -> None:
    variant = get_variant("vit_small", 8)
    ours, seed = (bench_attention.forward_flops(variant, (480, 480), path) for path in ("fp32", "seed"))
    assert 0.8 * seed < ours < seed  # the last block's N x N attention and its MLP are skipped
