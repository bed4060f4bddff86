"""The text tower of CLIP and SigLIP: token ids -> one embedding per text, in the image's joint space.

Token and learned position embeddings, pre-norm blocks (``layers.Block``; CLIP's causal, SigLIP's
not), the final norm, the pooled token (CLIP: the first end-of-text token; SigLIP: the last
position) and its projection. Key names are ours (``text.blocks.0.attn.qkv``, ...), converted from
open_clip's and transformers' at archive time (``keymaps.py``). Ids come from ``tokenizer.py``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .layers import Block
from .variants import TextVariant


class TextTransformer(nn.Module):
    def __init__(self, variant: TextVariant) -> None:
        super().__init__()
        self.variant = variant
        width = variant.embed_dim
        self.token_embedding = nn.Embedding(variant.vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(variant.context_length, width))
        self.blocks = nn.ModuleList(Block(variant) for _ in range(variant.depth))
        self.norm = nn.LayerNorm(width, eps=variant.eps)
        self.proj = nn.Linear(width, variant.proj_dim, bias=variant.proj_bias)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (T, L), L <= context_length -> text embeddings (T, D), not normalised."""
        T, L = ids.shape
        if self.variant.context_length < L:
            raise ValueError(f"{L} tokens exceed the text tower's context of {self.variant.context_length}")
        x = self.token_embedding(ids) + self.pos_embed[:L]  # (T, L, W)
        for blk in cast(list[Block], self.blocks):
            x = blk(x, causal=self.variant.causal)
        x = self.norm(x)
        if self.variant.pool == "last":
            pooled = x[:, -1]
        else:  # the first end-of-text token (CLIP; it is also the largest id, open_clip's argmax)
            pooled = x[torch.arange(T, device=ids.device), (ids == self.variant.eot_token_id).int().argmax(dim=-1)]
        return self.proj(pooled)  # (T, D)
