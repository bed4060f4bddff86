"""The explanation methods' references in the naive N x N form, written from their repositories' code:
every block's softmax attention explicit and kept for autograd, its gradient read by autograd.
``tests/test_explain.py`` pins the served methods to them; ``bench/explain.py`` measures their memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.model.layers import Block
from vitscope.model.vit import VisionTransformer


def naive_pass(model: VisionTransformer, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Every block with its softmax attention A (B, heads, N, N) explicit and kept for autograd, as the
    repositories' hooked models: the A's, each block's normed input (norm1) and each block's output."""
    tokens, rope = model.prepare_tokens(x)
    attentions, inputs, outputs = [], [], []
    for blk in model.blocks:
        assert isinstance(blk, Block)
        h = blk.norm1(tokens)
        weights, v = blk.attn.explicit_weights(h, rope)  # (B, heads, N, N), (B, heads, N, d)
        B, N, C = tokens.shape
        tokens = tokens + blk.ls1(blk.attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C)))
        tokens = tokens + blk.ls2(blk.mlp(blk.norm2(tokens)))
        attentions.append(weights)
        inputs.append(h)
        outputs.append(tokens)
    return attentions, inputs, outputs


def model_score(model: VisionTransformer, normed: torch.Tensor, target: tuple[str, object]) -> torch.Tensor:
    """What Chefer's notebooks and pytorch-grad-cam differentiate: a class's logit; CLIP's logits_per_image
    for a text (SigLIP's with its bias); an embedding's cosine. (B,)"""
    kind, value = target
    if kind == "class":
        return model.logits(normed)[:, int(value)]  # type: ignore[call-overload]
    embedding = F.normalize(model.embed_image(model.pool(normed)), dim=-1)
    cosine = embedding @ F.normalize(value, dim=-1)  # type: ignore[arg-type]
    if kind == "text":
        cosine = cosine * model.logit_scale.exp() + (model.logit_bias if model.variant.logit_bias else 0)
    return cosine


def min_max(m: torch.Tensor) -> torch.Tensor:  # LeGrad's utils.min_max (no epsilon)
    return (m - m.min()) / (m.max() - m.min())


def legrad_reference(
    model: VisionTransformer, x: torch.Tensor, target: tuple[str, object], start: int, empty: torch.Tensor | None = None
) -> torch.Tensor:
    """LeGrad's compute_legrad_clip (and _siglip) for one image and one target, on the grid (before its bilinear upsampling)."""
    kind, value = target
    p, prefix = model.patch_size, model.num_prefix_tokens
    h, w = x.shape[-2] // p, x.shape[-1] // p
    with torch.enable_grad():
        attentions, _, outputs = naive_pass(model, x.requires_grad_(True))
        total: Any = 0  # (1, N) once a block is added
        total_empty: Any = 0
        for layer in range(start, model.depth):
            feat = outputs[layer]
            if model.attn_pool is not None:  # SigLIP: attn_pool over the raw block output, its probe's attention
                pool = model.attn_pool
                q = pool._split(pool.q(pool.latent).expand(feat.shape[0], -1, -1))
                k, v = (pool._split(t) for t in pool.kv(feat).chunk(2, dim=-1))
                probs = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (1, heads, 1, N)
                o = pool.proj((probs @ v).transpose(1, 2).reshape(1, 1, -1))
                pooled = (o + pool.mlp(pool.norm(o)))[:, 0]
                wrt = probs
            else:
                pooled = model.norm(feat.mean(dim=1))  # ln_post(mean over tokens)
                wrt = attentions[layer]
            if kind == "class":
                assert model.head is not None
                sim = model.head(pooled)[:, int(value)]  # type: ignore[call-overload]
                if model.head_dist is not None:
                    sim = (sim + model.head_dist(pooled)[:, int(value)]) / 2  # type: ignore[call-overload]
            else:
                sim = F.normalize(model.embed_image(pooled), dim=-1) @ F.normalize(value, dim=-1)  # type: ignore[arg-type]
            grad = torch.autograd.grad(sim.sum(), [wrt], retain_graph=True)[0].clamp(min=0)
            if model.attn_pool is not None:
                total = total + grad.mean(dim=1)[:, 0]  # (1, N)
                if empty is not None:
                    sim_empty = F.normalize(model.embed_image(pooled), dim=-1) @ F.normalize(empty, dim=-1)
                    grad_e = torch.autograd.grad(sim_empty.sum(), [wrt], retain_graph=True)[0].clamp(min=0)
                    total_empty = total_empty + grad_e.mean(dim=1)[:, 0]
            else:
                total = total + grad.mean(dim=1).mean(dim=1)[:, prefix:]  # average over heads and query rows, patches
    grid = total[0, -h * w :].reshape(h, w)
    if empty is not None:
        grid = grid.masked_fill(min_max(total_empty[0].reshape(h, w)) > 0.8, 0)
    return min_max(grid).detach()


def chefer_reference(model: VisionTransformer, x: torch.Tensor, target: tuple[str, object], query: int = 0) -> torch.Tensor:
    """Transformer-MM-Explainability's rule (its ViT notebook's generate_relevance): R = I, R += cam @ R per
    block, the query's row over the patches (SigLIP: the probe's cam row times R)."""
    p, prefix = model.patch_size, model.num_prefix_tokens
    with torch.enable_grad():
        attentions, _, outputs = naive_pass(model, x.requires_grad_(True))
        normed = model.norm(outputs[-1])
        probe = None
        if model.attn_pool is not None:
            pool = model.attn_pool
            q = pool._split(pool.q(pool.latent).expand(1, -1, -1))
            k, v = (pool._split(t) for t in pool.kv(normed).chunk(2, dim=-1))
            probe = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (1, heads, 1, N)
            o = pool.proj((probe @ v).transpose(1, 2).reshape(1, 1, -1))
            pooled = (o + pool.mlp(pool.norm(o)))[:, 0]
            kind, value = target
            cosine = F.normalize(model.embed_image(pooled), dim=-1) @ F.normalize(value, dim=-1)  # type: ignore[arg-type]
            score = cosine * model.logit_scale.exp() + model.logit_bias if kind == "text" else cosine
        else:
            score = model_score(model, normed, target)
        grads = torch.autograd.grad(score.sum(), attentions + ([probe] if probe is not None else []))
    N = attentions[0].shape[-1]
    R = torch.eye(N)[None]
    for attention, grad in zip(attentions, grads[: len(attentions)], strict=True):
        cam = (grad * attention).clamp(min=0).mean(dim=1)  # (1, N, N)
        R = R + torch.bmm(cam, R)
    row = ((grads[-1] * probe).clamp(min=0).mean(dim=1) @ R)[0, 0] if probe is not None else R[0, query]
    h, w = x.shape[-2] // p, x.shape[-1] // p
    return row[prefix:].reshape(h, w).detach()


def gradcam_reference(model: VisionTransformer, x: torch.Tensor, target: tuple[str, object], layer: int) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM with target_layers=[blocks[layer].norm1] and a reshape_transform that
    drops the class and register tokens, on the grid: ReLU(sum_c mean(grad_c) a_c), then scale_cam_image."""
    p, prefix = model.patch_size, model.num_prefix_tokens
    h, w = x.shape[-2] // p, x.shape[-1] // p
    with torch.enable_grad():
        _, inputs, outputs = naive_pass(model, x.requires_grad_(True))
        score = model_score(model, model.norm(outputs[-1]), target)
        (grad,) = torch.autograd.grad(score.sum(), [inputs[layer]])
    a = inputs[layer][0, prefix:].detach().numpy().reshape(h, w, -1).transpose(2, 0, 1)  # (C, h, w)
    g = grad[0, prefix:].numpy().reshape(h, w, -1).transpose(2, 0, 1)
    cam = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0)
    cam = cam - cam.min()
    return torch.from_numpy(cam / (1e-7 + cam.max()))
