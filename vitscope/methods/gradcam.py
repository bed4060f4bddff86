"""``method=gradcam``: Grad-CAM (Selvaraju et al. 2017) on the tokens of a block, as pytorch-grad-cam's
ViT recipe (``target_layers=[blocks[layer].norm1]``), with our token layout: the class and register
tokens dropped, any grid (``model/relevance.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch

from ..model import relevance
from ..targets import TARGET_OPTION
from ..vocab import Options
from .base import ForwardSpec, Needs
from .explain import SHARED_EXCLUDES, ExplainMethod

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer


class GradCam(ExplainMethod):
    name = "gradcam"
    summary = (
        "Grad-CAM on block `layer`'s normed input tokens (pytorch-grad-cam's ViT recipe, any grid, registers dropped); `[targets, H, W]`"
    )
    options = (TARGET_OPTION,)
    excludes: ClassVar[Mapping[str, str]] = {
        **SHARED_EXCLUDES,
        "query": "method=gradcam weighs the patch tokens' channels: query does not apply",
    }
    needs = Needs(blocks="all (layer..last with autograd)", keeps="block layer's normed input tokens and their gradient")
    cost_factor = 3.0  # per target; ViT-B/16 on 2 EPYC cores: 1.19x (224²), 1.05x (480²) a last-layer request

    def backward_blocks(self, options: Options) -> int:
        return 1  # from the head to block layer: one block at the default (the last); deeper requests err low

    def run(
        self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec, goals: relevance.Goals
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return relevance.gradcam(model, batch, goals, spec.layers[0])


METHOD = GradCam()
