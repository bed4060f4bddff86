"""The benchmark script: runs end to end on a tiny configuration in seconds (figures are not
asserted), and its report never states an impossible figure for a precision that is not native."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench import bench_attention
from bench.bench_attention import Machine, Result
from dino_attention.model.variants import get_variant
from dino_attention.precision import PrecisionPlan, Speed, probe_speed


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    args = [
        "--model",
        "vit_tiny",
        "--patch",
        "16",
        "--sizes",
        "32x48",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--method-sizes",
        "32x48",
        "--sections",
        "forward",
        "methods",
        "families",
        "encoding",
        "engines",
        "--requests",
        "2",
        "--families",
        "dinov2_vits14_reg:28x42",
        "--out",
        str(tmp_path),
        "--name",
        "tiny",
    ]
    assert bench_attention.main(args) == 0
    report = (tmp_path / "tiny.md").read_text()
    assert report.startswith("# Benchmark: dino_vitt16\n")
    for fact in ("- Machine: ", "avx512_bf16=", "amx_bf16=", "torch CPU capability", f"torch {torch.__version__}", "precision=auto runs"):
        assert fact in report
    for row in (
        "| 32x48 | 6 | seed |",
        "| 32x48 | 6 | fp32 |",
        "orjson, upsample=false",
        "max |seed - fp32|",
        "| 32x48 | 6 | layers_all |",
    ):
        assert row in report
    for row in ("| 32x48 | 6 | rollout |", "max |rollout - naive| / max", "| 32x48 | 6 | rollout_naive |"):
        assert row in report
    for row in ("| dinov2_vits14_reg | 28x42 | 6 | eager N x N |", "| dinov2_vits14_reg | 28x42 | 6 | ours (SDPA + [CLS] row) |"):
        assert row in report
    assert report.count("max |seed - fp32| = ") == 2  # the forward section's and the families section's
    assert (
        "| TorchServe 0.12.0 |" in report
        and "| KServe model server (kserve_engine) |" in report
        and "KServe p50 / TorchServe p50: " in report
    )
    for precision in ("bf16", "fp16"):  # timed where native, else named as skipped with the reason
        speed = probe_speed(torch.device("cpu"), precision)
        row = f"| 32x48 | 6 | {precision} | {speed.reason}: skipped |"
        assert (row in report) is not speed.fast
        assert (f"{precision} not measured" in report) is not speed.fast
    assert (tmp_path / "tiny.png").stat().st_size > 1000


def test_report_on_an_emulating_cpu_says_na_never_meets() -> None:
    """An AVX2-only CPU: bf16 rows and targets read "not native ... skipped" and "n/a here"."""
    emulated = Speed(False, None, "not native on this CPU (no amx_bf16 or avx512_bf16: emulated)")
    machine = Machine(
        torch.device("cpu"),
        "AMD EPYC; avx2=yes avx512_bf16=no",
        {"bf16": emulated, "fp16": emulated},
        {"fp32": 100.0},
        PrecisionPlan.fp32_only(why="nothing faster"),
    )
    results = [
        Result("seed", (480, 480), 3600, times=[6.0], peak_rss_mb=2000, loaded_rss_mb=800, gflops=60),
        Result("fp32", (480, 480), 3600, times=[2.0], peak_rss_mb=900, loaded_rss_mb=800, gflops=150),
        Result("bf16", (480, 480), 3600, skipped=emulated.reason),
        Result("fp16", (480, 480), 3600, skipped=emulated.reason),
    ]
    args = argparse.Namespace(model="vit_small", patch=8, sizes=[(480, 480)], throughput_requests=0)
    report = bench_attention.report(results, machine, [], None, [], args)
    assert "| 480x480 | 3600 | bf16 | not native on this CPU (no amx_bf16 or avx512_bf16: emulated): skipped |" in report
    assert "- bf16 path vs seed at 480x480: n/a here: bf16 not native on this CPU" in report
    assert "- bf16 path at 480x480, fraction of the bf16 matmul peak: n/a here" in report
    assert "on a GPU (bf16/fp16) < 0.1 s: n/a here" in report
    assert "fp32 path vs seed at 480x480: 3.0x (MISSES target >= 3.5)" in report
    assert "bf16 not measured" in report and "bf16 matmul peak (meets" not in report
    assert [line for line in report.splitlines() if "bf16" in line and "meets" in line] == []


def test_flop_count_of_our_path_is_below_the_seeds() -> None:
    variant = get_variant("vit_small", 8)
    ours, seed = (bench_attention.forward_flops(variant, (480, 480), path) for path in ("fp32", "seed"))
    assert 0.8 * seed < ours < seed  # the last block's N x N attention and its MLP are skipped
