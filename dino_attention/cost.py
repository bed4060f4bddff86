"""What a request will cost, estimated before it runs, from constants measured on this device at load.

A forward pass is blocks of the same shape, so its time is ``blocks x (a N + b N^2)`` for N tokens:
``a`` the per-token work (q/k/v, projection, MLP: linear in N), ``b`` the per-pair work (QK^T and
P.V: quadratic). ``CostModel.measure`` times one block of the loaded model at two token counts on
its device and solves for both; a method says how many block-equivalents it runs
(``Method.cost_blocks``). The service refuses, with 413, a request whose estimate exceeds its budget
(``ServiceConfig.cost_budget_s``, by default half of TorchServe's ``responseTimeout``): a request
that would run past the timeout makes TorchServe kill the worker and fail everything in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from .precision import _synchronize

logger = logging.getLogger(__name__)

PROBE_TOKENS = (1025, 2049)  # 32x32 and ~45x45 patch grids plus [CLS]: the quadratic term is ~half the block's time
PROBE_REPEATS = 2  # best of, after one warm-up


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
    def measure(cls, block: torch.nn.Module, dim: int, device: torch.device, rope: object = None) -> CostModel:
        """Time ``block`` (one of the model's, in eval mode) on random tokens of width ``dim`` at
        ``PROBE_TOKENS`` and solve for the linear and quadratic constants (clamped at 0: noise)."""
        seconds = []
        generator = torch.Generator().manual_seed(0)
        for n in PROBE_TOKENS:
            x = torch.randn(1, n, dim, generator=generator).to(device)
            best = float("inf")
            with torch.inference_mode():
                for i in range(PROBE_REPEATS + 1):
                    start = time.perf_counter()
                    block(x, rope)
                    _synchronize(device)
                    if i:  # the first run is a warm-up
                        best = min(best, time.perf_counter() - start)
            seconds.append(best)
        (n1, n2), (t1, t2) = PROBE_TOKENS, seconds
        per_pair = max((t2 / n2 - t1 / n1) / (n2 - n1), 0.0)  # t/n = a + b n: a line through both points
        per_token = max(t1 / n1 - per_pair * n1, 0.0)
        model = cls(per_token, per_pair)
        logger.info(
            "cost model on %s: one block %.3f s at %d tokens, %.3f s at %d (a=%.3g s/token, b=%.3g s/token^2)",
            device,
            t1,
            n1,
            t2,
            n2,
            per_token,
            per_pair,
        )
        return model
