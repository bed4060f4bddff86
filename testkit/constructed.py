"""Constructed models whose decisions are known: class k (or prompt k) is driven by the patches of
colour k only. On ``region_image`` (32 x 32: a 4 x 4 grid of 8-pixel patches, the left half red, the
right half blue) class 0 is driven by region 0's patches only, class 1 by region 1's, so a map that
explains the decision must peak there.

One block, two heads; channels of the 8-dim tokens:

    0, 1   the patch's mean red, blue (normalised; the patch projection)
    3      the [CLS] marker
    4, 5   after the block: head k's output, the colour k of the patches [CLS] attends to
    6, 7   large constants in [CLS] (the final norm's scale then barely moves)

Head k's query is a constant (its bias) and its key reads channel k, so every query attends to the
patches of colour k (sharply: ``SHARPNESS``); its value reads channel k too. The classifier's logit k
reads channel 4 + k of the normed [CLS]; the CLIP-like model projects channel 4 + k to joint dim k,
and its text tower maps the prompt ``REGION_PROMPTS[k]`` (one word) to joint dim k.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import numpy as np
import torch

from vitscope.model.layers import Block
from vitscope.model.tokenizer import Tokenizer
from vitscope.model.variants import TextVariant, Variant
from vitscope.model.vit import VisionTransformer

SIZE, PATCH, GRID = 32, 8, 4
SHARPNESS = 6.0  # the attention logit of a patch of the head's region over the others'
REGION_PROMPTS = ("red", "blue")  # region 0, region 1
REGION_CLASSIFIER = Variant(
    "region_classifier", "vit", "custom", PATCH, 8, 1, 2, eps=1e-6, pretrain_img_size=SIZE, num_classes=2, interpolate_offset=0.0
)
REGION_TEXT = TextVariant(vocab_size=49408, context_length=8, embed_dim=8, depth=1, num_heads=1, proj_dim=3, act="gelu")
REGION_CLIP = replace(REGION_CLASSIFIER, name="region_clip", family="clip", num_classes=0, proj_dim=3, text=REGION_TEXT)


def region_of(row: int, column: int) -> int:
    """The region of the patch at (row, column) of the grid: 0 left (red), 1 right (blue)."""
    return 0 if column < GRID // 2 else 1


def region_image(seed: int = 0, noise: int = 30) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: the left half red, the right half blue, with a little noise."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.int64)
    pixels[:, : SIZE // 2, 0] = 220
    pixels[:, SIZE // 2 :, 2] = 220
    pixels += np.random.default_rng(seed).integers(0, noise, pixels.shape)
    return pixels.clip(0, 255).astype(np.uint8)


def region_mask(region: int) -> torch.Tensor:
    """(GRID, GRID) bool: the patches of ``region``."""
    return torch.tensor([[region_of(r, c) == region for c in range(GRID)] for r in range(GRID)])


def _image_tower(model: VisionTransformer) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                p.fill_(1.0)
        model.patch_embed.proj.weight[0, 0] = 1.0 / (PATCH * PATCH)  # channel 0: mean red
        model.patch_embed.proj.weight[1, 2] = 1.0 / (PATCH * PATCH)  # channel 1: mean blue
        model.cls_token[0, 0, 3] = 1.0
        model.cls_token[0, 0, 6], model.cls_token[0, 0, 7] = 10.0, -10.0
        attn = cast(Block, model.blocks[0]).attn
        d = attn.head_dim  # 4
        C = model.variant.embed_dim
        qkv_w, qkv_b = attn.qkv.weight, attn.qkv.bias
        for k in range(2):
            qkv_b[k * d] = SHARPNESS / attn.scale  # head k's query: a constant, so logits = SHARPNESS * key
            qkv_w[C + k * d, k] = 1.0  # head k's key: colour k
            qkv_w[2 * C + k * d, k] = 1.0  # head k's value: colour k
            attn.proj.weight[4 + k, k * d] = 1.0  # head k's output -> channel 4 + k


def region_classifier(head_scale: float = 1.0) -> VisionTransformer:
    """The classifier: logit k = ``head_scale`` x the normed [CLS]'s channel 4 + k, the colour k of the
    patches of colour k (a steeper head: probabilities that move by tenths as a region goes)."""
    model = VisionTransformer(REGION_CLASSIFIER)
    _image_tower(model)
    assert model.head is not None
    with torch.no_grad():
        model.head.weight[0, 4] = model.head.weight[1, 5] = head_scale
    return model.eval().requires_grad_(False)


def region_clip(tokenizer: Tokenizer) -> VisionTransformer:
    """The CLIP-like model: joint dim k = channel 4 + k (colour k); the prompt ``REGION_PROMPTS[k]``
    embeds to joint dim k (its word's embedding, averaged into the end-of-text token by a uniform
    causal attention), both with a constant third dim so that the cosines stay in range."""
    model = VisionTransformer(REGION_CLIP)
    _image_tower(model)
    text = model.text
    assert model.proj is not None and text is not None
    with torch.no_grad():
        model.proj.weight[0, 4] = model.proj.weight[1, 5] = 1.0
        model.proj.weight[2, 6] = 0.1  # a constant dim: the image's cosine to a prompt grows with its colour
        for p in text.parameters():
            p.zero_()
        for name, p in text.named_parameters():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                p.fill_(1.0)
        for k, word in enumerate(REGION_PROMPTS):
            ids = [int(i) for i in tokenizer.encode([word])[0] if int(i) not in (0, 49406, 49407)]
            text.token_embedding.weight[ids, 1 + k] = 8.0
        text.token_embedding.weight[:, 3] = 1.0  # every token: a constant channel
        attn = cast(Block, text.blocks[0]).attn
        C = REGION_TEXT.embed_dim
        for channel in range(C):
            attn.qkv.weight[2 * C + channel, channel] = 1.0  # values: the normed tokens; queries, keys 0: uniform
            attn.proj.weight[channel, channel] = 1.0
        text.proj.weight[0, 1] = text.proj.weight[1, 2] = 1.0
        text.proj.weight[2, 3] = 0.5
    return model.eval().requires_grad_(False)
