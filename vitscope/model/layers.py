"""The layers a Vision Transformer is built of (timm's and DINOv2's ``layers/``): the patch projection,
the FFNs and activations, LayerScale, attention with its [CLS]-row fast path, the pre-norm block, and
SigLIP's attention-pool head. ``vit.py`` assembles image towers from them, ``text.py`` text towers."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import SDPA_ONLY, KernelPlan
from .position import Rope, apply_rope
from .variants import ACTS, FFNS, Variant

QKStore = list[tuple[torch.Tensor, torch.Tensor]]  # per block: (scaled queries, transposed keys)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p * W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The module of one of ``variants.ACTS``."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTS)}")


class FFN(nn.Module):
    """A block's feed-forward network, ``out(hidden(x))``: its last layer is linear, so the mean of
    its outputs over tokens is ``out`` of the mean of ``hidden`` (``Block.mean_output``)."""

    @property
    def out(self) -> nn.Linear:
        """The last, linear layer."""
        raise NotImplementedError

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, N, F): everything before ``out``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


class Mlp(FFN):
    """fc1, the activation, fc2."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden_dim, dim)

    @property
    def out(self) -> nn.Linear:
        return self.fc2

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))


class SwiGLUFused(FFN):
    """DINOv2 ViT-g's FFN: one projection ``w12`` to both halves, silu(x1) * x2, then ``w3``."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    @property
    def out(self) -> nn.Linear:
        return self.w3

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return F.silu(x1) * x2


class SwiGLU(FFN):
    """DINOv3's SwiGLU FFN (ViT-S+): separate ``w1``, ``w2``, then ``w3``."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(dim, hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    @property
    def out(self) -> nn.Linear:
        return self.w3

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.w1(x)) * self.w2(x)


# The module of each FFN the variants table names (variants.FFNS: the names, in this order).
FFN_MODULES: dict[str, Callable[[int, int, str], FFN]] = dict(zip(FFNS, (Mlp, SwiGLUFused, SwiGLU), strict=True))


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

    def forward(
        self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, keep: QKStore | None = None, causal: bool = False
    ) -> torch.Tensor:
        """``keep``: a list to append (scaled queries, transposed keys) to, (B, heads, N, d) and
        (B, heads, d, N), for a later pass over this block's attention (rollout). ``causal``: each token
        attends to itself and those before it (CLIP's text tower), with fused SDPA."""
        B, N, C = x.shape
        if causal:
            q, k, v = self._qkv(x, rope)
            x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif explicit:
            weights, v = self.explicit_weights(x, rope)
            x = weights @ v  # (B, heads, N, d)
        else:
            q, k, v = self._qkv(x, rope)
            if keep is not None:
                keep.append(((q * self.scale).contiguous(), k.transpose(-2, -1).contiguous()))
            x = self.kernels.attend(q, k, v)  # (B, heads, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def cls_attention(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, index: int = 0) -> torch.Tensor:
        """Softmax attention of the query of token ``index`` ([CLS]: 0, DeiT's distillation token: 1)
        over all N tokens: (B, N, C) -> (B, heads, N).

        Only that query and the keys are projected (no values, no N x N scores), unless ``explicit``.
        It is a prefix token, so RoPE leaves its query as it is.
        """
        if explicit:
            return self.explicit_weights(x, rope)[0][:, :, index]  # the query's row of (B, heads, N, N)
        q = self._project(x[:, index : index + 1], 0)  # (B, heads, 1, d)
        k = apply_rope(self._project(x, 1), rope)  # (B, heads, N, d)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
        return logits.float().softmax(dim=-1).squeeze(2)  # (B, heads, N), fp32 even under bf16


class Trace(NamedTuple):
    """What a block's pass with autograd keeps for a gradient method (``Block.traced``): the normed input
    ``h`` (B, N, C) (Grad-CAM's activations), the queries (scaled), keys and values (B, heads, N, d), and the
    attention output ``o`` (B, heads, N, d) whose gradient dO gives dS/dA = dO V^T, one row chunk at a time;
    the residual stream after attention ``mid`` (B, N, C) and the FFN's input to its last linear layer
    ``hidden`` (B, N, F): output = mid + ls2(out(hidden))."""

    h: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    mid: torch.Tensor
    hidden: torch.Tensor


class BlockFacts(Protocol):
    """What a block reads of its tower's architecture (``Variant``, ``TextVariant``)."""

    @property
    def embed_dim(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def eps(self) -> float: ...
    @property
    def mask_k_bias(self) -> bool: ...
    @property
    def layerscale_init(self) -> float | None: ...
    @property
    def ffn(self) -> str: ...
    @property
    def ffn_hidden(self) -> int: ...
    @property
    def act(self) -> str: ...


class Block(nn.Module):
    """A pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, variant: BlockFacts) -> None:
        super().__init__()
        dim = variant.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=variant.eps)
        self.attn = Attention(dim, variant.num_heads, variant.mask_k_bias)
        scale = variant.layerscale_init
        self.ls1 = LayerScale(dim, scale) if scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=variant.eps)
        self.mlp: FFN = FFN_MODULES[variant.ffn](dim, variant.ffn_hidden, variant.act)
        self.ls2 = LayerScale(dim, scale) if scale is not None else nn.Identity()

    def forward(
        self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, keep: QKStore | None = None, causal: bool = False
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, explicit, keep, causal))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def cls_attention(self, x: torch.Tensor, rope: Rope | None = None, explicit: bool = False, index: int = 0) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N): this block's attention row of the query of token ``index``."""
        return self.attn.cls_attention(self.norm1(x), rope, explicit, index)

    def traced(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, Trace]:
        """``forward`` (the same maths, fused SDPA, whose backward holds no N x N tensor either) keeping
        what a gradient method reads: (B, N, C) -> (B, N, C) and this block's ``Trace``."""
        B, N, C = x.shape
        h = self.norm1(x)
        q, k, v = self.attn._qkv(h, rope)  # (B, heads, N, d) each
        o = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        mid = x + self.ls1(self.attn.proj(o.transpose(1, 2).reshape(B, N, C)))
        hidden = self.mlp.hidden(self.norm2(mid))  # (B, N, F)
        return mid + self.ls2(self.mlp.out(hidden)), Trace(h, q * self.attn.scale, k, v, o, mid, hidden)

    def mean_output(self, trace: Trace) -> torch.Tensor:
        """The mean over tokens of the output ``traced`` returned, (B, C), written as the mean before
        the FFN's last linear layer, so that its backward is one row per image rather than per token
        (LeGrad's score of a block reads this mean once per goal)."""
        return trace.mid.mean(dim=1) + self.ls2(self.mlp.out(trace.hidden.mean(dim=1)))


class AttentionPool(nn.Module):
    """SigLIP's attention-pool head (timm's ``AttentionPoolLatent``, transformers' ``SiglipMultiheadAttentionPoolingHead``):
    a learned probe attends over the normed tokens, then x + mlp(norm x). (B, N, C) -> (B, C)."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        dim = variant.embed_dim
        self.num_heads = variant.num_heads
        self.scale = (dim // variant.num_heads) ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=variant.eps)
        self.mlp = Mlp(dim, variant.ffn_hidden, variant.act)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, heads, N, d)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The probe's softmax attention over the tokens x (B, N, C): (B, heads, N), float32."""
        q = self._split(self.q(self.latent).expand(x.shape[0], -1, -1))  # (B, heads, 1, d)
        k = self._split(F.linear(x, *(t.chunk(2)[0] for t in (self.kv.weight, self.kv.bias))))  # (B, heads, N, d)
        return ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1).squeeze(2)  # (B, heads, N)

    def traced(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with the probe's attention explicit (one row per head, no N x N): (B, N, C) ->
        the pooled (B, C) and the attention (B, heads, N) it was computed with, for its gradient."""
        B, _, C = x.shape
        q = self._split(self.q(self.latent).expand(B, -1, -1))  # (B, heads, 1, d)
        k, v = (self._split(t) for t in self.kv(x).chunk(2, dim=-1))  # (B, heads, N, d) each
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]  # (B, heads, N): the tensor the gradient is of
        pooled = self.proj((weights[:, :, None] @ v).transpose(1, 2).reshape(B, 1, C))  # (B, 1, C)
        return (pooled + self.mlp(self.norm(pooled)))[:, 0], weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        q = self._split(self.q(self.latent).expand(B, -1, -1))  # (B, heads, 1, d)
        k, v = (self._split(t) for t in self.kv(x).chunk(2, dim=-1))  # (B, heads, N, d) each
        pooled = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C))  # (B, 1, C)
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]  # (B, C)
