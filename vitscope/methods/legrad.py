"""``method=legrad``: LeGrad (Bousselham et al., ICCV 2025; WalBouss/LeGrad), the gradient of each
late block's score with respect to its attention, one map per target (``model/relevance.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import OptionError
from ..model import relevance
from ..targets import TARGET_OPTION
from ..vocab import ModelFacts, Options, OptionSpec, bool_option, parse_int
from .base import ForwardSpec, Needs
from .explain import SHARED_EXCLUDES, ExplainMethod, TextEmbedder

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

DEFAULT_LAYER_INDEX = -2  # LeGrad's wrapper default: the last two blocks


def _layer_index(value: object, facts: ModelFacts) -> int:
    index = parse_int("layer_index", value)
    if not -facts.depth <= index < facts.depth:
        raise OptionError(
            f"layer_index={index} is out of range: the first block explained, -{facts.depth}..{facts.depth - 1} (-2: the last two)"
        )
    return index


class LeGrad(ExplainMethod):
    name = "legrad"
    summary = (
        "LeGrad: each late block's score's gradient on its attention, positive part, over heads and queries, summed; `[targets, H, W]`"
    )
    options = (
        TARGET_OPTION,
        OptionSpec(
            "layer_index",
            "integer",
            _layer_index,
            "legrad only: the first block explained (negative: from the end), as LeGrad's `layer_index`",
            DEFAULT_LAYER_INDEX,
        ),
        bool_option("correction", 'legrad on SigLIP: zero where the map of the empty prompt "a photo of a" exceeds 0.8 (LeGrad\'s)', True),
    )
    excludes: ClassVar[Mapping[str, str]] = {
        **SHARED_EXCLUDES,
        "layer": "method=legrad explains blocks layer_index..last: give layer_index=-2 (LeGrad's default), not layer",
        "query": "method=legrad averages every query's row (and SigLIP's probe): query does not apply",
    }
    needs = Needs(
        blocks="all (the last -layer_index with autograd)",
        keeps="each explained block's queries, keys, values and the gradient of its attention output (O(N) each)",
    )
    cost_factor = 1.0  # per target and explained block; ViT-B/16 on 2 EPYC cores: 1.17x (224²), 1.02x (480²) last-layer (bench explain)

    def backward_blocks(self, options: Options) -> int:
        index, depth = options.param("layer_index"), options.layer + 1
        return -index if index < 0 else depth - index

    def run(
        self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec, goals: relevance.Goals
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = spec.param("layer_index")
        return relevance.legrad(model, batch, goals, max(0, index if index >= 0 else model.depth + index))

    def empty_prompt(self, model: VisionTransformer, images: Sequence[Options], embed_texts: TextEmbedder) -> torch.Tensor | None:
        wanted = model.attn_pool is not None and model.text is not None and any(options.param("correction") for options in images)
        return embed_texts([relevance.EMPTY_PROMPT])[0] if wanted else None


METHOD = LeGrad()
