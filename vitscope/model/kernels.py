"""The attention kernel of the blocks, chosen by measurement on the device at load, per element type
and token range: no speed constant measured on one machine decides for another.

Candidates, all ``softmax(q k^T / sqrt(d)) v`` with memory linear in N:

* ``sdpa``: PyTorch's fused ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels);
* ``chunked``: query-chunked matmuls, ``chunk`` query rows at a time (QK^T and P.V as large GEMMs
  that oneDNN/MKL run on AMX or AVX-512 where present; one (B, heads, chunk, N) block of scores).

``plan_kernels`` times each candidate on tensors of the model's shape at a few token counts and
keeps ``chunked`` only where it beats SDPA by ``MIN_GAIN``; each measured count decides the range
up to the geometric middle of it and the next. A process measures each (device, dtypes, shape) once:
a second model of that shape (a model registered beside another, a benchmark's next configuration)
runs the plan measured for the first. ``SDPA_ONLY`` is the plan before (or without) one.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

from ..precision import probe_seconds

logger = logging.getLogger(__name__)

SDPA, CHUNKED = "sdpa", "chunked"
PROBE_TOKENS = (1025, 2049)  # token counts timed: a 32x32 and a ~45x45 patch grid plus [CLS]
CHUNKS = (64, 256)  # query rows per chunk tried for ``chunked``
MIN_GAIN = 1.1  # chunked must be this much faster than SDPA to be kept (one timed run: a clear win only)
PROBE_REPEATS = 1  # timed runs after a warm-up (the gap to beat, MIN_GAIN, absorbs the noise)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, heads, N, d) x3 -> (B, heads, N, d), ``chunk`` query rows at a time; scores in q's dtype,
    the scale folded into the keys."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # strided bf16 GEMMs are slow
    k_t = k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, d, N)
    out = torch.empty_like(q)
    for start in range(0, q.shape[-2], chunk):
        rows = slice(start, start + chunk)
        weights = (q[..., rows, :] @ k_t).softmax(dim=-1)  # (B, heads, chunk, N)
        torch.matmul(weights, v, out=out[..., rows, :])
    return out


@dataclass(frozen=True)
class KernelChoice:
    """One kernel for the token counts up to ``up_to`` (inclusive; the last choice covers any count)."""

    kernel: str  # SDPA or CHUNKED
    up_to: float
    chunk: int = 0  # query rows per chunk (CHUNKED only)

    def describe(self) -> str:
        return SDPA if self.kernel == SDPA else f"{CHUNKED}({self.chunk})"


@dataclass(frozen=True)
class KernelPlan:
    """Which kernel runs the attention of each element type and token count (SDPA where none is chosen)."""

    choices: dict[torch.dtype, tuple[KernelChoice, ...]] = field(default_factory=dict)
    measured: tuple[str, ...] = ()  # what was timed, for the log and the benchmark's header

    def choice(self, dtype: torch.dtype, tokens: int) -> KernelChoice:
        for choice in self.choices.get(dtype, ()):
            if tokens <= choice.up_to:
                return choice
        return KernelChoice(SDPA, math.inf)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v with the kernel chosen for q's dtype and token count."""
        choice = self.choice(q.dtype, q.shape[-2])
        return sdpa(q, k, v) if choice.kernel == SDPA else chunked(q, k, v, choice.chunk)

    def summary(self) -> str:
        if not self.choices:
            return "attention kernel: sdpa (not measured)"
        parts = []
        for dtype, choices in self.choices.items():
            ranges = ", ".join(
                f"{c.describe()} up to {int(c.up_to)} tokens" if math.isfinite(c.up_to) else f"{c.describe()} beyond" for c in choices
            )
            parts.append(f"{str(dtype).removeprefix('torch.')}: {ranges}")
        return "attention kernel: " + "; ".join(parts)


SDPA_ONLY = KernelPlan()
ATTENTION_KERNELS = ("auto", "sdpa")  # the handler setting attention_kernel: plan_kernels at load, or SDPA_ONLY


def plan_kernels(
    device: torch.device, dtypes: Sequence[torch.dtype], heads: int, head_dim: int, tokens: Sequence[int] = PROBE_TOKENS
) -> KernelPlan:
    """Time SDPA and ``chunked`` (each of ``CHUNKS``) on (1, heads, N, head_dim) tensors of each dtype
    at each of ``tokens``; per dtype, the winner of each count for the range around it. Measured once
    per process for each set of arguments (the plan is immutable); later calls return that plan."""
    return _measured_plan(torch.device(device), tuple(dtypes), heads, head_dim, tuple(tokens))


@lru_cache(maxsize=64)
def _measured_plan(device: torch.device, dtypes: tuple[torch.dtype, ...], heads: int, head_dim: int, tokens: tuple[int, ...]) -> KernelPlan:
    """``plan_kernels``'s measurement, cached by its (hashable) arguments."""
    generator = torch.Generator().manual_seed(0)
    choices: dict[torch.dtype, tuple[KernelChoice, ...]] = {}
    measured = []
    for dtype in dtypes:
        picks = []
        for n in tokens:
            q, k, v = (torch.randn(1, heads, n, head_dim, generator=generator).to(device, dtype) for _ in range(3))
            times = {(SDPA, 0): probe_seconds(partial(sdpa, q, k, v), device, PROBE_REPEATS)}
            for chunk in CHUNKS:
                times[(CHUNKED, chunk)] = probe_seconds(partial(chunked, q, k, v, chunk), device, PROBE_REPEATS, 2 * times[(SDPA, 0)])
            (kernel, chunk), best = min(times.items(), key=lambda item: item[1])
            if kernel == CHUNKED and best * MIN_GAIN > times[(SDPA, 0)]:
                kernel, chunk = SDPA, 0
            picks.append((kernel, chunk))
            timed = ", ".join(f"{name}{f'({c})' if c else ''} {t * 1000:.1f} ms" for (name, c), t in times.items())
            measured.append(f"{str(dtype).removeprefix('torch.')} at {n} tokens: {timed}")
        bounds = [math.sqrt(a * b) for a, b in itertools.pairwise(tokens)] + [math.inf]
        choices[dtype] = tuple(KernelChoice(kernel, bound, chunk) for (kernel, chunk), bound in zip(picks, bounds, strict=True))
    plan = KernelPlan(choices, tuple(measured))
    logger.info("%s (measured on %s: %s)", plan.summary(), device, "; ".join(measured))
    return plan
