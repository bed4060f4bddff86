"""What a request will cost, estimated before it runs, from constants measured on this device at load.

A forward pass is blocks of the same shape, so its time is ``blocks x (a N + b N^2)`` for N tokens:
``a`` the per-token work (q/k/v, projection, MLP: linear in N), ``b`` the per-pair work (QK^T and
P.V: quadratic). ``CostModel.measure`` times the attention kernel alone (``b``) and one block of the
loaded model (``a``: the rest of its time) on its device; a method says how many block-equivalents it runs
(``Method.cost_blocks``). The service refuses, with 413, a request whose estimate exceeds its budget
(``ServiceConfig.cost_budget_s``, by default half of TorchServe's ``responseTimeout``): a request
that would run past the timeout makes TorchServe kill the worker and fail everything in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .precision import probe_seconds

logger = logging.getLogger(__name__)

PROBE_TOKENS = 1025  # a 32x32 patch grid plus [CLS]: the whole block, mostly its linear work
PAIR_TOKENS = 2049  # the attention kernel alone at ~45x45 patches: its quadratic work, measured apart
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
