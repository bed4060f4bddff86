"""``method=attention`` (the default): the [CLS] query's attention over the patches, per head, in
one block (``layer``) or several (``layers``), from one forward pass that keeps only the [CLS] rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..vocab import Options
from .base import ForwardSpec, Needs
from .maps import MapMethod, split_rows

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer


class Attention(MapMethod):
    name = "attention"
    summary = "the attention of the pooling query (`[CLS]`) in a block, per head (of several blocks with `layers`)"
    needs = Needs(blocks="0..layer (the deepest of layers)", keeps="the pooling query's row of each block asked for")

    def forward_spec(self, options: Options) -> ForwardSpec:
        return ForwardSpec(self.name, options.layers or (options.layer,), query=options.query)  # heads are chosen afterwards

    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        rows = model.get_cls_attention_layers(batch, list(spec.layers), spec.query)  # (B, layers, heads, N)
        return split_rows(model, rows, *batch.shape[-2:])

    def select(self, options: Options, grid: np.ndarray, registers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        heads = list(options.heads)
        return grid[:, heads], registers[:, heads]  # (layers, heads asked, H/p, W/p), (layers, heads asked, R)


METHOD = Attention()
