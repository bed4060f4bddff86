"""Admission: when a request's answer is of no use (its deadline) and what it may cost.

``ingest`` is where a decoded request enters the service, in every engine: its images get the
deadline its protocol named (a v2 ``timeout``, X-Request-Timeout, X-Deadline) or the model's
``deadline_s``. Before the forward pass, ``admit`` refuses (413) a request whose estimated cost
(``cost.py``) is over the budget, and ``drop_late`` answers 504 for images whose deadline has passed
or would pass before their forward pass ends; neither is computed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..cost import CostModel
from ..errors import DeadlineExceeded, PayloadTooLarge, RequestError
from ..image import PreparedImage
from ..methods import Method
from ..model.variants import Variant
from ..protocols.base import Decoded
from ..vocab import DEFAULT_METHOD, Options

logger = logging.getLogger(__name__)

ADMISSION_SHARE = 0.5  # cost_budget_s = this share of the responseTimeout: the estimate's margin of error


@dataclass(frozen=True)
class Prepared:
    """One validated request, ready for the network."""

    tensor: torch.Tensor  # (3, H, W), normalised
    image: PreparedImage
    options: Options
    method: Method  # the method the options name
    precision: str  # what runs: options.precision resolved by the service's PrecisionPlan
    preprocess_ms: float
    cost_s: float = 0.0  # the estimated seconds of its forward pass and predictions (0: no cost model)
    deadline: float | None = None  # unix time; see ImageRequest
    blocks: float = 0.0  # the block-equivalents its pass runs (the method's, and the head's rest), for the 413 message


def ingest(decoded: Decoded, received: float, default_timeout_s: float | None = None) -> Decoded:
    """A decoded request's images with their deadline set: from when it was ``received`` (unix time),
    the timeout and deadline its protocol named (``Decoded.timed``), else ``default_timeout_s``."""
    at = deadline(received, decoded.timeout_s, decoded.deadline, default_timeout_s)
    return replace(decoded, requests=[replace(request, deadline=at) for request in decoded.requests])


def deadline(received: float, timeout_s: float | None, at: float | None, default_timeout_s: float | None = None) -> float | None:
    """A request's deadline (unix time) from when it was received, the timeout it names (else
    ``default_timeout_s``, if any) and an absolute deadline ``at`` it names; None: none."""
    timeout_s = timeout_s if timeout_s is not None else default_timeout_s
    candidates = [t for t in (received + timeout_s if timeout_s is not None else None, at) if t is not None]
    return min(candidates) if candidates else None


def drop_late(items: list[Prepared | RequestError]) -> None:
    """Images whose deadline has passed, or would pass before their estimated forward pass ends, get
    504 and are not computed."""
    now = time.time()
    for i, item in enumerate(items):
        if not isinstance(item, Prepared) or item.deadline is None:
            continue
        if now >= item.deadline:
            why = f"its deadline passed {now - item.deadline:.1f} s before its forward pass could start (it waited in the queue)"
        elif now + item.cost_s > item.deadline:
            why = f"its forward pass would take ~{seconds(item.cost_s)} s and end after its deadline, {item.deadline - now:.1f} s away"
        else:
            continue
        error = DeadlineExceeded(f"not computed: {why}; retry with a longer timeout, or when the server is less busy")
        logger.info("request dropped (%d): %s", error.status, error)
        items[i] = error


def admit(items: list[Prepared | RequestError], cost: CostModel | None, budget_s: float | None, variant: Variant) -> None:
    """Refuse (413) the images of a request whose estimated cost, together, exceeds the budget."""
    good = [item for item in items if isinstance(item, Prepared)]
    total = sum(item.cost_s for item in good)
    if cost is None or budget_s is None or total <= budget_s:
        return
    error = PayloadTooLarge(over_budget(good, total, cost, budget_s, variant))
    logger.info("request rejected (%d): %s", error.status, error)
    for i, item in enumerate(items):
        if isinstance(item, Prepared):
            items[i] = error


def over_budget(items: Sequence[Prepared], total: float, cost: CostModel, budget_s: float, variant: Variant) -> str:
    """The 413 message: the estimate, the budget, and how to come within it."""
    largest = max(items, key=lambda item: item.cost_s)
    method = largest.method
    blocks = largest.blocks or method.cost_blocks(largest.options)
    h, w = largest.image.image_size
    p, prefix = variant.patch_size, variant.num_prefix_tokens
    fits = max(cost.tokens_within(budget_s / len(items), blocks) - prefix, 1)  # patch tokens
    side = int(p * (fits * min(h, w) / max(h, w)) ** 0.5)  # the short side, at this image's aspect, that fits
    several = f" ({len(items)} images together)" if len(items) > 1 else ""
    ways = [f"lower short_side (about {side} px fits this image)"]
    if p < 16:
        ways.append(f"use a patch-16 model ({(16 / p) ** 2:.0f}x fewer tokens)")
    if largest.options.faithfulness:
        steps = largest.options.faithfulness_steps
        ways.append(f"lower faithfulness_steps (now {steps}: each curve is {steps + 1} whole forward passes) or ask one metric")
    if method.name != DEFAULT_METHOD:
        ways.append(f"use method={DEFAULT_METHOD}")
    return (
        f"this request{several} would take ~{seconds(total)} s on this server ({(h // p) * (w // p)} patch tokens through "
        f"{blocks:g} block-equivalents of {variant.name}, {method.name}), over its budget of {seconds(budget_s)} s "
        f"per request (cost_budget_s; by default half the responseTimeout): {', or '.join(ways)}"
    )


def seconds(value: float) -> str:
    """Seconds for a message: two significant digits below 10 s, whole seconds above."""
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"
