"""The Vision Transformer (inference only), with a fast path for the attention of the query it pools by.

One class, as timm's ``VisionTransformer``, whose ``Variant`` flags build DINO, DINOv2 (with and
without registers) and DINOv3 backbones, supervised ViT/DeiT classifiers and the CLIP and SigLIP
image towers with their heads, projections and text towers (``text.py``). State_dict keys are the
official DINO code's and timm's (``blocks.0.attn.qkv``, ``head``, ``attn_pool``), so official DINO
checkpoints load with ``strict=True`` and other libraries' are renamed once, at archive time
(``keymaps.py``). Dropout and stochastic depth are omitted: they hold no parameters and do nothing at
inference. Tokens are ``[CLS], [DIST] (DeiT), registers (DINOv2 _reg) / storage (DINOv3), patches``;
SigLIP has no [CLS] and pools by an attention-pool probe over the last block's tokens.

The *query* of a model's maps is the one it pools by (``Variant.queries``): [CLS] (token 0), DeiT's
distillation token (token 1) or SigLIP's probe, which attends over a block's normed output tokens.

Attention path, decided once here:
* blocks before the requested layer run the attention kernel chosen for the device, element type
  and token count by measurement at load (``kernels.py``: fused SDPA, or query-chunked matmuls where
  they were measured faster; no N x N tensor either way; SDPA until a plan is set, ``use_kernels``);
* the requested block computes only the query's row of attention, (B, heads, N);
* blocks after it never run, unless the request wants predictions (``recording_final``): then they
  run once, in the same pass, for the head.
``explicit=True`` switches every block to the reference maths, an explicit N x N softmax as DINO's
``get_last_selfattention`` (and the seed article) compute it: tests check the two paths agree and
the benchmark times both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import KernelPlan
from .layers import AttentionPool, Block, PatchEmbed
from .position import Rope, RopePositionEmbedding, resize_pos_embed
from .text import TextTransformer
from .variants import CLS, FAMILIES, HEAD_BLOCKS, PROBE, Variant, resolve_layer


@dataclass
class Recording:
    """What one recorded pass keeps for the predictions (``VisionTransformer.recording_final``)."""

    model: VisionTransformer
    final: list[torch.Tensor] = field(default_factory=list)  # ``head_tokens``, once the last block has run
    earlier: dict[int, torch.Tensor] = field(default_factory=dict)  # block index -> its normed [CLS] (cls4_mean heads)

    def note(self, index: int, tokens: torch.Tensor) -> None:
        """Keep block ``index``'s normed [CLS] if a cls4_mean head reads it."""
        model = self.model
        if model.variant.head_input == "cls4_mean" and model.depth - HEAD_BLOCKS <= index < model.depth - 1:
            self.earlier[index] = model.norm(tokens[:, 0])  # (B, C)


RECORDING: ContextVar[Recording | None] = ContextVar("vitscope_recording", default=None)


class VisionTransformer(nn.Module):
    """A ViT as its ``Variant`` describes it: a DINO-family backbone, or a supervised classifier, a
    CLIP or a SigLIP model with its heads (``head``/``head_dist``, ``proj``, ``attn_pool``) and text tower."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        dim = variant.embed_dim
        self.variant = variant
        self.patch_size = variant.patch_size
        self.num_heads = variant.num_heads
        self.num_prefix_tokens = variant.num_prefix_tokens
        self.patch_embed = PatchEmbed(variant.patch_size, dim, bias=variant.patch_bias)
        if variant.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if variant.distill_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed: nn.Parameter | None = None
        self.rope_embed: RopePositionEmbedding | None = None
        if variant.rope_base is None:
            self.pos_embed = nn.Parameter(torch.zeros(1, variant.num_class_tokens + variant.pretrain_grid**2, dim))
        else:
            self.rope_embed = RopePositionEmbedding(dim // variant.num_heads, variant.rope_base)
        if variant.num_registers:  # named as the family names them: register_tokens or storage_tokens
            self.register_parameter(variant.register_key, nn.Parameter(torch.zeros(1, variant.num_registers, dim)))
        if FAMILIES[variant.family].mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the official checkpoints; unused at inference
        self.norm_pre = nn.LayerNorm(dim, eps=variant.eps) if variant.pre_norm else None
        self.blocks = nn.ModuleList(Block(variant) for _ in range(variant.depth))
        self.norm = nn.LayerNorm(dim, eps=variant.eps)
        self.attn_pool = AttentionPool(variant) if variant.pool == "map" else None
        self.head: nn.Linear | None = None
        self.head_dist: nn.Linear | None = None
        if variant.num_classes:
            inputs = {"token_mean": 2, "cls4_mean": 1 + HEAD_BLOCKS}.get(variant.head_input, 1)  # features of C each
            self.head = nn.Linear(dim * inputs, variant.num_classes)
            self.head_dist = nn.Linear(dim, variant.num_classes) if variant.distill_token and variant.head_input == "token" else None
        self.proj = nn.Linear(dim, variant.proj_dim, bias=False) if variant.proj_dim else None
        self.text: TextTransformer | None = None
        if variant.text is not None:
            self.text = TextTransformer(variant.text)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's init; SigLIP's checkpoints set theirs
            if variant.logit_bias:
                self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        for name in ("pos_embed", "cls_token", "dist_token", variant.register_key):
            if isinstance(parameter := getattr(self, name, None) if name else None, nn.Parameter):
                nn.init.trunc_normal_(parameter, std=0.02)
        self.apply(_init_weights)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def registers(self) -> torch.Tensor:
        """The register/storage tokens, (1, R, C); (1, 0, C) for a model without them."""
        if not self.variant.num_registers:
            return self.patch_embed.proj.weight.new_zeros(1, 0, self.variant.embed_dim)
        return cast(torch.Tensor, getattr(self, self.variant.register_key))

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Learned position embedding for a (grid_h, grid_w) patch grid: (1, P + grid_h * grid_w, C),
        P the class tokens' positions ([CLS], DeiT's distillation token; none for SigLIP)."""
        if self.pos_embed is None:
            raise ValueError(f"{self.variant.name} has no position embedding (it uses RoPE)")
        v = self.variant
        return resize_pos_embed(self.pos_embed, grid_h, grid_w, v.interpolate_offset, v.interpolate_antialias, v.num_class_tokens)

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, Rope | None]:
        """(B, 3, H, W) image batch -> tokens (B, P + R + H/p * W/p, C): the P class tokens ([CLS],
        DeiT's distillation token), R registers, the patches, with their positions; and the patches'
        RoPE (DINOv3) or None.

        Learned positions are added to the class tokens and the patches; the registers come after,
        without one (DINOv2). DINOv3's positions are the rotations its blocks apply. CLIP then norms
        every token (``norm_pre``).
        """
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}; crop it first")
        patches = self.patch_embed(x)  # (B, n, C)
        prefix = [getattr(self, name).expand(B, -1, -1) for name in ("cls_token", "dist_token") if hasattr(self, name)]
        classes = torch.cat(prefix, dim=1) if prefix else patches[:, :0]  # (B, P, C)
        if self.pos_embed is not None:
            pos = self.interpolate_pos_encoding(H // p, W // p)  # (1, P + n, C)
            P = classes.shape[1]
            classes, patches = classes + pos[:, :P], patches + pos[:, P:]
        tokens = torch.cat((classes, self.registers.expand(B, -1, -1), patches), dim=1)  # (B, P + R + n, C)
        if self.norm_pre is not None:
            tokens = self.norm_pre(tokens)
        rope = self.rope_embed(H // p, W // p) if self.rope_embed is not None else None
        return tokens, rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled image: the normed [CLS] token of the last block (SigLIP: its attention pool), (B, C)."""
        return self.pool(self.final_tokens(x))

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the last block, normed: (B, 3, H, W) -> (B, N, C)."""
        tokens, rope = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens, rope)
        return self.norm(tokens)

    def pool(self, normed: torch.Tensor) -> torch.Tensor:
        """The last block's normed tokens (B, N, C) -> the pooled image (B, C): [CLS], or SigLIP's probe."""
        return self.attn_pool(normed) if self.attn_pool is not None else normed[:, 0]

    def logits(self, normed: torch.Tensor, earlier: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's logits from the last block's normed tokens (B, N, C): (B, classes). DeiT's
        distilled models average the [CLS] and distillation heads, as timm and transformers do at inference.
        ``earlier``: a cls4_mean head's normed [CLS] of the 3 blocks before the last (B, 3, C)."""
        if self.head is None:
            raise ValueError(f"{self.variant.name} has no classifier head")
        v = self.variant
        mean = normed[:, v.num_prefix_tokens :].mean(dim=1)  # (B, C): the patches' mean
        if v.head_input == "token_mean":  # DINOv2's linear classifier: [CLS] with the patches' mean
            return self.head(torch.cat((normed[:, 0], mean), dim=-1))
        if v.head_input == "cls4_mean":  # DINOv2's linear4: the last 4 blocks' [CLS], then the mean
            if earlier is None:
                raise ValueError(f"{v.name}'s head reads the [CLS] of its last {HEAD_BLOCKS} blocks: give earlier")
            return self.head(torch.cat((*earlier.unbind(1), normed[:, 0], mean), dim=-1))
        logits = self.head(self.pool(normed))
        if self.head_dist is not None:
            logits = (logits + self.head_dist(normed[:, 1])) / 2
        return logits

    def embed_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """The pooled image (B, C) in the joint image-text space (CLIP's projection): (B, D), not normalised."""
        return self.proj(pooled) if self.proj is not None else pooled

    def zero_shot(self, image: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, D) against text embeddings (T, D): the scaled cosines (B, T), plus
        SigLIP's bias (its sigmoid, CLIP's softmax over the texts, is the caller's)."""
        cosines = F.normalize(image.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T  # (B, T)
        scores = cosines * self.logit_scale.float().exp()
        return scores + self.logit_bias.float() if self.variant.logit_bias else scores

    def head_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the predictions read, from a pass of its own: the last block's normed tokens (B, N, C), and
        for a cls4_mean head the normed [CLS] of the 3 blocks before it (B, 3, C)."""
        recording = Recording(self)
        tokens, rope = self.prepare_tokens(x)
        self._run_rest(recording, tokens, 0, rope)
        return recording.final

    @contextmanager
    def recording_final(self, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
        """Within it, the layered passes below (``get_cls_attention_layers``, ``get_features_and_cls_attention``,
        rollout) also run the blocks after the ones they need, once, and append what the predictions read
        (``head_tokens``) to the list it yields: the predictions come from the same forward pass. The
        recording belongs to the calling context (a ``ContextVar``): passes in other threads or tasks
        never see it; it does not nest."""
        if self._recording() is not None:
            raise RuntimeError("recording_final does not nest: one pass records at a time")
        recording = Recording(self)
        token = RECORDING.set(recording if enabled else None)
        try:
            yield recording.final
        finally:
            RECORDING.reset(token)

    def _recording(self) -> Recording | None:
        recording = RECORDING.get()
        return recording if recording is not None and recording.model is self else None

    @property
    def recording(self) -> bool:
        """Whether a ``recording_final`` wants what the predictions read from the pass now running."""
        recording = self._recording()
        return recording is not None and not recording.final

    def note(self, index: int, tokens: torch.Tensor) -> None:
        """While recording for a cls4_mean head: keep the normed [CLS] of block ``index``'s output ``tokens``."""
        recording = self._recording()
        if recording is not None and not recording.final:
            recording.note(index, tokens)

    def finish(self, tokens: torch.Tensor, ran: int, rope: Rope | None) -> None:
        """While ``recording_final``: run blocks ``ran..`` on ``tokens`` (the output of the first ``ran``) and record the result."""
        recording = self._recording()
        if recording is not None and not recording.final:
            self._run_rest(recording, tokens, ran, rope)

    def _run_rest(self, recording: Recording, tokens: torch.Tensor, ran: int, rope: Rope | None) -> None:
        for index, blk in enumerate(cast(list[Block], self.blocks)[ran:], start=ran):
            tokens = blk(tokens, rope)
            recording.note(index, tokens)
        recording.final.append(self.norm(tokens))
        if self.variant.head_input == "cls4_mean":
            wanted = range(self.depth - HEAD_BLOCKS, self.depth - 1)
            if any(i not in recording.earlier for i in wanted):  # a pass that did not note them: predictions run their own
                recording.final.clear()
                return
            recording.final.append(torch.stack([recording.earlier[i] for i in wanted], dim=1))  # (B, 3, C)

    def use_kernels(self, plan: KernelPlan) -> None:
        """Run every block's attention with the kernels ``plan`` chose (``kernels.plan_kernels``)."""
        for blk in cast(list[Block], self.blocks):
            blk.attn.kernels = plan

    @property
    def kernels(self) -> KernelPlan:
        return cast(list[Block], self.blocks)[0].attn.kernels

    def query_index(self, query: str | None) -> int | None:
        """The token whose attention row a map is of (None: SigLIP's probe); ``query`` None: the model's own."""
        query = query or self.variant.queries[0]
        if query not in self.variant.queries:
            raise ValueError(f"query={query!r}: {self.variant.name} pools by {list(self.variant.queries)}")
        return None if query == PROBE else (0 if query == CLS else 1)

    def probe_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """SigLIP's probe over a block's output tokens (B, N, C), normed with the final norm as the
        model pools: (B, heads, N)."""
        assert self.attn_pool is not None
        return self.attn_pool.weights(self.norm(tokens))

    def get_cls_attention_layers(self, x: torch.Tensor, layers: list[int], query: str | None = None) -> torch.Tensor:
        """The pooling query's attention rows of several blocks in one forward pass: (B, 3, H, W) ->
        (B, len(layers), heads, N).

        N = P + R + patches: the class tokens, the registers, then the patches in raster order.
        ``layers``: block indices (0..depth-1), returned in the order given; blocks after the deepest
        never run. A token query's row is of the block's attention; SigLIP's probe attends over the
        block's output tokens (so the last block's is the pooling the model does).
        """
        wanted = {resolve_layer(layer, self.depth) for layer in layers}
        index = self.query_index(query)
        tokens, rope = self.prepare_tokens(x)
        rows: dict[int, torch.Tensor] = {}
        blocks = cast(list[Block], self.blocks)
        deepest = max(wanted)
        for i, blk in enumerate(blocks[: deepest + 1]):
            if index is not None and i in wanted:
                rows[i] = blk.cls_attention(tokens, rope, index=index)  # (B, heads, N)
            if i < deepest or index is None:
                tokens = blk(tokens, rope)
                self.note(i, tokens)
            if index is None and i in wanted:
                rows[i] = self.probe_attention(tokens)  # (B, heads, N)
        if self.recording:
            if index is not None:  # block ``deepest`` has not run: run it for the rest
                tokens = blocks[deepest](tokens, rope)
                self.note(deepest, tokens)
            self.finish(tokens, deepest + 1, rope)
        return torch.stack([rows[resolve_layer(layer, self.depth)] for layer in layers], dim=1)

    def get_patch_features(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The patch tokens after block ``layer`` (default: the last), normed with the final norm as the
        official ``get_intermediate_layers(norm=True)`` / ``x_norm_patchtokens`` do: (B, 3, H, W) ->
        (B, H/p * W/p, C), raster order; the class and register/storage tokens are left out."""
        return self.get_features_and_cls_attention(x, layer, with_attention=False)[0]

    def get_features_and_cls_attention(
        self, x: torch.Tensor, layer: int | None = None, with_attention: bool = True, query: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normed patch features after block ``layer`` (B, H/p * W/p, C) and, from the same pass,
        that block's attention row of the pooling query (B, heads, N) (None without ``with_attention``)."""
        layer = resolve_layer(layer, self.depth)
        index = self.query_index(query)
        tokens, rope = self.prepare_tokens(x)
        blocks = cast(list[Block], self.blocks)
        for i, blk in enumerate(blocks[:layer]):
            tokens = blk(tokens, rope)
            self.note(i, tokens)
        rows = blocks[layer].cls_attention(tokens, rope, index=index) if with_attention and index is not None else None
        tokens = blocks[layer](tokens, rope)
        self.note(layer, tokens)
        if with_attention and index is None:
            rows = self.probe_attention(tokens)  # (B, heads, N)
        self.finish(tokens, layer + 1, rope)
        return self.norm(tokens[:, self.num_prefix_tokens :]), rows  # (B, n, C), (B, heads, N)

    def get_cls_attention(
        self, x: torch.Tensor, layer: int | None = None, explicit: bool = False, query: str | None = None
    ) -> torch.Tensor:
        """The pooling query's attention row of block ``layer`` (default: the last): (B, 3, H, W) -> (B, heads, N).

        Token order as in ``get_cls_attention_layers``. ``explicit``: the reference path (N x N
        softmax in every block), for tests and benchmarks; otherwise the served path,
        ``get_cls_attention_layers`` for one layer.
        """
        layer = resolve_layer(layer, self.depth)
        if not explicit:
            return self.get_cls_attention_layers(x, [layer], query)[:, 0]
        index = self.query_index(query)
        tokens, rope = self.prepare_tokens(x)
        blocks = cast(list[Block], self.blocks)  # nn.ModuleList is typed as holding any Module
        for blk in blocks[:layer]:
            tokens = blk(tokens, rope, explicit=True)
        if index is None:
            return self.probe_attention(blocks[layer](tokens, rope, explicit=True))
        return blocks[layer].cls_attention(tokens, rope, explicit=True, index=index)


def _init_weights(m: nn.Module) -> None:
    """timm/DINO's initialisation (only matters for random-weight archives and tests)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
