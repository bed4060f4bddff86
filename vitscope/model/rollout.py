"""Attention rollout (Abnar & Zuidema, 2020), exact and in memory linear in the number of tokens.

Definition, per block b = 0..L (L: the requested layer), with A_b the (heads, N, N) softmax attention
over all N tokens (the P class tokens first: [CLS], DeiT's distillation token, none for SigLIP;
then any register/storage tokens, then the patches):

1. fuse the heads: F_b = mean, max or min over heads (``head_fusion``), (N, N);
2. discard (``discard_ratio`` r in [0, 1)): in every row i of F_b, the k = floor(r * (N - P))
   smallest entries among the columns j >= P are set to 0. The class tokens' columns are never
   discarded, and each row (one query's distribution) loses the same share whatever the others hold;
3. add the identity and renormalise every row to sum 1: Â_b = (F_b + I) / rowsum(F_b + I);

then R = Â_L ... Â_1 Â_0, and the result is the pooling query's row of R: e_q^T R, (N,), raw (not
rescaled), with q = 0 for [CLS] and 1 for DeiT's distillation token. SigLIP pools by a probe that
attends over block L's output tokens: its row, the heads fused as above and renormalised (no
identity: the probe is not a token), takes the place of e_q^T, and R then runs through blocks 0..L.

``cls_rollout`` computes e_q^T R top-down, v <- v Â_b, from the queries and keys each block used
in one forward pass (kept, O(N) per block); each Â_b is rebuilt ``chunk`` query rows at a time, so no
N x N matrix (nor any (heads, N, N) tensor) ever exists: memory grows linearly in N. In the top
block only the query's row is rebuilt (v = e_q there). ``rollout_reference``
is the naive full-matrix product (O(N^2) memory, O(N^3) time) the tests and the benchmark compare with.
"""

from __future__ import annotations

from typing import cast

import torch

from .layers import Block, QKStore
from .variants import resolve_layer
from .vit import VisionTransformer

HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")

ROW_CHUNK = 32  # query rows of Â_b rebuilt at a time on a CPU: (B, heads, 32, N) scores (fastest at N=3601 on 2 cores)
# On a GPU, 32-row products leave it idle (rollout ran 27x a last-layer request at 480x480 on an H100):
# there the chunk is as many rows as fit this many bytes of float32 scores.
GPU_SCORE_BYTES = 512 * 2**20


def row_chunk(device: torch.device, batch: int, heads: int, tokens: int) -> int:
    """Query rows rebuilt at a time: ``ROW_CHUNK`` on a CPU; on a GPU, what ``GPU_SCORE_BYTES`` holds."""
    if device.type != "cuda":
        return ROW_CHUNK
    return max(ROW_CHUNK, GPU_SCORE_BYTES // (4 * batch * heads * tokens))


def fuse_heads(weights: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """(B, heads, rows, N) -> (B, rows, N) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    if head_fusion == "min":
        return weights.amin(dim=1)
    raise ValueError(f"unknown head_fusion {head_fusion!r}; choose one of {list(HEAD_FUSIONS)}")


def discard_weakest(fused: torch.Tensor, ratio: float, keep: int = 1) -> torch.Tensor:
    """Zero the floor(ratio * (N - keep)) smallest entries of every row among columns keep..N-1, in
    place: (B, rows, N). ``keep``: the class tokens' columns, never touched (1: [CLS]; DeiT 2; SigLIP 0)."""
    count = int(ratio * (fused.shape[-1] - keep))
    if count > 0:
        patches = fused[..., keep:]  # a view: the class tokens' columns are never touched
        patches.scatter_(-1, patches.topk(count, dim=-1, largest=False).indices, 0.0)
    return fused


def propagate_rows(
    v: torch.Tensor, q: torch.Tensor, k_t: torch.Tensor, rows: slice, head_fusion: str, discard_ratio: float, keep: int = 1
) -> torch.Tensor:
    """v[:, rows] @ Â[rows] for one block: its rows ``rows`` rebuilt from the scaled queries (B, heads, N, d)
    and the transposed keys (B, heads, d, N); v (B, N) -> (B, N). ``keep``: as ``discard_weakest``."""
    weights = (q[:, :, rows] @ k_t).softmax(dim=-1)  # (B, heads, rows, N)
    weight = v[:, rows]  # (B, rows)
    if head_fusion == "mean" and discard_ratio == 0:
        # The rows of mean_h A_h sum to 1, so those of F + I sum to 2: v Â = (v F + v) / 2, with the
        # head mean folded into the product (no fused (rows, N) matrix is built).
        out = (weight[:, None, None] / (2 * weights.shape[1]) @ weights).sum(dim=1).squeeze(1)  # (B, N)
        out[:, rows] += weight / 2
        return out
    fused = discard_weakest(fuse_heads(weights, head_fusion), discard_ratio, keep)  # (B, rows, N)
    fused.diagonal(offset=rows.start, dim1=-2, dim2=-1).add_(1.0)  # + I: entry (i, start + i)
    fused /= fused.sum(dim=-1, keepdim=True)
    return (weight.unsqueeze(1) @ fused).squeeze(1)


def probe_row(model: VisionTransformer, tokens: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """SigLIP's probe over a block's output tokens (B, N, C), the heads fused, rows summing to 1: (B, N)."""
    fused = fuse_heads(model.probe_attention(tokens)[:, :, None], head_fusion)[:, 0].float()  # (B, N)
    return fused / fused.sum(dim=-1, keepdim=True)


@torch.inference_mode()
def cls_rollout(
    model: VisionTransformer,
    x: torch.Tensor,
    layer: int | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    chunk: int | None = None,
    query: str | None = None,
) -> torch.Tensor:
    """e_q^T Â_layer ... Â_0 for a batch of images, q the pooling query: (B, 3, H, W) -> (B, N), float32.

    The forward pass (blocks 0..layer-1; SigLIP: 0..layer) runs as usual (fused SDPA, any autocast
    precision); the rollout itself is computed in float32. ``chunk``: query rows rebuilt at a time
    (default ``row_chunk``). ``query``: as ``VisionTransformer.query_index`` (None: the model's own).
    """
    layer = resolve_layer(layer, model.depth)
    index = model.query_index(query)
    blocks = cast(list[Block], model.blocks)
    tokens, rope = model.prepare_tokens(x)
    kept: QKStore = []  # per block below ``layer``: the queries and keys its forward used, O(N) each
    for i, blk in enumerate(blocks[:layer]):
        tokens = blk(tokens, rope, keep=kept)
        model.note(i, tokens)
    top = blocks[layer]
    B, N, _ = tokens.shape
    v = torch.zeros(B, N, dtype=torch.float32, device=x.device)  # (B, N)
    if index is None:  # SigLIP: the probe over block ``layer``'s output, then every row of every block
        tokens = top(tokens, rope, keep=kept)
        model.note(layer, tokens)
        v, live = probe_row(model, tokens, head_fusion), N
        model.finish(tokens, layer + 1, rope)
    else:  # the top block never runs forward: project here; only the query's row of it is needed
        q, k = top.attn.queries_keys(top.norm1(tokens), rope)
        kept.append((q.contiguous(), k.transpose(-2, -1).contiguous()))
        v[:, index], live = 1.0, index + 1  # e_q; rows of v that may be non-zero: 0..q in the top block, then all
        if model.recording:
            tokens = top(tokens, rope)
            model.note(layer, tokens)
            model.finish(tokens, layer + 1, rope)
    chunk = chunk or row_chunk(x.device, B, model.num_heads, N)
    while kept:  # blocks layer, layer - 1, ..., 0
        q, k_t = (t.float() for t in kept.pop())  # (B, heads, N, d), (B, heads, d, N)
        with torch.autocast(x.device.type, enabled=False):
            out = torch.zeros_like(v)
            for start in range(0, live, chunk):
                rows = slice(start, min(start + chunk, live))
                out += propagate_rows(v, q, k_t, rows, head_fusion, discard_ratio, model.variant.num_class_tokens)
        v, live = out, N
    return v


@torch.inference_mode()
def rollout_reference(
    model: VisionTransformer,
    x: torch.Tensor,
    layer: int | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    query: str | None = None,
) -> torch.Tensor:
    """The naive rollout (as jacobgil/vit-explain, with the definition above): every N x N matrix of
    blocks 0..layer, explicitly multiplied. (B, 3, H, W) -> (B, N). O(N^2) memory, O(N^3) time."""
    layer = resolve_layer(layer, model.depth)
    index = model.query_index(query)
    blocks = cast(list[Block], model.blocks)
    tokens, rope = model.prepare_tokens(x)
    B, N, _ = tokens.shape
    eye = torch.eye(N, device=x.device)
    product = eye.expand(B, N, N)  # (B, N, N)
    for b, blk in enumerate(blocks[: layer + 1]):
        weights, _ = blk.attn.explicit_weights(blk.norm1(tokens), rope)  # (B, heads, N, N)
        fused = discard_weakest(fuse_heads(weights, head_fusion), discard_ratio, model.variant.num_class_tokens) + eye  # (B, N, N)
        product = (fused / fused.sum(dim=-1, keepdim=True)) @ product  # Â_b ... Â_0
        if b < layer or index is None:
            tokens = blk(tokens, rope, explicit=True)
    if index is None:
        return (probe_row(model, tokens, head_fusion)[:, None] @ product)[:, 0]
    return product[:, index]
