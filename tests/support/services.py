"""The one factory of the services in-process tests use (a small constructed model, exact fp32)."""

from __future__ import annotations

import torch

from testkit.checkpoints import TINY
from vitscope.cost import CostModel
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import Variant
from vitscope.precision import PrecisionPlan
from vitscope.predictions import Predictor
from vitscope.service import AttentionService, ServiceConfig


def tiny_service(
    variant: Variant = TINY,
    state: dict[str, torch.Tensor] | None = None,
    *,
    model: torch.nn.Module | None = None,
    weights: str = "test",
    cost_budget_s: float | None = None,
    cost: CostModel | None = None,
    predictor: Predictor | None = None,
    **settings: object,
) -> AttentionService:
    """An ``AttentionService`` over ``variant`` built from ``state`` (None: random weights, seeded 0) or
    an already built ``model``, with handler ``settings`` (e.g. ``short_side=32``). Precisions are
    planned fp32-only, so no test pays for the device probe unless it asks for one itself. A ``cost``
    given is used as it is (``cost_learning`` off unless ``settings`` turn it on): the test is about
    the rule, not this machine's timings."""
    if model is None:
        torch.manual_seed(0)
        model = build_model(variant, state)
    learning = {"cost_learning": False} if cost is not None else {}
    config = ServiceConfig.from_mapping({"model": variant.name, "weights": weights, **learning, **settings})
    return AttentionService(
        model, variant, config, precisions=PrecisionPlan.fp32_only(), cost_budget_s=cost_budget_s, cost=cost, predictor=predictor
    )
