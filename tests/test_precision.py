"""The precision decision: capability flags, the matmul probe, map agreement, and what each request runs.

CPUs are forced here (``CpuInfo`` with chosen flags, probe results injected), so the decision logic
is tested for AVX2-only, avx512_bf16 and AMX machines whatever machine runs the tests.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch

from scripts import REPO
from testkit.checkpoints import TINY, backbone_state, encode, smooth_rgb
from testkit.handler import answer
from vitscope.attention import map_agreement
from vitscope.model.checkpoint import build_model
from vitscope.options import PRECISIONS
from vitscope.precision import (
    AUTO,
    BF16,
    CPU_FLAGS,
    FP16,
    FP32,
    MIN_CORRELATION,
    CpuInfo,
    PrecisionPlan,
    Speed,
    capable,
    choose,
    cpu_info,
    describe_device,
    plan_precisions,
    probe_speed,
)
from vitscope.service import AttentionService, ServiceConfig

CPU = torch.device("cpu")
AVX2_ONLY = CpuInfo("AMD EPYC (AVX2)", frozenset({"avx", "avx2", "fma"}), "AVX2")
AVX512_BF16 = CpuInfo("AMD EPYC (Zen 4)", frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512")
AMX = CpuInfo("Intel Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"}), "AVX512")


def no_probe(device: torch.device, precision: str) -> float:
    raise AssertionError(f"the matmul probe ran for {precision} on a CPU without its instructions")


def forced_speed(cpu: CpuInfo, speedups: dict[str, float]):
    """A ``speed`` function for ``plan_precisions``: this CPU's flags, these probe results."""
    return lambda device, precision: probe_speed(device, precision, cpu=cpu, speedup=lambda d, p: speedups[p])


@pytest.mark.parametrize("cpu, bf16, fp16", [(AVX2_ONLY, False, False), (AVX512_BF16, True, False), (AMX, True, True)])
def test_capability_comes_from_the_flags(cpu: CpuInfo, bf16: bool, fp16: bool) -> None:
    assert capable(CPU, BF16, cpu)[0] is bf16 and capable(CPU, FP16, cpu)[0] is fp16
    ok, why = capable(CPU, BF16, AVX2_ONLY)
    assert not ok and "emulated" in why and "avx512_bf16" in why


def test_emulating_cpu_is_never_probed() -> None:
    for precision in (BF16, FP16):
        speed = probe_speed(CPU, precision, cpu=AVX2_ONLY, speedup=no_probe)
        assert not speed.fast and speed.speedup is None and "not native on this CPU" in speed.reason


def test_capable_but_slow_in_the_probe_is_not_fast() -> None:
    slow = probe_speed(CPU, BF16, cpu=AVX512_BF16, speedup=lambda d, p: 0.9)
    fast = probe_speed(CPU, BF16, cpu=AVX512_BF16, speedup=lambda d, p: 2.2)
    assert not slow.fast and "0.90x" in slow.reason
    assert fast.fast and fast.speedup == 2.2 and "avx512_bf16" in fast.reason


def test_choose_fastest_accurate_precision() -> None:
    bf, hf = Speed(True, 2.0, ""), Speed(True, 4.0, "")
    native, auto, why = choose({BF16: bf, FP16: Speed(False, None, "")}, {BF16: 0.9999})
    assert native == (BF16,) and auto == BF16 and "2.00x fp32" in why
    native, auto, _ = choose({BF16: bf, FP16: hf}, {BF16: 0.9999, FP16: 0.9999})
    assert native == (FP16, BF16) and auto == FP16  # fp16 twice as fast
    native, auto, _ = choose({BF16: Speed(True, 3.9, ""), FP16: hf}, {BF16: 0.9999, FP16: 0.9999})
    assert auto == BF16  # as fast within the tie margin: bf16 (fp32's range) is preferred
    native, auto, why = choose({BF16: bf, FP16: hf}, {BF16: 0.998, FP16: 0.0})
    assert native == (FP16, BF16) and auto == FP32 and f"< {MIN_CORRELATION}" in why
    assert choose({BF16: Speed(False, None, ""), FP16: Speed(False, None, "")}, {})[1] == FP32


def test_plan_resolves_each_request() -> None:
    plan = PrecisionPlan("cpu", (BF16,), BF16)
    assert [plan.resolve(p) for p in PRECISIONS] == [FP32, BF16, BF16, BF16]  # fp16 not native: runs auto's pick
    fp32_only = PrecisionPlan.fp32_only()
    assert [fp32_only.resolve(p) for p in PRECISIONS] == [FP32] * 4
    with pytest.raises(ValueError, match="unknown precision"):
        plan.resolve("fp8")


def test_agreement_is_checked_only_for_fast_precisions() -> None:
    asked: list[str] = []

    def agreement(precision: str) -> float:
        asked.append(precision)
        return 0.9999

    avx2 = plan_precisions(CPU, agreement, speed=forced_speed(AVX2_ONLY, {}))
    assert (avx2.native, avx2.auto, asked) == ((), FP32, [])
    amx = plan_precisions(CPU, agreement, speed=forced_speed(AMX, {BF16: 5.0, FP16: 1.05}))
    assert (amx.native, amx.auto, asked) == ((BF16,), BF16, [BF16])
    assert "1.05x fp32" in amx.reasons[FP16] and "auto -> bf16" in amx.summary()


def test_plan_is_logged_with_its_reasons(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="vitscope.precision"):
        plan_precisions(CPU, lambda p: 1.0, speed=forced_speed(AVX2_ONLY, {}))
    assert "auto -> fp32" in caplog.text and "not native on this CPU" in caplog.text


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(TINY, backbone_state(seed=6))


def service_on(model: torch.nn.Module, cpu: CpuInfo, speedups: dict[str, float]) -> AttentionService:
    """The service as it decides on a machine with ``cpu`` (its own map-agreement check included)."""
    config = ServiceConfig(model="dino_vitt16", weights="test")
    plan = plan_precisions(CPU, lambda p: map_agreement(model, CPU, p), speed=forced_speed(cpu, speedups))
    return AttentionService(model, TINY, config, precisions=plan)


def decode(reply) -> tuple[dict, np.ndarray]:
    """(metadata, maps) of a json, npy or npz reply."""
    if reply.content_type == "application/json":
        doc = orjson.loads(reply.body)
        return doc, np.asarray(doc.pop("attention"), dtype=np.float32)
    if reply.content_type == "application/x-npy":
        return orjson.loads(reply.headers["X-Attention-Meta"]), np.load(io.BytesIO(reply.body), allow_pickle=False)
    with np.load(io.BytesIO(reply.body), allow_pickle=False) as archive:
        return json.loads(str(archive["meta"])), archive["attention"]


@pytest.mark.parametrize("fmt", ["json", "npy", "npz"])
def test_avx2_machine_runs_reduced_requests_in_fp32_and_says_so(model: torch.nn.Module, fmt: str) -> None:
    service = service_on(model, AVX2_ONLY, {})
    data = encode(smooth_rgb(64, 96))
    _, reference = decode(answer(service, [{"data": data, "scale": "1", "format": fmt}])[0])
    for requested in (BF16, FP16, AUTO):
        (reply,) = answer(service, [{"data": data, "scale": "1", "format": fmt, "precision": requested}])
        meta, maps = decode(reply)
        assert reply.status == 200 and reply.headers["X-Attention-Precision"] == FP32
        assert meta["precision"] == FP32 and meta["precision_requested"] == requested
        np.testing.assert_array_equal(maps, reference)  # the very fp32 computation: no emulated cost


def test_bf16_machine_runs_bf16_for_auto(model: torch.nn.Module) -> None:
    service = service_on(model, AMX, {BF16: 5.0, FP16: 0.5})
    assert service.precisions.native == (BF16,) and service.precisions.auto == BF16
    data = encode(smooth_rgb(64, 96))
    replies = answer(service, [{"data": data, "scale": "1", "precision": p} for p in (FP32, AUTO, FP16)])
    (_, exact), (auto_meta, auto), (fp16_meta, _) = (decode(r) for r in replies)
    assert auto_meta["precision"] == BF16 and fp16_meta["precision"] == BF16  # fp16 slow here: auto's pick
    assert not np.array_equal(auto, exact)  # bf16 really ran
    assert min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(exact, auto, strict=True)) >= MIN_CORRELATION


def test_this_machine_decides_by_its_flags(model: torch.nn.Module) -> None:
    """On whatever CPU runs this: no flag, no bf16; the decision and the CPU are described."""
    service = AttentionService(model, TINY, ServiceConfig(model="dino_vitt16", weights="test"))
    info = cpu_info()
    for precision in (BF16, FP16):
        if not info.has_any(CPU_FLAGS[precision]):
            assert precision not in service.precisions.native
    assert service.precisions.auto in (FP32, *service.precisions.native)
    assert info.capability in describe_device(CPU) and "avx512_bf16=" in describe_device(CPU)


def test_emulated_bf16_is_rejected_by_the_probe() -> None:
    """With oneDNN and MKL held to AVX2 (bf16 emulated on any x86 CPU) the matmul probe says no."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    code = "import torch; from vitscope.precision import probe_speed; s = probe_speed(torch.device('cpu'), 'bf16'); print(s.fast, s.reason)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False "), out.stdout
