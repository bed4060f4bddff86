"""The DINO-family Vision Transformer (inference only), with a fast path for [CLS] attention.

One module builds DINO, DINOv2 (with and without registers) and DINOv3 backbones from their row in
``variants.py``; state_dict keys are identical to the official code's, so official checkpoints
load with ``strict=True``. Dropout and stochastic depth are omitted: they hold no parameters and
do nothing at inference. Tokens are ``[CLS], registers (DINOv2 _reg) / storage (DINOv3), patches``.

Attention path, decided once here:
* blocks before the requested layer run the attention kernel chosen for the device, element type
  and token count by measurement at load (``kernels.py``: fused SDPA, or query-chunked matmuls where
  they were measured faster; no N x N tensor either way; SDPA until a plan is set, ``use_kernels``);
* the requested block computes only the [CLS] query's row of attention, (B, heads, N);
* blocks after it never run.
``explicit=True`` switches every block to the reference maths, an explicit N x N softmax as DINO's
``get_last_selfattention`` (and the seed article) compute it: tests check the two paths agree and
the benchmark times both.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import SDPA_ONLY, KernelPlan
from .position import Rope, RopePositionEmbedding, apply_rope, resize_pos_embed
from .variants import FAMILIES, FFNS, Variant, resolve_layer

QKStore = list[tuple[torch.Tensor, torch.Tensor]]  # per block: (scaled queries, transposed keys)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p * W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFused(nn.Module):
    """DINOv2 ViT-g's FFN: one projection ``w12`` to both halves, silu(x1) * x2, then ``w3``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class SwiGLU(nn.Module):
    """DINOv3's SwiGLU FFN (ViT-S+): separate ``w1``, ``w2``, then ``w3``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(dim, hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


# The module of each FFN the variants table names (variants.FFNS: the names, in this order).
FFN_MODULES: dict[str, type[nn.Module]] = dict(zip(FFNS, (Mlp, SwiGLUFused, SwiGLU), strict=True))


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (DINOv2, DINOv3): x * gamma."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MaskedBiasLinear(nn.Linear):
    """DINOv3's qkv projection: its bias is multiplied by a stored ``bias_mask`` (zero on the keys)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        mask = torch.ones(out_features)
        mask[out_features // 3 : 2 * out_features // 3] = 0.0  # the key third, as the official init
        self.register_buffer("bias_mask", mask, persistent=True)
        self.bias_mask: torch.Tensor

    @property
    def effective_bias(self) -> torch.Tensor:
        return self.bias * self.bias_mask.to(self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.effective_bias)


class Attention(nn.Module):
    """Multi-head self-attention; ``rope`` (DINOv3) rotates the patch tokens' queries and keys."""

    def __init__(self, dim: int, num_heads: int, mask_k_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = MaskedBiasLinear(dim, dim * 3) if mask_k_bias else nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.kernels: KernelPlan = SDPA_ONLY  # the model's plan (VisionTransformer.use_kernels)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def _qkv(self, x: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        # One copy into (3, B, heads, N, d): q, k, v contiguous, the layout kernels.plan_kernels measures on
        # (CPU SDPA alone was 7-17% slower in fp32 on the strided views; end to end within noise: bench/results/gpu.md).
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # each (B, heads, N, d)
        return apply_rope(q, rope), apply_rope(k, rope), v

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """One of the qkv projections (0: queries, 1: keys, 2: values): (B, N, C) -> (B, heads, N, d)."""
        weight = self.qkv.weight.chunk(3)[part]  # (C, C)
        bias = self.qkv.effective_bias if isinstance(self.qkv, MaskedBiasLinear) else self.qkv.bias
        return self._split_heads(F.linear(x, weight, bias.chunk(3)[part]))

    def queries_keys(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled queries and keys, each (B, heads, N, d): ``q @ k^T`` are the attention logits."""
        return apply_rope(self._project(x, 0), rope) * self.scale, apply_rope(self._project(x, 1), rope)

    def explicit_weights(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference maths: the full softmax matrix (B, heads, N, N) and the values (B, heads, N, d)."""
        q, k, v = self._qkv(x, rope)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1), v

    def forward(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, keep: QKStore | None = None) -> torch.Tensor:
        """``keep``: a list to append (scaled queries, transposed keys) to, (B, heads, N, d) and
        (B, heads, d, N), for a later pass over this block's attention (rollout)."""
        B, N, C = x.shape
        if explicit:
            weights, v = self.explicit_weights(x, rope)
            x = weights @ v  # (B, heads, N, d)
        else:
            q, k, v = self._qkv(x, rope)
            if keep is not None:
                keep.append(((q * self.scale).contiguous(), k.transpose(-2, -1).contiguous()))
            x = self.kernels.attend(q, k, v)  # (B, heads, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def cls_attention(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False) -> torch.Tensor:
        """Softmax attention of the [CLS] query (token 0) over all N tokens: (B, N, C) -> (B, heads, N).

        Only the CLS query and the keys are projected (no values, no N x N scores), unless ``explicit``.
        [CLS] is a prefix token, so RoPE leaves its query as it is.
        """
        if explicit:
            return self.explicit_weights(x, rope)[0][:, :, 0]  # the CLS row of (B, heads, N, N)
        q = self._project(x[:, :1], 0)  # (B, heads, 1, d)
        k = apply_rope(self._project(x, 1), rope)  # (B, heads, N, d)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
        return logits.float().softmax(dim=-1).squeeze(2)  # (B, heads, N), fp32 even under bf16


class Block(nn.Module):
    def __init__(self, variant: Variant) -> None:
        super().__init__()
        dim = variant.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=variant.eps)
        self.attn = Attention(dim, variant.num_heads, variant.mask_k_bias)
        scale = variant.layerscale_init
        self.ls1 = LayerScale(dim, scale) if scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=variant.eps)
        self.mlp = FFN_MODULES[variant.ffn](dim, variant.ffn_hidden)
        self.ls2 = LayerScale(dim, scale) if scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, keep: QKStore | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, explicit, keep))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def cls_attention(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N): this block's [CLS] attention row."""
        return self.attn.cls_attention(self.norm1(x), rope, explicit)


class VisionTransformer(nn.Module):
    """A DINO, DINOv2 or DINOv3 backbone (no head), as its ``Variant`` describes it."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        dim = variant.embed_dim
        self.variant = variant
        self.patch_size = variant.patch_size
        self.num_heads = variant.num_heads
        self.num_prefix_tokens = variant.num_prefix_tokens
        self.patch_embed = PatchEmbed(variant.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed: nn.Parameter | None = None
        self.rope_embed: RopePositionEmbedding | None = None
        if variant.rope_base is None:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + variant.pretrain_grid**2, dim))
        else:
            self.rope_embed = RopePositionEmbedding(dim // variant.num_heads, variant.rope_base)
        if variant.num_registers:  # named as the family names them: register_tokens or storage_tokens
            self.register_parameter(variant.register_key, nn.Parameter(torch.zeros(1, variant.num_registers, dim)))
        if FAMILIES[variant.family].mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the official checkpoints; unused at inference
        self.blocks = nn.ModuleList(Block(variant) for _ in range(variant.depth))
        self.norm = nn.LayerNorm(dim, eps=variant.eps)
        for parameter in (self.pos_embed, self.cls_token, self.registers if variant.num_registers else None):
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=0.02)
        self.apply(_init_weights)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def registers(self) -> torch.Tensor:
        """The register/storage tokens, (1, R, C); (1, 0, C) for a model without them."""
        if not self.variant.num_registers:
            return self.cls_token[:, :0]
        return cast(torch.Tensor, getattr(self, self.variant.register_key))

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Learned position embedding for a (grid_h, grid_w) patch grid: (1, 1 + grid_h * grid_w, C)."""
        if self.pos_embed is None:
            raise ValueError(f"{self.variant.name} has no position embedding (it uses RoPE)")
        v = self.variant
        return resize_pos_embed(self.pos_embed, grid_h, grid_w, v.interpolate_offset, v.interpolate_antialias)

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, Rope | None]:
        """(B, 3, H, W) image batch -> tokens (B, 1 + R + H/p * W/p, C), [CLS] then R registers then
        the patches, with their positions; and the patches' RoPE (DINOv3) or None.

        Learned positions are added to [CLS] and the patches; the registers come after, without one
        (DINOv2). DINOv3's positions are the rotations its blocks apply.
        """
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}; crop it first")
        patches = self.patch_embed(x)  # (B, n, C)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, C)
        if self.pos_embed is not None:
            pos = self.interpolate_pos_encoding(H // p, W // p)  # (1, 1 + n, C)
            cls, patches = cls + pos[:, :1], patches + pos[:, 1:]
        tokens = torch.cat((cls, self.registers.expand(B, -1, -1), patches), dim=1)  # (B, 1 + R + n, C)
        rope = self.rope_embed(H // p, W // p) if self.rope_embed is not None else None
        return tokens, rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's embedding: normalised [CLS] features of the last block, (B, C)."""
        tokens, rope = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens, rope)
        return self.norm(tokens)[:, 0]

    def use_kernels(self, plan: KernelPlan) -> None:
        """Run every block's attention with the kernels ``plan`` chose (``kernels.plan_kernels``)."""
        for blk in cast(list[Block], self.blocks):
            blk.attn.kernels = plan

    @property
    def kernels(self) -> KernelPlan:
        return cast(list[Block], self.blocks)[0].attn.kernels

    def get_cls_attention_layers(self, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """[CLS] attention rows of several blocks in one forward pass: (B, 3, H, W) -> (B, len(layers), heads, N).

        N = 1 + R + patches: [CLS], the registers, then the patches in raster order. ``layers``: block
        indices (0..depth-1), returned in the order given; blocks after the deepest never run.
        """
        wanted = {resolve_layer(layer, self.depth) for layer in layers}
        tokens, rope = self.prepare_tokens(x)
        rows: dict[int, torch.Tensor] = {}
        blocks = cast(list[Block], self.blocks)
        for index, blk in enumerate(blocks[: max(wanted) + 1]):
            if index in wanted:
                rows[index] = blk.cls_attention(tokens, rope)  # (B, heads, N)
            if index < max(wanted):
                tokens = blk(tokens, rope)
        return torch.stack([rows[resolve_layer(layer, self.depth)] for layer in layers], dim=1)

    def get_patch_features(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The patch tokens after block ``layer`` (default: the last), normed with the final norm as the
        official ``get_intermediate_layers(norm=True)`` / ``x_norm_patchtokens`` do: (B, 3, H, W) ->
        (B, H/p * W/p, C), raster order; [CLS] and the register/storage tokens are left out."""
        return self.get_features_and_cls_attention(x, layer, with_attention=False)[0]

    def get_features_and_cls_attention(
        self, x: torch.Tensor, layer: int | None = None, with_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normed patch features after block ``layer`` (B, H/p * W/p, C) and, from the same pass,
        that block's [CLS] attention row (B, heads, N) (None without ``with_attention``)."""
        layer = resolve_layer(layer, self.depth)
        tokens, rope = self.prepare_tokens(x)
        blocks = cast(list[Block], self.blocks)
        for blk in blocks[:layer]:
            tokens = blk(tokens, rope)
        rows = blocks[layer].cls_attention(tokens, rope) if with_attention else None  # (B, heads, N)
        tokens = blocks[layer](tokens, rope)
        return self.norm(tokens[:, self.num_prefix_tokens :]), rows  # (B, n, C), (B, heads, N)

    def get_cls_attention(self, x: torch.Tensor, layer: int | None = None, explicit: bool = False) -> torch.Tensor:
        """[CLS] attention row of block ``layer`` (default: the last): (B, 3, H, W) -> (B, heads, N).

        Token order as in ``get_cls_attention_layers``. ``explicit``: the reference path (N x N
        softmax in every block), for tests and benchmarks; otherwise the served path,
        ``get_cls_attention_layers`` for one layer.
        """
        layer = resolve_layer(layer, self.depth)
        if not explicit:
            return self.get_cls_attention_layers(x, [layer])[:, 0]
        tokens, rope = self.prepare_tokens(x)
        blocks = cast(list[Block], self.blocks)  # nn.ModuleList is typed as holding any Module
        for blk in blocks[:layer]:
            tokens = blk(tokens, rope, explicit=True)
        return blocks[layer].cls_attention(tokens, rope, explicit=True)


def _init_weights(m: nn.Module) -> None:
    """timm/DINO's initialisation (only matters for random-weight archives and tests)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
