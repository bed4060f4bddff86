"""``method=chefer``: Chefer et al.'s relevance (CVPR 2021 / ICCV 2021, rules 5-6 of
Transformer-MM-Explainability): gradient x attention, positive part, over heads, propagated through
every block as R = R + cam R; the map is the pooling query's row of R (``model/relevance.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch

from ..model import relevance
from ..targets import TARGET_OPTION
from .base import ForwardSpec, Needs
from .explain import SHARED_EXCLUDES, ExplainMethod

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer


class Chefer(ExplainMethod):
    name = "chefer"
    summary = "Chefer's rule: R = R + mean_heads(clamp(grad x attention)) R through every block, the pooling query's row; `[targets, H, W]`"
    options = (TARGET_OPTION,)
    excludes: ClassVar[Mapping[str, str]] = {
        **SHARED_EXCLUDES,
        "layer": "method=chefer propagates relevance through every block: layer does not apply",
    }
    needs = Needs(
        blocks="all, with autograd", keeps="every block's queries, keys, values and the gradient of its attention output (O(N) each)"
    )
    cost_factor = 3.0  # per target and block; ViT-B/16 on 2 EPYC cores: 2.34x (224²), 2.55x (480²), 8 prompts 4.6-5.6x one: errs high

    def run(
        self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec, goals: relevance.Goals
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return relevance.chefer(model, batch, goals, model.query_index(spec.query))


METHOD = Chefer()
