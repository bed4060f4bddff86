"""Forward-pass precision: which reduced precisions this device runs natively fast, decided once.

A request names a precision (``fp32``, ``bf16``, ``fp16`` or ``auto``); the service runs the
*resolved* one and reports it. The decision is made once per model load (``plan_precisions``):

1. **Capability.** CUDA: bf16 where the GPU supports it natively (Ampere and newer), fp16 always.
   CPU: bf16 only with the ``avx512_bf16`` or ``amx_bf16`` instruction sets, fp16 only with
   ``amx_fp16`` or ``avx512_fp16``; without them PyTorch emulates the arithmetic (~25x slower than
   fp32 on AVX2-only CPUs). Flags come from ``/proc/cpuinfo`` (Linux), else from PyTorch's own
   ``torch.cpu._is_*_supported`` checks.
2. **Speed.** A capable precision must also win a short matmul probe (ViT-S MLP-sized GEMM, best of
   a few runs): at least ``MIN_SPEEDUP`` x fp32's throughput. The probe runs only where step 1
   allows it, so an emulating CPU never pays for it.
3. **Agreement** (for ``auto`` only): the model's last-layer maps of a fixed probe input, in the
   candidate precision, must correlate >= ``MIN_CORRELATION`` with fp32's for every head.

``auto`` runs the fastest precision that passes all three, fp32 if none does. An explicit ``bf16``
or ``fp16`` the device cannot run fast runs as ``auto`` instead (so it never costs more than fp32),
and the response's ``precision`` says what ran.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Forward-pass arithmetic: fp32 is exact; what bf16/fp16/auto run as is decided per device (below).
PRECISIONS: tuple[str, str, str, str] = ("fp32", "bf16", "fp16", "auto")
FP32, BF16, FP16, AUTO = PRECISIONS  # what a request or model-config.yaml may name
AUTOCAST_DTYPES: dict[str, torch.dtype] = {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}
PREFERENCE: tuple[str, ...] = (BF16, FP16)  # tie-break between equally fast reduced precisions (bf16: fp32's range)
MIN_SPEEDUP = 1.1  # a reduced precision counts as fast when its matmul probe beats fp32 by this factor
MIN_CORRELATION = 0.999  # auto picks a precision only if its maps correlate this well with fp32's
TIE = 0.9  # within this fraction of the fastest speed-up, PREFERENCE decides
CPU_FLAGS: dict[str, tuple[str, ...]] = {  # /proc/cpuinfo flags that make a precision native on x86
    BF16: ("amx_bf16", "avx512_bf16"),
    FP16: ("amx_fp16", "avx512_fp16"),
}
REPORTED_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
PROBE_SHAPE = (1024, 384, 1536)  # (tokens, dim, hidden): one ViT-S MLP GEMM at 1024 tokens
# On a GPU that GEMM takes microseconds in any precision: the launch, not the arithmetic, would be
# timed (every precision ~1x fp32). A ViT-B MLP GEMM at 8192 tokens keeps the GPU busy for long enough.
GPU_PROBE_SHAPE = (8192, 768, 3072)
PROBE_REPEATS = 5


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU is and which of the flags that matter for precision it has."""

    model_name: str
    flags: frozenset[str]
    capability: str  # torch.backends.cpu.get_cpu_capability(): the ATen kernel set in use

    def has_any(self, names: tuple[str, ...]) -> bool:
        return any(name in self.flags for name in names)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context a forward pass in ``precision`` (fp32, bf16 or fp16) runs under; off for fp32."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], enabled=precision != FP32)


def _proc_cpuinfo() -> tuple[str, frozenset[str]] | None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    model, flags = "", frozenset[str]()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once: /proc/cpuinfo where there is one, else PyTorch's ISA checks."""
    found = _proc_cpuinfo()
    if found is not None and found[1]:
        model, flags = found
    else:
        checks = {
            "avx2": torch.cpu._is_avx2_supported,
            "avx512f": torch.cpu._is_avx512_supported,
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported,
            "amx_bf16": torch.cpu._is_amx_tile_supported,
            "amx_fp16": torch.cpu._is_amx_fp16_supported,
        }
        model, flags = platform.processor() or platform.machine(), frozenset(k for k, check in checks.items() if check())
    return CpuInfo(model or "unknown CPU", flags, torch.backends.cpu.get_cpu_capability())


def describe_device(device: torch.device) -> str:
    """One line naming the hardware: the GPU's name, or the CPU's model, flags and ATen capability."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    info = cpu_info()
    flags = " ".join(f"{flag}={'yes' if flag in info.flags else 'no'}" for flag in REPORTED_FLAGS)
    return f"{info.model_name}; {flags}; torch CPU capability {info.capability}; {torch.get_num_threads()} threads"


def capable(device: torch.device, precision: str, cpu: CpuInfo | None = None) -> tuple[bool, str]:
    """Whether the hardware has native arithmetic for ``precision`` (bf16/fp16), and why."""
    if device.type == "cuda":
        if precision == BF16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            return False, "this GPU has no native bf16"
        return True, "native on this GPU"
    if device.type != "cpu":
        return False, f"no precision probe for {device.type} devices"
    cpu = cpu or cpu_info()
    wanted = CPU_FLAGS[precision]
    present = [flag for flag in wanted if flag in cpu.flags]
    if not present:
        return False, f"not native on this CPU (no {' or '.join(wanted)}: emulated)"
    return True, f"CPU has {'+'.join(present)}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_seconds(run: Callable[[], object], device: torch.device, repeats: int, give_up_after: float = float("inf")) -> float:
    """Best time of ``repeats`` runs of ``run`` on ``device`` after a warm-up run (allocation, kernel
    selection). The warm-up is timed too: if it takes over ``give_up_after`` seconds, ``run`` is
    clearly slow and that time is returned without more runs. The probe of every decision made
    at load: precisions, attention kernels (``model/kernels.py``), the cost model (``cost.py``)."""
    best = float("inf")
    with torch.inference_mode():
        if device.type == "cuda":  # a GPU's first call of a kernel loads it lazily: not the kernel's speed
            run()
            _synchronize(device)
        for i in range(1 + repeats):
            start = time.perf_counter()
            run()
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if i == 0 and elapsed > give_up_after:
                return elapsed
            if i:
                best = min(best, elapsed)
    return best


def matmul_seconds(device: torch.device, dtype: torch.dtype, give_up_after: float = float("inf")) -> float:
    """Best-of-``PROBE_REPEATS`` time of the probe GEMM in ``dtype`` on ``device`` (``probe_seconds``)."""
    tokens, dim, hidden = GPU_PROBE_SHAPE if device.type == "cuda" else PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, dim, generator=gen).to(device, dtype)
    b = torch.randn(dim, hidden, generator=gen).to(device, dtype)
    return probe_seconds(lambda: a @ b, device, PROBE_REPEATS, give_up_after)


@functools.cache
def matmul_speedup(device: torch.device, precision: str) -> float:
    """fp32 probe time / ``precision`` probe time on ``device`` (measured once per process).

    An emulated precision (say 50x slower) is recognised from its first run, in ~50 fp32 probe times.
    """
    fp32 = matmul_seconds(device, torch.float32)
    return fp32 / matmul_seconds(device, AUTOCAST_DTYPES[precision], give_up_after=10 * fp32)


@dataclass(frozen=True)
class Speed:
    """The verdict on one reduced precision: natively fast or not, with the measured speed-up and why."""

    fast: bool
    speedup: float | None  # fp32 time / its time in the matmul probe; None when not probed
    reason: str


def probe_speed(
    device: torch.device,
    precision: str,
    *,
    cpu: CpuInfo | None = None,
    speedup: Callable[[torch.device, str], float] = matmul_speedup,
) -> Speed:
    """Capability check, then (only if capable) the matmul probe: is ``precision`` fast on ``device``?"""
    ok, why = capable(device, precision, cpu)
    if not ok:
        return Speed(False, None, why)
    ratio = speedup(device, precision)
    if ratio < MIN_SPEEDUP:
        return Speed(False, ratio, f"{why}, but its matmul probe runs at {ratio:.2f}x fp32 (< {MIN_SPEEDUP}x)")
    return Speed(True, ratio, f"{why}; matmul probe {ratio:.2f}x fp32")


@dataclass(frozen=True)
class PrecisionPlan:
    """The load-time decision: what each requested precision runs as on this model and device."""

    device: str
    native: tuple[str, ...]  # reduced precisions that run natively fast, fastest first
    auto: str  # what ``auto`` (and a non-native explicit request) runs
    reasons: dict[str, str] = field(default_factory=dict)  # per reduced precision / auto: why

    def resolve(self, requested: str) -> str:
        """The precision that runs for a request of ``requested`` (one of ``options.PRECISIONS``)."""
        if requested == FP32:
            return FP32
        if requested in self.native:
            return requested
        if requested in (AUTO, BF16, FP16):
            return self.auto
        raise ValueError(f"unknown precision {requested!r}; choose one of {list(PRECISIONS)}")

    def summary(self) -> str:
        parts = [f"{p}: {self.reasons[p]}" for p in PREFERENCE if p in self.reasons]
        return f"precision on {self.device}: auto -> {self.auto} ({self.reasons.get(AUTO, '')}); " + "; ".join(parts)

    @classmethod
    def fp32_only(cls, device: str = "cpu", why: str = "reduced precision disabled") -> PrecisionPlan:
        """A plan that runs every request in fp32 (tests, or an operator who wants exactness everywhere)."""
        return cls(device, (), FP32, dict.fromkeys((*PREFERENCE, AUTO), why))


def choose(speeds: dict[str, Speed], agreement: dict[str, float]) -> tuple[tuple[str, ...], str, str]:
    """Pure decision from the probes: (native precisions fastest first, auto's choice, why).

    ``agreement`` holds the min per-head correlation with fp32 of each native precision's maps.
    """
    native = sorted((p for p, s in speeds.items() if s.fast), key=lambda p: -(speeds[p].speedup or 0.0))
    accurate = [p for p in native if agreement.get(p, 0.0) >= MIN_CORRELATION]
    if not accurate:
        rejected = [f"{p} maps correlate {agreement.get(p, float('nan')):.5f} < {MIN_CORRELATION}" for p in native]
        return tuple(native), FP32, "no faster precision" + (f" ({'; '.join(rejected)})" if rejected else "")
    best = speeds[accurate[0]].speedup or 0.0
    near = [p for p in accurate if (speeds[p].speedup or 0.0) >= TIE * best]
    pick = min(near, key=PREFERENCE.index)
    return tuple(native), pick, f"{speeds[pick].speedup:.2f}x fp32 in the probe, maps correlate {agreement[pick]:.5f}"


def plan_precisions(
    device: torch.device,
    agreement: Callable[[str], float],
    *,
    speed: Callable[[torch.device, str], Speed] = probe_speed,
) -> PrecisionPlan:
    """Decide once per model load what each precision runs as; logs the decision with its reasons.

    ``agreement(precision)``: the model's min per-head map correlation with fp32 in ``precision``
    (``attention.map_agreement``); asked only for the precisions that are fast.
    """
    speeds = {p: speed(device, p) for p in PREFERENCE}
    agreement_of = {p: agreement(p) for p, s in speeds.items() if s.fast}
    native, auto, why = choose(speeds, agreement_of)
    reasons = {p: s.reason for p, s in speeds.items()}
    for p, corr in agreement_of.items():
        reasons[p] += f", maps correlate {corr:.5f} with fp32"
    plan = PrecisionPlan(str(device), native, auto, {**reasons, AUTO: why})
    logger.info("%s", plan.summary())
    return plan
