"""DINO's Vision Transformer (inference only), with a fast path for [CLS] attention.

state_dict keys are identical to DINO's ``vision_transformer.py`` so its checkpoints load with
``strict=True``. Dropout and stochastic depth are omitted: they hold no parameters and do nothing
at inference.

Attention path, decided once here:
* blocks before the requested layer run ``F.scaled_dot_product_attention`` (fused, no N x N tensor
  is materialised by the flash/memory-efficient kernels); bfloat16 on the CPU runs the same maths
  as query-chunked matmuls instead (see ``attend``);
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

from .variants import Variant, resolve_layer

QKStore = list[tuple[torch.Tensor, torch.Tensor]]  # per block: (scaled queries, transposed keys)

# bf16 attention on the CPU: query rows per chunk, and the token count up to which chunking wins.
CPU_BF16_QUERY_CHUNK = 64
CPU_BF16_MAX_CHUNKED_TOKENS = 16384


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for all queries: (B, heads, N, d) x3 -> (B, heads, N, d).

    Fused SDPA everywhere except bfloat16 on the CPU with N <= 16384: there PyTorch's CPU flash
    kernel runs no faster than in fp32, while query-chunked bf16 GEMMs take 0.67x its time per block
    at N=3601 and 0.87x at N=14401 (at N=32401 they take 1.2x, so SDPA stays). Memory stays linear
    in N: one (B, heads, chunk, N) block of scores at a time.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or q.shape[-2] > CPU_BF16_MAX_CHUNKED_TOKENS:
        return F.scaled_dot_product_attention(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # strided bf16 GEMMs are slow
    k_t = k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, d, N), scale folded into the keys
    out = torch.empty_like(q)
    for start in range(0, q.shape[-2], CPU_BF16_QUERY_CHUNK):
        rows = slice(start, start + CPU_BF16_QUERY_CHUNK)
        weights = (q[..., rows, :] @ k_t).softmax(dim=-1)  # (B, heads, chunk, N)
        torch.matmul(weights, v, out=out[..., rows, :])
    return out


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


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        return q, k, v

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """One of the qkv projections (0: queries, 1: keys, 2: values): (B, N, C) -> (B, heads, N, d)."""
        weight = self.qkv.weight.chunk(3)[part]  # (C, C)
        bias = None if self.qkv.bias is None else self.qkv.bias.chunk(3)[part]
        return self._split_heads(F.linear(x, weight, bias))

    def queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled queries and keys, each (B, heads, N, d): ``q @ k^T`` are the attention logits."""
        return self._project(x, 0) * self.scale, self._project(x, 1)

    def explicit_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference maths: the full softmax matrix (B, heads, N, N) and the values (B, heads, N, d)."""
        q, k, v = self._qkv(x)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1), v

    def forward(self, x: torch.Tensor, explicit: bool = False, keep: QKStore | None = None) -> torch.Tensor:
        """``keep``: a list to append (scaled queries, transposed keys) to, (B, heads, N, d) and
        (B, heads, d, N), for a later pass over this block's attention (rollout)."""
        B, N, C = x.shape
        if explicit:
            weights, v = self.explicit_weights(x)
            x = weights @ v  # (B, heads, N, d)
        else:
            q, k, v = self._qkv(x)
            if keep is not None:
                keep.append(((q * self.scale).contiguous(), k.transpose(-2, -1).contiguous()))
            x = attend(q, k, v)  # (B, heads, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def cls_attention(self, x: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        """Softmax attention of the [CLS] query (token 0) over all N tokens: (B, N, C) -> (B, heads, N).

        Only the CLS query and the keys are projected (no values, no N x N scores), unless ``explicit``.
        """
        if explicit:
            return self.explicit_weights(x)[0][:, :, 0]  # the CLS row of (B, heads, N, N)
        q = self._project(x[:, :1], 0)  # (B, heads, 1, d)
        k = self._project(x, 1)  # (B, heads, N, d)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
        return logits.float().softmax(dim=-1).squeeze(2)  # (B, heads, N), fp32 even under bf16


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, explicit: bool = False, keep: QKStore | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), explicit, keep)
        return x + self.mlp(self.norm2(x))

    def cls_attention(self, x: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N): this block's [CLS] attention row."""
        return self.attn.cls_attention(self.norm1(x), explicit)


class VisionTransformer(nn.Module):
    """DINO ViT backbone (no classification head)."""

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        pretrain_grid: int = 14,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.pretrain_grid = pretrain_grid
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrain_grid**2, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @classmethod
    def from_variant(cls, variant: Variant) -> VisionTransformer:
        return cls(
            patch_size=variant.patch_size,
            embed_dim=variant.embed_dim,
            depth=variant.depth,
            num_heads=variant.num_heads,
            mlp_ratio=variant.mlp_ratio,
            eps=variant.eps,
            pretrain_grid=variant.pretrain_grid,
        )

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding for a (grid_h, grid_w) patch grid: (1, 1 + grid_h * grid_w, C).

        Bicubic resize of the stored square grid with ``size=`` so the result is exactly the
        requested grid for every size, square or not.
        """
        if (grid_h, grid_w) == (self.pretrain_grid, self.pretrain_grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, C), (1, g*g, C)
        g, dim = self.pretrain_grid, self.pos_embed.shape[-1]
        patch_pos = patch_pos.reshape(1, g, g, dim).permute(0, 3, 1, 2)  # (1, C, g, g)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)  # (1, h*w, C)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image batch -> (B, 1 + H/p * W/p, C) tokens with [CLS] and positions."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}; crop it first")
        tokens = self.patch_embed(x)  # (B, N, C)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)  # (B, 1 + N, C)
        return tokens + self.interpolate_pos_encoding(H // p, W // p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """DINO's embedding: normalised [CLS] features of the last block, (B, C)."""
        tokens = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]

    def get_cls_attention_layers(self, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """[CLS] attention rows of several blocks in one forward pass: (B, 3, H, W) -> (B, len(layers), heads, 1 + N).

        ``layers``: block indices (0..depth-1), returned in the order given; blocks after the
        deepest never run.
        """
        wanted = {resolve_layer(layer, self.depth) for layer in layers}
        tokens = self.prepare_tokens(x)
        rows: dict[int, torch.Tensor] = {}
        blocks = cast(list[Block], self.blocks)
        for index, blk in enumerate(blocks[: max(wanted) + 1]):
            if index in wanted:
                rows[index] = blk.cls_attention(tokens)  # (B, heads, 1 + N)
            if index < max(wanted):
                tokens = blk(tokens)
        return torch.stack([rows[resolve_layer(layer, self.depth)] for layer in layers], dim=1)

    def get_cls_attention(self, x: torch.Tensor, layer: int | None = None, explicit: bool = False) -> torch.Tensor:
        """[CLS] attention row of block ``layer`` (default: the last): (B, 3, H, W) -> (B, heads, 1 + N).

        Index 0 of the last axis is CLS->CLS; 1: are the patch tokens in raster order.
        ``explicit``: the reference path (N x N softmax in every block), for tests and benchmarks;
        otherwise the served path, ``get_cls_attention_layers`` for one layer.
        """
        layer = resolve_layer(layer, self.depth)
        if not explicit:
            return self.get_cls_attention_layers(x, [layer])[:, 0]
        tokens = self.prepare_tokens(x)
        blocks = cast(list[Block], self.blocks)  # nn.ModuleList is typed as holding any Module
        for blk in blocks[:layer]:
            tokens = blk(tokens, explicit=True)
        return blocks[layer].cls_attention(tokens, explicit=True)


def _init_weights(m: nn.Module) -> None:
    """DINO's initialisation (only matters for random-weight archives and tests)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
