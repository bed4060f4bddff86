"""State dicts in other libraries' layouts, renamed to the hub's (the official code's, ours): one
table per source, each a pure function of the state dict and the model it is for.

``from_timm``: timm's ``vit_*_dinov2`` / ``vit_*_reg4_dinov2`` (``timm.models.vision_transformer``)
and ``vit_*_dinov3`` / ``vit_*_dinov3_qkvb`` (``timm.models.eva``) models, as ``save_file`` /
``torch.save`` write their ``state_dict()``. What timm folds or leaves out is put back exactly:

* DINOv2 with registers: timm adds the [CLS] position to ``cls_token`` and keeps only the patch
  positions; the hub keeps both. Ours: ``cls_token`` as timm's, a zero [CLS] position (the sum
  the network sees is the same).
* DINOv3: LayerScale ``gamma_1/2`` -> ``ls1/ls2.gamma``; ``q_bias``/``v_bias`` -> ``qkv.bias`` with
  a zero key bias and the hub's ``bias_mask``; a model without them (timm's plain ``vit_*_dinov3``)
  has zero biases. The RoPE periods are the model's own (a function of its base and width).
* ``mask_token`` (the masked-image-modelling token, unused at inference) is zeros where timm drops it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .variants import Variant

# timm name -> hub name, per family; each (pattern, replacement) applied to every key in order
TIMM_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "dinov2": ((r"^reg_token$", "register_tokens"),),
    "dinov3": (
        (r"^reg_token$", "storage_tokens"),
        (r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma"),
    ),
}
SWIGLU_KEYS = ((r"\.mlp\.fc1\.", ".mlp.w12."), (r"\.mlp\.fc2\.", ".mlp.w3."))  # DINOv2 giant: timm's packed SwiGLU


def rename(state: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def from_timm(state: Mapping[str, torch.Tensor], variant: Variant, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's state dict for ``variant`` in the hub's layout. ``reference``: a state dict of our model
    for ``variant`` (for the buffers timm does not store: RoPE periods, DINOv3's bias mask, the shapes
    of what timm leaves out). Pure: the inputs are not modified."""
    table = TIMM_KEYS.get(variant.family, ())
    if variant.ffn == "swiglu_fused":
        table = (*table, *SWIGLU_KEYS)
    out = rename(state, table)
    dim = variant.embed_dim
    if variant.num_registers and variant.family == "dinov2" and "pos_embed" in out:
        positions = out["pos_embed"]  # (1, patches, C): timm's register models keep the [CLS] position in cls_token
        out["pos_embed"] = torch.cat([positions.new_zeros(1, 1, dim), positions], dim=1)
    if variant.family == "dinov3":
        for i in range(variant.depth):
            prefix = f"blocks.{i}.attn."
            q, v = out.pop(prefix + "q_bias", None), out.pop(prefix + "v_bias", None)
            if prefix + "qkv.bias" not in out:
                zeros = torch.zeros(dim)
                out[prefix + "qkv.bias"] = torch.cat([q if q is not None else zeros, zeros, v if v is not None else zeros])
            out.setdefault(prefix + "qkv.bias_mask", reference[prefix + "qkv.bias_mask"].clone())
        out.setdefault("rope_embed.periods", reference["rope_embed.periods"].clone())
    if "mask_token" in reference:
        out.setdefault("mask_token", torch.zeros_like(reference["mask_token"]))
    return out


SOURCES: dict[str, Callable[[Mapping[str, torch.Tensor], Variant, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "timm": from_timm,
}
