"""State dicts in other libraries' layouts, renamed to the hub's (the official code's, ours): one
table per source, each a pure function of the state dict and the model it is for.

``from_hub``: a family's own checkpoints (its official code's, torch.hub's) where their names are not
our network's: the family's key map in ``HUB_KEYS`` (docs/guides/model-family.md). DINO's, DINOv2's
and DINOv3's names are ours: nothing to rename.

``from_hf``: Hugging Face transformers' ``Dinov2Model``, ``Dinov2WithRegistersModel`` and
``DINOv3ViTModel`` (``HF_KEYS``); their separate query/key/value projections are stacked into ``qkv``.

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

The image and text towers of ``towers.py``: transformers' ViT/DeiT (``HF_VIT_KEYS``) and CLIP/SigLIP
(``HF_CLIP_VISION_KEYS``, ``HF_CLIP_TEXT_KEYS``), open_clip's (``OPENCLIP_VISION_KEYS``,
``OPENCLIP_TEXT_KEYS``); ``stack_qkv``, ``split_in_proj`` and ``as_token`` put their separate or
packed projections and unbatched tokens in our shapes.
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
# A family's own checkpoint names -> ours, where they differ (its key map); each (pattern, replacement)
# applied to every key in order. A family not here uses our names (DINO, DINOv2, DINOv3).
HUB_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    # "family": ((r"^their\.name\.", "our.name."), ...),
}


def rename(state: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def from_hub(state: Mapping[str, torch.Tensor], variant: Variant) -> dict[str, torch.Tensor]:
    """A checkpoint in the key names of ``variant``'s family (``HUB_KEYS``) in ours. Pure."""
    return rename(state, HUB_KEYS.get(variant.family, ()))


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


# Hugging Face transformers name -> hub name, per family (Dinov2Model and Dinov2WithRegistersModel
# share one layout; DINOv3ViTModel has its own). q, k and v are separate there: ``HF_QKV`` joins them.
HF_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "dinov2": (
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.register_tokens$", "register_tokens"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
        # transformers 5 names the same projections q/k/v/o_proj in memory (its state_dict(), torch.save);
        # save_pretrained converts them back to the names above
        (r"^encoder\.layer\.(\d+)\.attention\.q_proj\.", r"blocks.\1.attn.query."),
        (r"^encoder\.layer\.(\d+)\.attention\.k_proj\.", r"blocks.\1.attn.key."),
        (r"^encoder\.layer\.(\d+)\.attention\.v_proj\.", r"blocks.\1.attn.value."),
        (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),  # SwiGLU (ViT-g)
        (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
        (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
        (r"^layernorm\.", "norm."),
        (r"^classifier\.", "head."),  # Dinov2[WithRegisters]ForImageClassification's head (sources.load_hf_directory)
    ),
    "dinov3": (
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.register_tokens$", "storage_tokens"),
        (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
        (r"^layer\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
        (r"^layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
        (r"^layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^layer\.(\d+)\.mlp\.gate_proj\.", r"blocks.\1.mlp.w1."),  # gated (SwiGLU): silu(w1 x) * w2 x -> w3
        (r"^layer\.(\d+)\.", r"blocks.\1."),  # norm1, norm2, mlp.up_proj/down_proj (renamed below)
    ),
}
HF_MLP = {"mlp": ("fc1", "fc2"), "swiglu": ("w2", "w3")}  # DINOv3's up_proj, down_proj in our FFNs
HF_QKV = {"dinov2": ("query", "key", "value"), "dinov3": ("q", "k", "v")}


def from_hf(state: Mapping[str, torch.Tensor], variant: Variant, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``DINOv3ViTModel`` state dict
    (prefixes already stripped) in the hub's layout for ``variant``. q, k, v are stacked into ``qkv``
    (a bias the config leaves out is zero: DINOv3's key bias); DINOv3's buffers come from ``reference``."""
    layout = "dinov3" if variant.family == "dinov3" else "dinov2"  # DINOv2's layout also names a DINO (v1) ViT's keys
    table = HF_KEYS[layout]
    if layout == "dinov3":
        up, down = HF_MLP["swiglu" if variant.ffn == "swiglu" else "mlp"]
        table = (*table, (r"\.mlp\.up_proj\.", f".mlp.{up}."), (r"\.mlp\.down_proj\.", f".mlp.{down}."))
    out = rename(state, table)
    names = HF_QKV[layout]
    for i in range(variant.depth):
        prefix = f"blocks.{i}.attn."
        parts = [out.pop(f"{prefix}{n}.weight", None) for n in names]
        if all(p is not None for p in parts):
            out[prefix + "qkv.weight"] = torch.cat(parts)  # type: ignore[arg-type]
        biases = [out.pop(f"{prefix}{n}.bias", None) for n in names]
        if any(b is not None for b in biases):
            zeros = torch.zeros(variant.embed_dim)
            out[prefix + "qkv.bias"] = torch.cat([b if b is not None else zeros for b in biases])
        elif prefix + "qkv.bias" in reference:
            out[prefix + "qkv.bias"] = torch.zeros(3 * variant.embed_dim)
        if prefix + "qkv.bias_mask" in reference:
            out.setdefault(prefix + "qkv.bias_mask", reference[prefix + "qkv.bias_mask"].clone())
    if "rope_embed.periods" in reference:
        out.setdefault("rope_embed.periods", reference["rope_embed.periods"].clone())
    if "mask_token" in out and "mask_token" in reference:
        out["mask_token"] = out["mask_token"].reshape(reference["mask_token"].shape)  # DINOv3: (1, 1, C) there
    return out


SOURCES: dict[str, Callable[[Mapping[str, torch.Tensor], Variant, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "timm": from_timm,
    "huggingface": from_hf,
}


# ----------------------------------------------------------------------------- image and text towers
# transformers' ViT and DeiT (ViTModel, ViTForImageClassification, DeiTModel, DeiTForImageClassification,
# DeiTForImageClassificationWithTeacher), base-model prefix (``vit.``, ``deit.``) stripped: the names
# save_pretrained writes (``encoder.layer.i.attention.attention.query``, ``intermediate.dense``,
# ``output.dense``) and those transformers 5 holds in memory (``layers.i.attention.q_proj``, ``mlp.fc1``).
# q, k and v become ``blocks.i.attn.{q,k,v}``, stacked into qkv by ``stack_qkv``.
HF_VIT_KEYS: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.(?:attention\.query|q_proj)\.", ".attn.q."),
    (r"\.attention\.(?:attention\.key|k_proj)\.", ".attn.k."),
    (r"\.attention\.(?:attention\.value|v_proj)\.", ".attn.v."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"^(blocks\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^(?:classifier|cls_classifier)\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
)
# The encoder layers of transformers' CLIP and SigLIP towers (both in memory and saved).
HF_ENCODER_KEYS: tuple[tuple[str, str], ...] = (
    (r"^encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"\.self_attn\.(q|k|v)_proj\.", r".attn.\1."),
    (r"\.self_attn\.out_proj\.", ".attn.proj."),
    (r"\.layer_norm1\.", ".norm1."),
    (r"\.layer_norm2\.", ".norm2."),
)  # mlp.fc1, mlp.fc2: ours
# transformers' CLIP / SigLIP image tower (``vision_model.`` stripped), with SigLIP's attention-pool head:
# its nn.MultiheadAttention's packed in_proj is split into q and kv by ``split_in_proj``.
HF_CLIP_VISION_KEYS: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.class_embedding$", "cls_token"),  # (C,): reshaped to (1, 1, C)
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),  # (N, C): reshaped to (1, N, C)
    (r"^pre_layrnorm\.", "norm_pre."),  # sic: transformers' name
    (r"^post_layernorm\.", "norm."),
    (r"^head\.probe$", "attn_pool.latent"),
    (r"^head\.attention\.in_proj_(weight|bias)$", r"attn_pool.in_proj.\1"),
    (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"^head\.layernorm\.", "attn_pool.norm."),
    (r"^head\.mlp\.", "attn_pool.mlp."),
    *HF_ENCODER_KEYS,
)
# transformers' CLIP / SigLIP text tower (``text_model.`` stripped; ``text.`` is prepended after).
HF_CLIP_TEXT_KEYS: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.token_embedding\.", "token_embedding."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^final_layer_norm\.", "norm."),
    (r"^head\.", "proj."),  # SigLIP's projection (with a bias)
    *HF_ENCODER_KEYS,
)
# open_clip's residual attention blocks (nn.MultiheadAttention: in_proj is q, k, v stacked as our qkv).
OPENCLIP_BLOCK_KEYS: tuple[tuple[str, str], ...] = (
    (r"^transformer\.resblocks\.(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    (r"\.ls_([12])\.gamma$", r".ls\1.gamma"),
)
# open_clip's own image tower (``visual.`` stripped; a timm trunk, ``visual.trunk.``, is timm's = ours).
OPENCLIP_VISION_KEYS: tuple[tuple[str, str], ...] = (
    (r"^class_embedding$", "cls_token"),  # (C,): reshaped to (1, 1, C)
    (r"^positional_embedding$", "pos_embed"),  # (N, C): reshaped to (1, N, C)
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^proj$", "proj.weight"),  # (C, D), x @ proj: transposed to a Linear's (D, C)
    *OPENCLIP_BLOCK_KEYS,
)
# open_clip's text tower (CLIP: top-level keys; CustomTextCLIP, SigLIP: under ``text.``, stripped).
OPENCLIP_TEXT_KEYS: tuple[tuple[str, str], ...] = (
    (r"^positional_embedding$", "pos_embed"),
    (r"^ln_final\.", "norm."),
    (r"^text_projection$", "proj.weight"),  # (W, D), x @ text_projection: transposed to a Linear's (D, W)
    (r"^text_projection\.", "proj."),  # a Linear (proj_bias: SigLIP)
    *OPENCLIP_BLOCK_KEYS,
)  # token_embedding: ours


def stack_qkv(state: Mapping[str, torch.Tensor], prefix: str, depth: int, zero_bias: int = 0) -> dict[str, torch.Tensor]:
    """``{prefix}blocks.i.attn.{q,k,v}.{weight,bias}`` stacked into ``attn.qkv`` (q, k, v: our order).
    ``zero_bias``: the width of the zero biases of a model whose config leaves them out (0: none added).
    A block missing any of q, k, v is left as it is (the strict check names the keys). Pure."""
    out = dict(state)
    for i in range(depth):
        attn = f"{prefix}blocks.{i}.attn."
        for part in ("weight", "bias"):
            names = [f"{attn}{n}.{part}" for n in "qkv"]
            if all(name in out for name in names):
                out[f"{attn}qkv.{part}"] = torch.cat([out.pop(name) for name in names])
            elif part == "bias" and zero_bias and not any(name in out for name in names):
                out[f"{attn}qkv.bias"] = torch.zeros(3 * zero_bias)
    return out


def split_in_proj(state: Mapping[str, torch.Tensor], prefix: str = "attn_pool.") -> dict[str, torch.Tensor]:
    """An nn.MultiheadAttention's packed ``in_proj`` (3C, C) under ``prefix`` -> our probe's ``q`` (rows
    0:C) and ``kv`` (rows C:3C, keys then values), as timm's AttentionPoolLatent. Pure."""
    out = dict(state)
    for part in ("weight", "bias"):
        packed = out.pop(f"{prefix}in_proj.{part}", None)
        if packed is not None:
            dim = packed.shape[0] // 3
            out[f"{prefix}q.{part}"], out[f"{prefix}kv.{part}"] = packed[:dim], packed[dim:]
    return out


def as_token(state: Mapping[str, torch.Tensor], *names: str) -> dict[str, torch.Tensor]:
    """Vectors (C,) and (N, C) stored without a batch dimension (CLIP's class embedding, position
    embeddings) as ours, (1, 1, C) and (1, N, C); 0-d ``logit_scale``/``logit_bias`` from (1,). Pure."""
    out = dict(state)
    for name in names:
        value = out.get(name)
        if value is None:
            continue
        if name.startswith("logit_"):
            out[name] = value.reshape(()) if value.numel() == 1 else value
        elif value.ndim == 1:
            out[name] = value.reshape(1, 1, -1)
        elif value.ndim == 2:
            out[name] = value[None]
    return out


def with_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}
