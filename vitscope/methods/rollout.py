"""``method=rollout``: attention rollout (Abnar & Zuidema 2020) through blocks 0..layer, one map with
the heads fused, exact in memory linear in the tokens (``model/rollout.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch

from ..model.rollout import HEAD_FUSIONS, cls_rollout
from ..vocab import Options, choice_option, fraction_option
from .base import ForwardSpec, Needs
from .maps import MapMethod, split_rows

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer


class Rollout(MapMethod):
    name = "rollout"
    summary = "attention rollout through blocks `0..layer`: one map `[1, H, W]`, the heads fused"
    options = (
        choice_option("head_fusion", HEAD_FUSIONS, "mean", "rollout only: `mean`, `max` or `min` over heads"),
        fraction_option(
            "discard_ratio", "[0, 1)", "rollout only, in `[0, 1)`: share of each fused row's weakest entries dropped", default=0.0
        ),
    )
    excludes: ClassVar[Mapping[str, str]] = {
        "heads": "heads does not apply to method=rollout: rollout fuses all heads (choose how with head_fusion)",
        "layers": "method=rollout returns one map, the rollout through blocks 0..layer: give layer=N, not layers",
    }
    needs = Needs(blocks="0..layer", keeps="every block's queries and keys (O(N) each; never an N x N matrix)")
    cost_factor = 2.0  # its second pass over every block's attention: 1.5-1.9x a last-layer request measured; admission errs high

    def forward_spec(self, options: Options) -> ForwardSpec:
        return ForwardSpec(self.name, (options.layer,), options.params, options.query)

    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        row = cls_rollout(model, batch, spec.layers[0], spec.param("head_fusion"), spec.param("discard_ratio"), query=spec.query)  # (B, N)
        return split_rows(model, row[:, None, None], *batch.shape[-2:])  # one layer, one map


METHOD = Rollout()
