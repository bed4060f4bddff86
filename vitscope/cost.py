"""What a request will cost, estimated before it runs, from constants measured on this device at load.

A forward pass is blocks of the same shape, so its time is ``blocks x (a N + b N^2)`` for N tokens:
``a`` the per-token work (q/k/v, projection, MLP: linear in N), ``b`` the per-pair work (QK^T and
P.V: quadratic). ``CostModel.measure`` times the attention kernel alone (``b``) and one block of the
loaded model (``a``: the rest of its time) on its device; a method says how many block-equivalents it runs
(``Method.cost_blocks``). The service refuses, with 413, a request whose estimate exceeds its budget
(``ServiceConfig.cost_budget_s``, by default half of TorchServe's ``responseTimeout``): a request
that would run past the timeout makes TorchServe kill the worker and fail everything in flight.

A method's block-equivalents are declared from measurements on one machine; ``Learned`` corrects
them on this one: after each forward pass the service tells it the seconds the pass took and what
was estimated, and each method's estimates are scaled by the running geometric mean of that ratio.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .precision import probe_seconds

logger = logging.getLogger(__name__)

PROBE_TOKENS = 1025  # a 32x32 patch grid plus [CLS]: the whole block, mostly its linear work
PAIR_TOKENS = 2049  # the attention kernel alone at ~45x45 patches: its quadratic work, measured apart
PROBE_REPEATS = 2  # best of, after one warm-up
LEARNING_RATE = 0.25  # the weight of each new pass's log-ratio in a method's running correction
CORRECTION_BOUNDS = (0.25, 4.0)  # a correction stays within these: one odd pass cannot open or shut admission
MIN_OBSERVED_S = 0.005  # passes shorter than this are timer noise, not evidence


@dataclass(frozen=True)
class CostModel:
    """Seconds of one block over N tokens: ``per_token * N + per_pair * N^2`` (measured)."""

    per_token: float
    per_pair: float

    def block_seconds(self, tokens: int) -> float:
        return self.per_token * tokens + self.per_pair * tokens * tokens

    def estimate(self, tokens: int, blocks: float) -> float:
        """Seconds of ``blocks`` block-equivalents over ``tokens`` tokens ([CLS] and registers included)."""
        return blocks * self.block_seconds(tokens)

    def tokens_within(self, seconds: float, blocks: float) -> int:
        """The most tokens whose estimate stays within ``seconds`` (for the 413 message)."""
        a, b, c = self.per_pair * blocks, self.per_token * blocks, -seconds
        if a <= 0:
            return int(seconds / b) if b > 0 else 0
        return int((-b + (b * b - 4 * a * c) ** 0.5) / (2 * a))

    @classmethod
    def measure(cls, block: torch.nn.Module, dim: int, heads: int, device: torch.device) -> CostModel:
        """Time the attention kernel (SDPA, as the blocks run it) alone at ``PAIR_TOKENS`` for the
        quadratic constant, then ``block`` (one of the model's, in eval mode) at ``PROBE_TOKENS``
        for the linear one (what is left of its time). Two separate probes, so that noise cannot
        hide the quadratic term that dominates large images."""
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, PAIR_TOKENS, dim // heads, generator=generator).to(device) for _ in range(3))
        attention = probe_seconds(lambda: F.scaled_dot_product_attention(q, k, v), device, PROBE_REPEATS)
        per_pair = attention / PAIR_TOKENS**2
        x = torch.randn(1, PROBE_TOKENS, dim, generator=generator).to(device)
        whole = probe_seconds(lambda: block(x), device, PROBE_REPEATS)
        per_token = max(whole - per_pair * PROBE_TOKENS**2, 0.0) / PROBE_TOKENS
        logger.info(
            "cost model on %s: attention kernel %.3f s at %d tokens, one block %.3f s at %d (a=%.3g s/token, b=%.3g s/token^2)",
            device,
            attention,
            PAIR_TOKENS,
            whole,
            PROBE_TOKENS,
            per_token,
            per_pair,
        )
        return cls(per_token, per_pair)


@dataclass
class Learned:
    """Each method's measured seconds over its estimate, learned from the passes served (thread-safe).

    ``correction(method)`` is 1 until a pass of that method is observed, then the exponential moving
    average (weight ``LEARNING_RATE``) of log(measured / estimated), exponentiated and kept within
    ``CORRECTION_BOUNDS``. The estimates it is fed are the uncorrected ones, so it converges to the
    ratio itself rather than chasing its own output."""

    rate: float = LEARNING_RATE
    bounds: tuple[float, float] = CORRECTION_BOUNDS
    _log_ratios: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def correction(self, method: str) -> float:
        """What to multiply ``method``'s estimates by on this machine (1.0: nothing observed yet)."""
        with self._lock:
            return math.exp(self._log_ratios.get(method, 0.0))

    def observe(self, method: str, estimated_s: float, measured_s: float) -> None:
        """One forward pass of ``method``: the seconds it took and the (uncorrected) seconds estimated for it."""
        if estimated_s <= 0 or measured_s < MIN_OBSERVED_S:
            return
        low, high = (math.log(bound) for bound in self.bounds)
        ratio = math.log(measured_s / estimated_s)
        with self._lock:
            old = self._log_ratios.get(method)
            new = ratio if old is None else (1 - self.rate) * old + self.rate * ratio
            self._log_ratios[method] = min(max(new, low), high)
        logger.debug(
            "cost of %s: %.3f s measured over %.3f s estimated; correction now %.2f",
            method,
            measured_s,
            estimated_s,
            self.correction(method),
        )

    def summary(self) -> dict[str, float]:
        """Each observed method's correction (for the describe API)."""
        with self._lock:
            return {method: round(math.exp(value), 3) for method, value in sorted(self._log_ratios.items())}
