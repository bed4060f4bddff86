"""Maps that explain a decision, by gradients: LeGrad, Chefer's rule and Grad-CAM, exact, in memory
linear in the tokens.

Each image of a batch comes with T *goals* (``Goals``: a class, or a direction in the joint
image-text space: a prompt's text embedding, another image's embedding). A goal's *score* s is what
the map explains (``scores``):

* a class k: the head's logit k (as Chefer's and pytorch-grad-cam's targets; LeGrad: the head applied
  to a block's pooled tokens);
* a text: CLIP's ``logits_per_image`` (the scaled cosine; SigLIP plus its bias), LeGrad the cosine;
* an embedding: the cosine of the image's embedding to it.

All three read dS/dA, the gradient of s with respect to a block's softmax attention A (B, heads, N, N).
A reaches s only through O = A V, so dS/dA = dO V^T: one pass with autograd keeps each block's
queries, keys, values and the gradient dO of its attention output (``Block.traced``; fused SDPA,
whose backward holds no N x N tensor), and the rows of dO V^T (and of A, rebuilt from q k^T) are
made ``chunk`` query rows at a time, as rollout does (``rollout.py``). No (heads, N, N) tensor exists.

* ``legrad`` (Bousselham et al., WalBouss/LeGrad ``wrapper.py``): for each block l from ``start``,
  s_l is the score of block l's output pooled as LeGrad pools it (CLIP: the final norm of the mean
  of all tokens, then the projection; SigLIP: the attention pool over the raw tokens, whose probe's
  attention takes A's place); map_l = the mean over heads and query rows of clamp(dS_l/dA_l, 0),
  over the patches; the maps are summed and min-max normalised. SigLIP's empty-prompt correction:
  where the min-max map of "a photo of a" exceeds 0.8, the map is set to 0 before the min-max.
* ``chefer`` (Chefer et al. 2021, rule 5-6 of Transformer-MM-Explainability): R = I; for every block,
  cam = mean_heads(clamp(dS/dA * A, 0)), R = R + cam R; the map is the pooling query's row of R
  over the patches, raw. Computed as e_q^T (I + cam_L) ... (I + cam_0), top-down, one row vector.
  SigLIP's probe: its own cam row (over block L's output tokens) takes e_q^T's place.
* ``gradcam`` (pytorch-grad-cam's ViT recipe: ``blocks[layer].norm1``): the activations are block
  ``layer``'s normed input tokens; weights = the patches' mean gradient per channel; map =
  ReLU(sum_c w_c a_c) over the patches, (map - min) / (max(map - min) + 1e-7).

Maps are on the patch grid (B, T, H/p, W/p), float32; the references (naive N x N) are in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from .layers import Block, Trace
from .position import Rope
from .rollout import row_chunk
from .vit import VisionTransformer

CLASS, TEXT, EMBEDDING, TOP = "class", "text", "embedding", "top"  # a goal's kind (as targets.py's)
NONE = ""  # padding: an image with fewer goals than the batch's most
CORRECTION_THRESHOLD = 0.8  # LeGrad's SigLIP correction_threshold
EMPTY_PROMPT = "a photo of a"  # LeGrad's "empty" prompt for SigLIP's correction


@dataclass
class Goals:
    """Per image of a batch, the goals its maps explain, padded to the batch's most (T).

    ``kinds``: per image, per goal, one of CLASS, TEXT, EMBEDDING, TOP or NONE (padding).
    ``classes`` (B, T) long: the class of CLASS goals. ``vectors`` (B, T, D) float32: the direction of
    TEXT and EMBEDDING goals. ``candidates``: per image, the texts (L, D) TOP chooses among on a model
    without a classifier (zero-shot, ``labels=``), or None. ``empty``: the text embedding of
    ``EMPTY_PROMPT`` (D,), for LeGrad's SigLIP correction (None: no correction)."""

    kinds: list[list[str]]
    classes: torch.Tensor
    vectors: torch.Tensor
    candidates: list[torch.Tensor | None]
    empty: torch.Tensor | None = None
    chosen: torch.Tensor | None = None  # (B, T) long, once ``resolve_top`` ran: the class or text each TOP became, else -1

    @property
    def count(self) -> int:
        return self.classes.shape[1]

    def valid(self) -> torch.Tensor:
        """(B, T) bool: the goals that are not padding."""
        return torch.tensor([[kind != NONE for kind in row] for row in self.kinds], device=self.classes.device)

    def image(self, index: int, count: int) -> Goals:
        """Image ``index``'s first ``count`` goals as a batch of one (TOP goals stay as ``resolve_top`` resolved them)."""
        chosen = self.chosen[index : index + 1, :count].clone() if self.chosen is not None else None
        kinds = [list(self.kinds[index][:count])]
        classes, vectors = self.classes[index : index + 1, :count].clone(), self.vectors[index : index + 1, :count].clone()
        return Goals(kinds, classes, vectors, [None], None, chosen)

    def repeated(self, copies: int) -> Goals:
        """A batch of one's goals for ``copies`` images, each scored against the same goals (views, not copies)."""
        if self.classes.shape[0] != 1:
            raise ValueError(f"repeated takes the goals of one image, not of {self.classes.shape[0]}")
        chosen = self.chosen.expand(copies, -1) if self.chosen is not None else None
        return Goals(
            [list(self.kinds[0]) for _ in range(copies)],
            self.classes.expand(copies, -1),
            self.vectors.expand(copies, -1, -1),
            self.candidates * copies,
            self.empty,
            chosen,
        )


def make_goals(
    kinds: Sequence[Sequence[str]],
    classes: Sequence[Sequence[int]],
    vectors: Sequence[Sequence[torch.Tensor | None]],
    dim: int,
    device: torch.device,
    candidates: Sequence[torch.Tensor | None] = (),
    empty: torch.Tensor | None = None,
) -> Goals:
    """``Goals`` from per-image lists (classes: 0 where not a class; vectors: None where not a direction)."""
    B, T = len(kinds), max(len(row) for row in kinds)
    class_t = torch.zeros(B, T, dtype=torch.long)
    vector_t = torch.zeros(B, T, dim)
    padded = [list(row) + [NONE] * (T - len(row)) for row in kinds]
    for b in range(B):
        for t, kind in enumerate(kinds[b]):
            if kind == CLASS:
                class_t[b, t] = classes[b][t]
            vector = vectors[b][t]
            if vector is not None:
                vector_t[b, t] = vector.detach().float().cpu().clone()
    return Goals(
        padded,
        class_t.to(device),
        vector_t.to(device),
        [c.detach().float().clone().to(device) if c is not None else None for c in (list(candidates) or [None] * B)],
        empty.detach().float().clone().to(device) if empty is not None else None,
    )


# ----------------------------------------------------------------------------- scores
def head_logits(model: VisionTransformer, pooled: torch.Tensor) -> torch.Tensor:
    """A [CLS]-token head applied to a pooled token (B, C) -> (B, classes): LeGrad's read of a block
    (DeiT's distilled heads averaged, as the model does). ``ValueError`` for heads that read more."""
    if model.head is None:
        raise ValueError(f"{model.variant.name} has no classifier head")
    if model.variant.head_input != "token":
        raise ValueError(f"{model.variant.name}'s head reads {model.variant.head_input!r}, not one pooled token")
    logits = model.head(pooled)
    return (logits + model.head_dist(pooled)) / 2 if model.head_dist is not None else logits


def _layer_logits(
    model: VisionTransformer, index: int, out: torch.Tensor, pooled: torch.Tensor, outputs: dict[int, torch.Tensor]
) -> torch.Tensor:
    """LeGrad's read of a classifier at block ``index`` (output ``out``, pooled ``pooled``): a [CLS]-token
    head on the pooled token; DINOv2's linear heads on the block's normed tokens as they read the last
    block's (cls4_mean: with the normed [CLS] of the 3 blocks before it)."""
    if model.variant.head_input == "token":
        return head_logits(model, pooled)
    earlier = None
    if model.variant.head_input == "cls4_mean":
        if index < 3:
            raise ValueError(f"{model.variant.name}'s head reads 4 blocks' [CLS]: explain from block 3 on (layer_index)")
        earlier = torch.stack([model.norm(outputs[j][:, 0]) for j in range(index - 3, index)], dim=1)
    return model.logits(model.norm(out), earlier)


def resolve_top(model: VisionTransformer, goals: Goals, logits: torch.Tensor | None, embedding: torch.Tensor) -> torch.Tensor:
    """Turn each TOP goal into the model's prediction, in place: a classifier's most probable class
    (CLASS), or the most probable of the image's candidate texts (TEXT). (B, T) long: the class or
    candidate index each TOP goal became (-1 for the other goals)."""
    chosen = torch.full_like(goals.classes, -1)
    for b, row in enumerate(goals.kinds):
        for t, kind in enumerate(row):
            if kind != TOP:
                continue
            if logits is not None:
                index = int(logits[b].argmax())
                goals.classes[b, t], row[t] = index, CLASS
            else:
                texts = goals.candidates[b]
                if texts is None:
                    raise ValueError("target=top on a model without a classifier needs the labels= texts to choose from")
                index = int((F.normalize(embedding[b : b + 1].float(), dim=-1) @ F.normalize(texts, dim=-1).T).argmax())
                goals.vectors[b, t], row[t] = texts[index], TEXT
            chosen[b, t] = index
    goals.chosen = chosen
    return chosen


def scores(
    model: VisionTransformer, goals: Goals, logits: torch.Tensor | None, embedding: torch.Tensor, scaled: bool = True
) -> torch.Tensor:
    """Each goal's score (B, T) from the classifier's logits (B, K) (None: no head) and the image's
    embedding in the joint space (B, D); padding scores 0. ``scaled``: a text's score is the model's
    logit (CLIP's scaled cosine, SigLIP's plus its bias); otherwise the cosine (LeGrad)."""
    cosines = torch.einsum("bd,btd->bt", F.normalize(embedding.float(), dim=-1), F.normalize(goals.vectors, dim=-1))  # (B, T)
    kinds = goals.kinds
    is_text = torch.tensor([[k == TEXT for k in row] for row in kinds], device=cosines.device)
    is_class = torch.tensor([[k == CLASS for k in row] for row in kinds], device=cosines.device)
    text = cosines
    if scaled and model.variant.text is not None:
        text = cosines * model.logit_scale.float().exp() + (model.logit_bias.float() if model.variant.logit_bias else 0.0)
    out = torch.where(is_text, text, cosines)
    if logits is not None:
        out = torch.where(is_class, logits.float().gather(1, goals.classes), out)
    return torch.where(goals.valid(), out, torch.zeros_like(out))


def final_scores(model: VisionTransformer, goals: Goals, normed: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
    """The goals' scores (B, T) from the last block's normed tokens (B, N, C), TOP resolved first."""
    logits = model.logits(normed, earlier) if model.head is not None else None
    embedding = model.embed_image(model.pool(normed))  # (B, D)
    resolve_top(model, goals, logits, embedding)
    return scores(model, goals, logits, embedding)


def reported(model: VisionTransformer, goals: Goals, normed: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
    """What the response says of each goal (B, T): a class's softmax probability; a text's CLIP
    cosine (SigLIP: its sigmoid probability); an embedding's cosine."""
    with torch.no_grad():
        logits = model.logits(normed, earlier).float() if model.head is not None else None
        embedding = model.embed_image(model.pool(normed))
        cosines = scores(model, goals, None, embedding, scaled=False)
        out = cosines
        if model.variant.logit_bias:  # SigLIP: each text's own sigmoid
            siglip = scores(model, goals, None, embedding, scaled=True).sigmoid()
            is_text = torch.tensor([[k == TEXT for k in row] for row in goals.kinds], device=out.device)
            out = torch.where(is_text, siglip, out)
        if logits is not None:
            is_class = torch.tensor([[k == CLASS for k in row] for row in goals.kinds], device=out.device)
            out = torch.where(is_class, logits.softmax(dim=-1).gather(1, goals.classes), out)
        return out


# ----------------------------------------------------------------------------- row chunks of dS/dA
def _chunks(n: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]


@torch.no_grad()  # a read-out: recorded for autograd, its chunks (heads, rows, N) would all be kept, N x N in all
def positive_grad_columns(trace: Trace, grad_o: torch.Tensor, chunk: int) -> torch.Tensor:
    """LeGrad's read of a block: the mean over heads and query rows of clamp(dS/dA, 0), dS/dA = dO V^T:
    (B, heads, N, d) -> (B, N), float32, ``chunk`` rows at a time."""
    B, heads, N, _ = grad_o.shape
    v_t = trace.v.float().transpose(-2, -1)  # (B, heads, d, N)
    out = grad_o.new_zeros(B, N, dtype=torch.float32)
    for rows in _chunks(N, chunk):
        out += (grad_o[:, :, rows].float() @ v_t).clamp_(min=0).sum(dim=(1, 2))  # (B, N)
    return out / (heads * N)


@torch.no_grad()  # as positive_grad_columns: nothing differentiates through the relevance
def cam_rows(trace: Trace, grad_o: torch.Tensor, r: torch.Tensor, live: int, chunk: int) -> torch.Tensor:
    """Chefer's step r <- r + r cam for one block, cam = mean_heads(clamp(dO V^T * A, 0)): r (B, N) ->
    (B, N), float32. Only rows ``0..live-1`` of r may be non-zero; A's rows are rebuilt from q k^T."""
    q, k_t, v_t = trace.q.float(), trace.k.float().transpose(-2, -1), trace.v.float().transpose(-2, -1)
    out = r.clone()
    for rows in _chunks(live, chunk):
        weights = (q[:, :, rows] @ k_t).softmax(dim=-1)  # (B, heads, rows, N)
        cam = ((grad_o[:, :, rows].float() @ v_t) * weights).clamp(min=0).mean(dim=1)  # (B, rows, N)
        out += (r[:, None, rows] @ cam)[:, 0]  # (B, N)
    return out


# ----------------------------------------------------------------------------- the passes
def _grid(model: VisionTransformer, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, T, N) over all tokens -> (B, T, H/p, W/p) over the patches."""
    p = model.patch_size
    return columns[..., model.num_prefix_tokens :].reshape(*columns.shape[:2], x.shape[-2] // p, x.shape[-1] // p)


def _run_untraced(
    model: VisionTransformer, tokens: torch.Tensor, blocks: range, rope: object, outputs: dict[int, torch.Tensor]
) -> torch.Tensor:
    """Blocks ``blocks`` as the served forward runs them, without autograd; their outputs into ``outputs``."""
    with torch.no_grad():
        for i in blocks:
            tokens = model.blocks[i](tokens, rope)
            outputs[i] = tokens
            model.note(i, tokens)
    return tokens


def _earlier(model: VisionTransformer, outputs: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """A cls4_mean head's normed [CLS] of the 3 blocks before the last, from the traced outputs (B, 3, C)."""
    if model.variant.head_input != "cls4_mean":
        return None
    return torch.stack([model.norm(outputs[i][:, 0]) for i in range(model.depth - 4, model.depth - 1)], dim=1)


def _each_goal(s: torch.Tensor) -> torch.Tensor:
    """The T one-hot output gradients of the scores s (B, T), batched: (T, B, T), so that one
    vectorised backward gives every goal's gradient (``is_grads_batched``)."""
    T = s.shape[1]
    return torch.eye(T, dtype=s.dtype, device=s.device)[:, None, :].expand(T, s.shape[0], T)


def min_max(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Each map (B, T, h, w) to [0, 1]: (m - min) / (max - min + eps); a constant map becomes 0."""
    flat = maps.flatten(2)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    span = high - low + eps
    return torch.where(span > 0, (flat - low) / span.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)).reshape(maps.shape)


def legrad(
    model: VisionTransformer, x: torch.Tensor, goals: Goals, start: int, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LeGrad over blocks ``start..depth-1``: (B, 3, H, W) -> maps (B, T, H/p, W/p) and the goals'
    reported scores (B, T). TOP goals are resolved (in ``goals``) from the model's own prediction."""
    blocks = cast(list[Block], model.blocks)
    tokens, rope = model.prepare_tokens(x)
    outputs: dict[int, torch.Tensor] = {}
    tokens = _run_untraced(model, tokens, range(start), rope, outputs)
    B, N, _ = tokens.shape
    chunk = chunk or row_chunk(x.device, B, model.num_heads, N)
    traces: dict[int, Trace] = {}
    pool = model.attn_pool
    reads: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per block: index, output, pooled, what dS/dA is read of
    for i in range(start, model.depth):
        tokens = tokens.detach().requires_grad_(True)
        out, trace = blocks[i].traced(tokens, rope)
        if pool is not None:  # SigLIP: the attention pool over the raw tokens; the probe's attention is A
            pooled, weights = pool.traced(out)
            reads.append((i, out, pooled, weights))
        else:  # LeGrad's ln_post(mean of all tokens); A's gradient is read through dO
            reads.append((i, out, model.norm(blocks[i].mean_output(trace)), trace.o))
            traces[i] = trace
        outputs[i] = out.detach()
        model.note(i, outputs[i])
        tokens = out
    final = outputs[model.depth - 1]
    normed, earlier = model.norm(final), _earlier(model, outputs)
    with torch.no_grad():
        logits = model.logits(normed, earlier) if model.head is not None else None
        resolve_top(model, goals, logits, model.embed_image(model.pool(normed)))
    model.finish(final, model.depth, rope)
    valid = goals.valid()
    maps = x.new_zeros(B, goals.count, N, dtype=torch.float32)
    empty = x.new_zeros(B, N, dtype=torch.float32)
    correct = pool is not None and goals.empty is not None
    wants_logits = model.head is not None and any(CLASS in row for row in goals.kinds)
    for i, out, pooled, read in reads:
        embedding = model.embed_image(pooled)
        layer_logits = _layer_logits(model, i, out, pooled, outputs) if wants_logits else None
        s = scores(model, goals, layer_logits, embedding, scaled=False)  # (B, T)
        (grads,) = torch.autograd.grad(s, read, grad_outputs=_each_goal(s), retain_graph=True, is_grads_batched=True)  # (T, *read)
        for t in range(goals.count):
            if bool(valid[:, t].any()):
                grad = grads[t]
                maps[:, t] += grad.float().clamp(min=0).mean(dim=1) if pool is not None else positive_grad_columns(traces[i], grad, chunk)
        if correct and goals.empty is not None:
            cosine = F.normalize(embedding.float(), dim=-1) @ F.normalize(goals.empty, dim=-1)  # (B,)
            (grad,) = torch.autograd.grad(cosine.sum(), read, retain_graph=True)
            empty += grad.float().clamp(min=0).mean(dim=1)
    grid = _grid(model, x, maps)
    if correct:
        sinks = min_max(_grid(model, x, empty[:, None]))[:, 0] > CORRECTION_THRESHOLD  # (B, h, w)
        grid = grid.masked_fill(sinks[:, None], 0.0)
    return min_max(grid), reported(model, goals, normed, earlier)


def _traced_pass(
    model: VisionTransformer, x: torch.Tensor, start: int
) -> tuple[list[Trace], torch.Tensor, torch.Tensor | None, torch.Tensor, Rope | None]:
    """Blocks ``0..start-1`` without autograd, ``start..`` traced: the traces, the last block's normed
    tokens (with autograd), a cls4_mean head's earlier [CLS] (or None), the raw final tokens, the rope."""
    blocks = cast(list[Block], model.blocks)
    tokens, rope = model.prepare_tokens(x)
    outputs: dict[int, torch.Tensor] = {}
    tokens = _run_untraced(model, tokens, range(start), rope, outputs).detach().requires_grad_(True)
    traces: list[Trace] = []
    for i in range(start, model.depth):
        tokens, trace = blocks[i].traced(tokens, rope)
        traces.append(trace)
        outputs[i] = tokens
        model.note(i, tokens.detach())
    earlier = _earlier(model, outputs)
    return traces, model.norm(tokens), earlier, tokens, rope


def chefer(
    model: VisionTransformer, x: torch.Tensor, goals: Goals, query: int | None, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chefer's rule over every block: (B, 3, H, W) -> maps (B, T, H/p, W/p) (raw rows of R) and the
    goals' reported scores (B, T). ``query``: the token whose row is read (None: SigLIP's probe)."""
    traces, normed, earlier, final, rope = _traced_pass(model, x, 0)
    model.finish(final.detach(), model.depth, rope)
    probe_weights: torch.Tensor | None = None
    if query is None and model.attn_pool is not None:  # SigLIP's probe: its attention over block L's output tokens
        pooled, probe_weights = model.attn_pool.traced(normed)
    else:
        pooled = model.pool(normed)
    logits = model.logits(normed, earlier) if model.head is not None else None
    embedding = model.embed_image(pooled)
    resolve_top(model, goals, logits.detach() if logits is not None else None, embedding.detach())
    s = scores(model, goals, logits, embedding)  # (B, T)
    B, N, _ = final.shape
    chunk = chunk or row_chunk(x.device, B, model.num_heads, N)
    valid = goals.valid()
    rows = x.new_zeros(B, goals.count, N, dtype=torch.float32)
    wrt = [trace.o for trace in traces] + ([probe_weights] if probe_weights is not None else [])
    for t in range(goals.count):
        if not bool(valid[:, t].any()):
            continue
        grads = torch.autograd.grad(s[:, t].sum(), wrt, retain_graph=t < goals.count - 1)
        if probe_weights is not None:  # the probe's cam row over block L's output tokens
            r, live = (grads[-1].float() * probe_weights.float()).clamp(min=0).mean(dim=1), N
        else:
            r = x.new_zeros(B, N, dtype=torch.float32)
            r[:, cast(int, query)], live = 1.0, cast(int, query) + 1
        for trace, grad in zip(reversed(traces), reversed(grads[: len(traces)]), strict=True):
            r, live = cam_rows(trace, grad, r, live, chunk), N
        rows[:, t] = r
    with torch.no_grad():
        return _grid(model, x, rows), reported(model, goals, normed, earlier)


def gradcam(model: VisionTransformer, x: torch.Tensor, goals: Goals, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM on block ``layer``'s normed input tokens: (B, 3, H, W) -> maps (B, T, H/p, W/p) and the
    goals' reported scores (B, T)."""
    traces, normed, earlier, final, rope = _traced_pass(model, x, layer)
    model.finish(final.detach(), model.depth, rope)
    logits = model.logits(normed, earlier) if model.head is not None else None
    embedding = model.embed_image(model.pool(normed))
    resolve_top(model, goals, logits.detach() if logits is not None else None, embedding.detach())
    s = scores(model, goals, logits, embedding)
    activations = traces[0].h  # (B, N, C)
    B, N, _ = activations.shape
    valid = goals.valid()
    maps = x.new_zeros(B, goals.count, N, dtype=torch.float32)
    for t in range(goals.count):
        if not bool(valid[:, t].any()):
            continue
        (grad,) = torch.autograd.grad(s[:, t].sum(), activations, retain_graph=t < goals.count - 1)
        prefix = model.num_prefix_tokens
        a, g = activations[:, prefix:].float().detach(), grad[:, prefix:].float()  # (B, P, C)
        weights = g.mean(dim=1, keepdim=True)  # (B, 1, C): the spatial mean of each channel's gradient
        maps[:, t, prefix:] = (a * weights).sum(dim=-1).clamp(min=0)
    grid = _grid(model, x, maps)
    with torch.no_grad():
        flat = grid.flatten(2)
        shifted = flat - flat.amin(dim=-1, keepdim=True)
        return (shifted / (shifted.amax(dim=-1, keepdim=True) + 1e-7)).reshape(grid.shape), reported(model, goals, normed, earlier)
