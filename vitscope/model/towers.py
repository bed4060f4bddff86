"""Supervised ViTs and image-text towers as people deploy them, read at archive time into our ``Variant``
and a state dict in our layout (as ``sources.py``, which calls this module; the worker never imports it):

* a transformers directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``) of model_type
  ``vit`` (ViTModel, ViTForImageClassification), ``deit`` (DeiTModel, DeiTForImageClassification,
  DeiTForImageClassificationWithTeacher), ``clip`` (CLIPModel), ``clip_vision_model`` (CLIPVisionModel,
  CLIPVisionModelWithProjection), ``siglip`` (SiglipModel) or ``siglip_vision_model`` (SiglipVisionModel):
  ``hf_tower``, the architecture from its config (transformers' defaults where it is silent);
* ``MODEL=timm:<model name>``: ``timm_variant`` reads the architecture off timm's own model, built on
  the meta device (no weights); a timm state dict's patch size, position grid and head then come from
  its tensors (``tower_state``);
* ``MODEL=open_clip:<config>``: ``open_clip_variant`` builds both towers from open_clip's model config
  (its own ViT, or a timm trunk as SigLIP's); ``from_open_clip`` converts its state dict.

Each library's position resize is kept: transformers' bicubic to the exact size, no antialias; timm's
``resample_abs_pos_embed`` and open_clip's ``resize_pos_embed``, bicubic to the exact size, antialiased.
A timm model's ``head`` is read as a classifier, whatever it was trained as: timm's CLIP towers converted
from open_clip keep the image projection there (``vit_base_patch16_clip_224.openai``: a 512-"class" head);
archive the open_clip checkpoint (``MODEL=open_clip:``) to serve it as the projection with its text tower.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .checkpoint import CheckpointError
from .keymaps import (
    HF_CLIP_TEXT_KEYS,
    HF_CLIP_VISION_KEYS,
    HF_VIT_KEYS,
    OPENCLIP_TEXT_KEYS,
    OPENCLIP_VISION_KEYS,
    as_token,
    rename,
    split_in_proj,
    stack_qkv,
    with_prefix,
)
from .tokenizer import OPENCLIP_BPE
from .variants import FAMILIES, TextVariant, Variant

logger = logging.getLogger(__name__)

SIZE_CLASSES: dict[int, str] = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}
TIMM_SPEC, OPEN_CLIP_SPEC = "timm:", "open_clip:"  # the MODEL= prefixes of a library's model (``base_from_spec``)

# model_type -> the architectures read (config.json's ``architectures``; without it, the tensors say).
HF_TOWERS: dict[str, tuple[str, ...]] = {
    "vit": ("ViTModel", "ViTForImageClassification"),
    "deit": ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
    "clip": ("CLIPModel",),
    "clip_vision_model": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "siglip": ("SiglipModel",),
    "siglip_vision_model": ("SiglipVisionModel",),
}
HF_FAMILIES = {"vit": "vit", "deit": "vit", "clip": "clip", "clip_vision_model": "clip"}  # model_type -> our family
HF_FAMILIES |= {"siglip": "siglip", "siglip_vision_model": "siglip"}
TIMM_ACTS = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}  # timm.layers.activations' classes -> ours
HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh"}  # hidden_act -> ours
# transformers' defaults of what is read here (its config classes'), for configs that leave them out.
_HF_VIT = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
}
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": _HF_VIT,
    "deit": _HF_VIT,
    "clip_vision_model": {**_HF_VIT, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "patch_size": 32, "projection_dim": 512},
    "clip_text_model": {
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
    },
    "siglip_vision_model": {**_HF_VIT, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True},
    "siglip_text_model": {
        **_HF_VIT,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vocab_size": 32000,
        "max_position_embeddings": 64,
        "projection_size": None,  # the hidden size
    },
}
# Tensors of a transformers checkpoint that inference does not use, dropped by name: ViTModel's pooler
# (a tanh layer after [CLS], not part of the image embedding), the masked-image-modelling token, and the
# position_ids buffers older transformers saved.
HF_UNUSED = re.compile(r"^pooler\.|^embeddings\.mask_token$|embeddings\.position_ids$")


@dataclass(frozen=True)
class Tower:
    """A converted checkpoint: our layout's tensors, the variant that serves them, its head's class names."""

    state: dict[str, torch.Tensor]
    variant: Variant
    labels: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- config values
def number(config: Mapping[str, object], key: str, default: float | None = None) -> float:
    """A numeric config value (``default`` when absent; required when there is none)."""
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"config.json lacks {key}: hidden_size, num_hidden_layers and num_attention_heads are needed")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CheckpointError(f"config.json: {key}={value!r} is not a number")
    return float(value)


def square(config: Mapping[str, object], key: str) -> int:
    """An int config value, or a [h, w] list with h == w (our position grids and patches are square)."""
    value = config.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"config.json: {key}={config.get(key)!r} is not supported (a positive int, square)")
    return value


def mlp_ratio(hidden: int, dim: int) -> float:
    """The ratio whose ``int(dim * ratio)`` is ``hidden`` (as our FFNs compute their width)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:  # hidden / dim rounded down a last bit
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def triple(values: object) -> tuple[float, float, float] | None:
    """Three channel values (a preprocessor's image_mean/std), or None."""
    if isinstance(values, (list, tuple)) and len(values) == 3 and all(isinstance(c, (int, float)) for c in values):
        return (float(values[0]), float(values[1]), float(values[2]))
    return None


def url_safe_name(spec: str) -> str:
    """A library's model name made URL-safe (a Variant's default name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", spec).strip("._-")[:64] or "model"


# ----------------------------------------------------------------------------- transformers directories
def hf_architecture(config: Mapping[str, object], state: Mapping[str, torch.Tensor]) -> str:
    """The transformers class a config describes: its ``architectures``, else what its tensors hold."""
    model_type = str(config.get("model_type"))
    supported = HF_TOWERS[model_type]
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        if architectures[0] not in supported:
            raise CheckpointError(
                f"config.json: architectures {architectures} are not read here; model_type {model_type!r}: {list(supported)}"
            )
        return str(architectures[0])
    keys = set(state)
    if model_type == "vit":
        return supported[1] if "classifier.weight" in keys else supported[0]
    if model_type == "deit":
        return supported[2] if "cls_classifier.weight" in keys else supported[1] if "classifier.weight" in keys else supported[0]
    if model_type == "clip_vision_model":
        return supported[1] if "visual_projection.weight" in keys else supported[0]
    return supported[0]


def hf_labels(config: Mapping[str, object], classes: int) -> tuple[str, ...]:
    """A classifier's class names from ``id2label``, in class order; () without real names
    (transformers' placeholders LABEL_0, ...) or when they do not match the head."""
    id2label = config.get("id2label")
    if not classes or not isinstance(id2label, Mapping) or len(id2label) != classes:
        return ()
    try:
        indices = sorted(id2label, key=int)
    except (TypeError, ValueError):
        return ()
    if [int(k) for k in indices] != list(range(classes)):
        raise CheckpointError(f"config.json: id2label's keys must be the classes 0..{classes - 1}; they are {indices[:5]}...")
    labels = tuple(str(id2label[k]) for k in indices)
    return () if all(re.fullmatch(r"LABEL_\d+", label) for label in labels) else labels


def hf_classes(config: Mapping[str, object]) -> int:
    """A classifier's number of classes (transformers: ``len(id2label)``; 2 by default)."""
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, Mapping) and id2label else int(number(config, "num_labels", 2))


def hf_image_variant(
    config: Mapping[str, object], name: str, family: str, preprocessor: Mapping[str, object] | None, **flags: Any
) -> Variant:
    """The image tower of a transformers ViT / DeiT / CLIP / SigLIP vision config (defaults merged in)."""
    if config.get("num_channels", 3) != 3:
        raise CheckpointError(f"config.json: num_channels={config.get('num_channels')!r} is not supported (RGB images: 3)")
    act = config.get("hidden_act")
    if act not in HF_ACTS:
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported; supported: {sorted(HF_ACTS)}")
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    dim, depth, heads, hidden = (int(number(config, k)) for k in sizes)
    return Variant(
        name=name,
        family=family,
        arch=SIZE_CLASSES.get(dim, "custom"),
        patch_size=square(config, "patch_size"),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio(hidden, dim),
        ffn_hidden_dim=hidden,
        eps=number(config, "layer_norm_eps"),
        pretrain_img_size=square(config, "image_size"),
        interpolate_offset=0.0,  # transformers: bicubic to the exact size, align_corners=False, no antialias
        interpolate_antialias=False,
        image_mean=triple((preprocessor or {}).get("image_mean")),
        image_std=triple((preprocessor or {}).get("image_std")),
        act=HF_ACTS[str(act)],
        **flags,
    )


def hf_text_variant(config: Mapping[str, object], kind: str, proj_dim: int) -> TextVariant:
    """The text tower of a transformers CLIP (``kind`` clip) or SigLIP (siglip) text config."""
    t = {**HF_DEFAULTS[f"{kind}_text_model"], **config}
    act = t.get("hidden_act")
    if act not in HF_ACTS:
        raise CheckpointError(f"config.json: text_config hidden_act={act!r} is not supported; supported: {sorted(HF_ACTS)}")
    width, depth, heads, hidden, vocab, context = (
        int(number(t, k))
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings")
    )
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "context_length": context,
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": mlp_ratio(hidden, width),
        "act": HF_ACTS[str(act)],
        "eps": number(t, "layer_norm_eps"),
    }
    if kind == "siglip":  # the last position, no causal mask, a projection with a bias; tokenizer.json
        projection = t.get("projection_size") or width
        return TextVariant(**common, proj_dim=int(projection), causal=False, pool="last", proj_bias=True, tokenizer="json")
    eos = int(number(t, "eos_token_id"))
    # eos_token_id 2: the configs before transformers#24773, which pool at the largest id (argmax): CLIP's
    # end-of-text, the last of its vocabulary
    return TextVariant(**common, proj_dim=proj_dim, eot_token_id=vocab - 1 if eos == 2 else eos, tokenizer="clip")


def hf_tower(
    config: Mapping[str, object], preprocessor: Mapping[str, object] | None, state: Mapping[str, torch.Tensor], name: str
) -> Tower:
    """A transformers ViT / DeiT / CLIP / SigLIP checkpoint (its config.json, preprocessor config and
    tensors as saved) in our layout, with its Variant and class names. Not yet checked against the model."""
    model_type = str(config.get("model_type"))
    architecture = hf_architecture(config, state)
    family = HF_FAMILIES[model_type]
    variant: Variant
    if model_type in ("vit", "deit"):
        merged = {**HF_DEFAULTS[model_type], **config}
        classified = architecture.endswith(("ForImageClassification", "WithTeacher"))
        variant = hf_image_variant(
            merged,
            name,
            family,
            preprocessor,
            distill_token=model_type == "deit",
            num_classes=hf_classes(config) if classified else 0,
            # DeiTForImageClassification classifies [CLS] alone; ...WithTeacher averages both heads (head, head_dist)
            head_input="cls" if architecture == "DeiTForImageClassification" else "token",
        )
        zero_bias = 0 if merged.get("qkv_bias", True) else variant.embed_dim
        return Tower(from_hf_vit(state, variant, model_type, zero_bias), variant, hf_labels(config, variant.num_classes))
    vision_only = model_type.endswith("_vision_model")
    vision = {**HF_DEFAULTS[f"{family}_vision_model"], **(config if vision_only else _section(config, "vision_config"))}
    text: TextVariant | None = None
    if family == "clip":
        proj_dim = int(number(config, "projection_dim", 512)) if not vision_only or architecture.endswith("WithProjection") else 0
        if not vision_only:
            text = hf_text_variant(_section(config, "text_config"), "clip", proj_dim)
        variant = hf_image_variant(vision, name, family, preprocessor, pre_norm=True, patch_bias=False, proj_dim=proj_dim, text=text)
    else:
        if not vision.get("vision_use_head", True):
            raise CheckpointError(
                "config.json: vision_use_head=false (SigLIP without its attention pool) is not supported: no query to map"
            )
        if not vision_only:
            text = hf_text_variant(_section(config, "text_config"), "siglip", 0)
        variant = hf_image_variant(
            vision, name, family, preprocessor, class_token=False, pool="map", text=text, logit_bias=text is not None
        )
    check_joint_space(variant)
    return Tower(from_hf_clip(state, variant, vision_only), variant)


def _section(config: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"config.json: {key} is a {type(value).__name__}, not an object")
    return value


def check_joint_space(variant: Variant) -> None:
    """The text tower's projection must land where the image embedding is (zero-shot compares them)."""
    if variant.text is not None and variant.text.proj_dim != variant.embed_size:
        raise CheckpointError(
            f"the text tower projects to {variant.text.proj_dim} dims but the image embedding has {variant.embed_size}: "
            "the config's projection sizes disagree (SigLIP: text_config.projection_size must be the vision hidden_size)"
        )


def drop_unused(state: Mapping[str, torch.Tensor], unused: re.Pattern[str] = HF_UNUSED) -> dict[str, torch.Tensor]:
    """``state`` without the tensors inference does not use (``HF_UNUSED``), logged by name. Pure."""
    dropped = sorted(k for k in state if unused.search(k))
    if dropped:
        logger.info("dropped %d tensor(s) inference does not use: %s", len(dropped), ", ".join(dropped))
    return {k: v for k, v in state.items() if k not in dropped}


def from_hf_vit(state: Mapping[str, torch.Tensor], variant: Variant, model_type: str, zero_bias: int = 0) -> dict[str, torch.Tensor]:
    """transformers' ViT / DeiT state dict (saved or in-memory names) in ours. Pure."""
    body = drop_unused({k.removeprefix(f"{model_type}."): v for k, v in state.items()})
    return stack_qkv(rename(body, HF_VIT_KEYS), "", variant.depth, zero_bias)


def from_hf_clip(state: Mapping[str, torch.Tensor], variant: Variant, vision_only: bool) -> dict[str, torch.Tensor]:
    """transformers' CLIP / SigLIP state dict (both towers, or the vision tower alone) in ours. Pure."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    top = {"visual_projection.weight": "proj.weight", "text_projection.weight": "text.proj.weight", "logit_scale": "logit_scale"}
    top["logit_bias"] = "logit_bias"
    for key, value in drop_unused(state).items():
        if key in top:
            out[top[key]] = value
        elif key.startswith("vision_model."):
            vision[key.removeprefix("vision_model.")] = value
        elif key.startswith("text_model."):
            text[key.removeprefix("text_model.")] = value
        elif vision_only:  # transformers 5 saves SiglipVisionModel without its vision_model. prefix
            vision[key] = value
        else:
            out[key] = value  # not ours: the strict check names it
    out |= split_in_proj(stack_qkv(rename(vision, HF_CLIP_VISION_KEYS), "", variant.depth))
    if variant.text is not None:
        out |= with_prefix(stack_qkv(rename(text, HF_CLIP_TEXT_KEYS), "", variant.text.depth), "text.")
    return as_token(out, "cls_token", "pos_embed", "logit_scale", "logit_bias")


# ----------------------------------------------------------------------------- timm
def timm_variant(model_name: str, name: str | None = None, **kwargs: Any) -> Variant:
    """Our Variant of timm's model ``model_name`` (an architecture, optionally ``.tag``), read off the
    model timm builds on the meta device (no weights, no download). ``kwargs``: timm.create_model's
    (open_clip's trunks: num_classes, global_pool). ``CheckpointError`` names what we do not compute."""
    try:
        import timm
    except ImportError as e:
        raise CheckpointError(f"MODEL={TIMM_SPEC}{model_name} needs timm at archive time: pip install timm") from e
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {close}" if close else ""
        raise CheckpointError(f"timm {timm.__version__} has no model {model_name!r}{hint} (timm.list_models('vit_*') lists them)")
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise CheckpointError(f"timm cannot build {model_name!r} with {kwargs}: {e}") from e
    return variant_from_timm_model(model, name or url_safe_name(model_name), model_name)


def variant_from_timm_model(module: nn.Module, name: str, model_name: str = "") -> Variant:
    """Our Variant of a timm ``VisionTransformer`` (on any device): its architecture, tokens, pooling and
    head; ``CheckpointError`` listing each thing we would not compute exactly."""
    from timm.layers import AttentionPoolLatent, LayerScale, Mlp, PatchEmbed
    from timm.layers.activations import GELU
    from timm.models.vision_transformer import Attention, Block
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    label = f"{TIMM_SPEC}{model_name or type(module).__name__}"
    if not isinstance(module, TimmViT):
        raise CheckpointError(
            f"{label} is timm's {type(module).__name__}, not its VisionTransformer (vision_transformer.py, deit.py): not read here "
            "(timm's DINOv3 ViTs: MODEL=dinov3_* with the file)"
        )
    model: Any = module  # timm's submodules, read by attribute
    blocks = list(model.blocks)
    first = blocks[0]
    dim, heads = int(model.embed_dim), int(first.attn.num_heads)
    problems: list[str] = []

    def need(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    need(all(type(b) is Block for b in blocks), f"blocks of type {type(first).__name__} (ours: timm's pre-norm Block)")
    for b in blocks:
        attn, mlp = b.attn, b.mlp
        need(type(attn) is Attention and attn.attn_dim == dim and attn.gate is None, "an attention other than timm's plain Attention")
        need(isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity), "qk_norm")
        need(isinstance(attn.norm, nn.Identity), "scale_attn_norm")
        need(attn.qkv.bias is not None and attn.proj.bias is not None, "qkv_bias=False or proj_bias=False")
        need(type(mlp) is Mlp and isinstance(mlp.norm, nn.Identity) and mlp.fc1.bias is not None, f"the FFN {type(mlp).__name__}")
        need(type(b.ls1) is type(first.ls1) and isinstance(b.ls1, (nn.Identity, LayerScale)), "mixed LayerScale")
    need(type(model.patch_embed) is PatchEmbed and isinstance(model.patch_embed.norm, nn.Identity), "a patch-embedding norm")
    need(not getattr(model.patch_embed, "dynamic_img_pad", False), "dynamic_img_pad")
    need(model.pos_embed is not None, "no position embedding (pos_embed='none')")
    need(isinstance(model.norm, nn.LayerNorm), "final_norm=False")
    need(isinstance(model.fc_norm, nn.Identity), "fc_norm (a norm after pooling)")
    need(isinstance(model.norm_pre, (nn.Identity, nn.LayerNorm)), "a pre-norm other than LayerNorm")
    norms = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}  # one eps in our Variant
    need(len(norms) == 1, f"LayerNorms with different eps {sorted(norms)}")
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    need(all(type(m) is nn.LayerNorm or type(m).__name__ == "LayerNorm" for m in layer_norms), "fp32 or other LayerNorm variants")
    act = first.mlp.act
    kind = TIMM_ACTS.get(type(act).__name__) if type(act).__module__ == GELU.__module__ else None
    if type(act) is nn.GELU:
        kind = {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    need(kind is not None, f"the activation {type(act).__name__} (ours: GELU, tanh GELU, QuickGELU)")
    pool = model.global_pool
    need(pool in ("token", "map"), f"global_pool={pool!r} (ours: 'token', [CLS], or 'map', SigLIP's probe; a mean has no query to map)")
    classes_token = model.cls_token is not None
    distilled = getattr(model, "dist_token", None) is not None
    registers = int(getattr(model, "num_reg_tokens", 0))
    if pool == "map":
        ap = model.attn_pool
        need(type(ap) is AttentionPoolLatent and ap.latent_len == 1 and ap.pos_embed is None, "an attention pool but one latent probe")
        need(not classes_token and not registers and not distilled, "an attention pool with a [CLS] or register token")
        if isinstance(ap, AttentionPoolLatent):
            ap = cast(Any, ap)
            plain = isinstance(ap.q, nn.Linear) and isinstance(ap.q_norm, nn.Identity) and ap.num_heads == heads
            need(plain, "an attention pool with qk_norm, no q projection or its own heads")
            need(ap.mlp is not None and not isinstance(ap.norm, nn.Identity), "an attention pool without its norm and MLP")
            need(
                ap.mlp is None or ap.mlp.fc1.out_features == first.mlp.fc1.out_features,
                "an attention pool MLP of another width than the blocks'",
            )
    family = "siglip" if pool == "map" else "clip" if isinstance(model.norm_pre, nn.LayerNorm) else "vit"
    dinov2 = bool(model.no_embed_class and registers and classes_token and isinstance(first.ls1, LayerScale))
    need(
        not model.no_embed_class or dinov2, "no_embed_class=True (class tokens without a position: read for DINOv2's register models only)"
    )
    need(not registers or dinov2, "register tokens with positions")
    need(not getattr(model, "pool_include_prefix", False), "pool_include_prefix")
    patch, image = model.patch_embed.patch_size, model.patch_embed.img_size
    need(patch[0] == patch[1] and image is not None and image[0] == image[1], f"a non-square patch {patch} or image {image}")
    if problems:
        raise CheckpointError(f"{label} is not a ViT this server computes exactly: {'; '.join(dict.fromkeys(problems))}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hidden = int(first.mlp.fc1.out_features)
    head = model.head
    ls = first.ls1
    variant = Variant(
        name=name,
        family="dinov2" if dinov2 else family,
        arch=SIZE_CLASSES.get(dim, "custom"),
        patch_size=int(patch[0]),
        embed_dim=dim,
        depth=len(blocks),
        num_heads=heads,
        mlp_ratio=mlp_ratio(hidden, dim),
        ffn_hidden_dim=hidden,
        eps=float(norms.pop()),
        layerscale_init=float(ls.init_values) if isinstance(ls, LayerScale) else None,
        num_registers=registers,
        pretrain_img_size=int(image[0]),
        interpolate_offset=0.0,  # timm's resample_abs_pos_embed: bicubic to the exact size, antialiased
        interpolate_antialias=True,
        image_mean=triple(cfg.get("mean")),
        image_std=triple(cfg.get("std")),
        class_token=classes_token,
        distill_token=distilled,
        pre_norm=isinstance(model.norm_pre, nn.LayerNorm),
        patch_bias=model.patch_embed.proj.bias is not None,
        act=kind or "gelu",
        pool=pool,
        num_classes=int(head.out_features) if isinstance(head, nn.Linear) else 0,
    )
    if variant.distill_token and variant.num_classes and not isinstance(getattr(model, "head_dist", None), nn.Linear):
        raise CheckpointError(f"{label}: a distillation token with a head but no head_dist")
    return variant


def tower_state(state: Mapping[str, torch.Tensor], base: Variant) -> tuple[dict[str, torch.Tensor], Variant, str]:
    """A timm or open_clip state dict (read and filtered: ``sources.read_weights``) for the Variant of a
    ``timm:`` / ``open_clip:`` spec: our layout, the variant it is served as, and the layout's name. For
    timm, the patch size, the position grid and the head's classes are the tensors' (a fine-tune)."""
    if any(k.startswith(("vision_model.", "text_model.", "embeddings.", "vit.", "deit.")) for k in state):
        raise CheckpointError("these are transformers' tensors: give the directory save_pretrained wrote (config.json + model.safetensors)")
    if any(k.startswith("visual.") for k in state):
        return from_open_clip(state), base, "open_clip"
    return dict(state), timm_shaped(state, base), "timm"


def timm_shaped(state: Mapping[str, torch.Tensor], base: Variant) -> Variant:
    """``base`` with the patch size, the position grid and the number of classes of timm's tensors."""
    variant = base
    proj = state.get("patch_embed.proj.weight")
    if isinstance(proj, torch.Tensor) and proj.ndim == 4 and proj.shape[-1] == proj.shape[-2]:
        variant = replace(variant, patch_size=int(proj.shape[-1]))
    positions = state.get("pos_embed")
    if isinstance(positions, torch.Tensor) and positions.ndim == 3:
        patches = positions.shape[1] - base.num_class_tokens
        grid = math.isqrt(max(patches, 0))
        if grid * grid != patches:
            prefix = base.num_class_tokens
            raise CheckpointError(
                f"pos_embed {tuple(positions.shape)}: {patches} patch positions after {prefix} class token(s), not a square grid"
            )
        variant = replace(variant, pretrain_img_size=grid * variant.patch_size)
    head = state.get("head.weight")
    classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else 0
    if classes != base.num_classes:
        logger.info("%s: a head of %d classes read from the checkpoint (timm's model has %d)", base.name, classes, base.num_classes)
        variant = replace(variant, num_classes=classes)
    if (variant.patch_size, variant.pretrain_img_size) != (base.patch_size, base.pretrain_img_size):
        grid = variant.pretrain_grid
        logger.info("%s: patch %d and a %dx%d position grid read from the checkpoint", base.name, variant.patch_size, grid, grid)
    return variant


# ----------------------------------------------------------------------------- open_clip
def open_clip_variant(config_name: str, name: str | None = None) -> Variant:
    """Our Variant of open_clip's model config ``config_name`` (``ViT-B-32``, ``ViT-B-16-SigLIP``, ...;
    ``local-dir:<folder>`` with an open_clip_config.json), both towers."""
    try:
        import open_clip
    except ImportError as e:
        raise CheckpointError(f"MODEL={OPEN_CLIP_SPEC}{config_name} needs open_clip at archive time: pip install open_clip_torch") from e
    if config_name.startswith("hf-hub:"):
        raise CheckpointError(
            f"MODEL={OPEN_CLIP_SPEC}{config_name}: archiving reads no network; download the repository's open_clip_config.json "
            "and give MODEL=open_clip:local-dir:<its folder>"
        )
    try:
        config = open_clip.get_model_config(config_name)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read open_clip's config {config_name!r}: {e}") from e
    if not config:
        close = difflib.get_close_matches(config_name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"; close names: {close}" if close else ""
        raise CheckpointError(f"open_clip has no model config {config_name!r}{hint} (open_clip.list_models() lists them)")
    return variant_from_open_clip_config(config, name or url_safe_name(config_name.removeprefix("local-dir:")))


# open_clip options that change the network away from what we compute, by tower config key
OPENCLIP_REFUSED: tuple[str, ...] = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
OPENCLIP_REFUSED += ("attentional_pool", "embed_cls")


def _open_clip_act(cfg: Mapping[str, Any], quick_gelu: bool, tower: str) -> str:
    kwargs = cfg.get("act_kwargs") or {}
    if quick_gelu:
        if kwargs:
            raise CheckpointError(f"open_clip {tower}: act_kwargs {kwargs} with quick_gelu is not supported")
        return "quick_gelu"
    if not kwargs:
        return "gelu"
    if dict(kwargs) == {"approximate": "tanh"}:
        return "gelu_tanh"
    raise CheckpointError(f"open_clip {tower}: act_kwargs {kwargs} is not supported (GELU, its tanh approximation, or quick_gelu)")


def _open_clip_checks(cfg: Mapping[str, Any], tower: str) -> None:
    refused = [k for k in OPENCLIP_REFUSED if cfg.get(k)]
    if cfg.get("block_type") not in (None, "default"):
        refused.append(f"block_type={cfg.get('block_type')!r}")
    if cfg.get("ls_init_value") is not None and tower == "text_cfg":
        refused.append("ls_init_value")
    if refused:
        raise CheckpointError(f"open_clip {tower}: {refused} change the network; not supported")


def open_clip_text(text: Mapping[str, Any], embed_dim: int, quick_gelu: bool) -> TextVariant:
    """The text tower of an open_clip config's ``text_cfg`` (its own TextTransformer)."""
    if text.get("hf_model_name"):
        raise CheckpointError(f"open_clip text_cfg: a Hugging Face text encoder ({text['hf_model_name']}) is not supported")
    _open_clip_checks(text, "text_cfg")
    vocab = int(text.get("vocab_size", 49408))
    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos", "last"):
        raise CheckpointError(f"open_clip text_cfg: pool_type={pool!r} is not supported (argmax, eos or last)")
    if text.get("proj_type", "linear") != "linear":
        raise CheckpointError(f"open_clip text_cfg: proj_type={text.get('proj_type')!r} is not supported (a linear projection)")
    # argmax: the largest id, CLIP's end-of-text (the last of its vocabulary); eos: the tokenizer's eos_id
    eot = vocab - 1 if pool == "argmax" else int(text.get("eos_id", 2))
    clean = (text.get("tokenizer_kwargs") or {}).get("clean")
    return TextVariant(
        vocab_size=vocab,
        context_length=int(text.get("context_length", 77)),
        embed_dim=int(text.get("width", 512)),
        depth=int(text.get("layers", 12)),
        num_heads=int(text.get("heads", 8)),
        proj_dim=embed_dim,
        mlp_ratio=float(text.get("mlp_ratio", 4.0)),
        act=_open_clip_act(text, quick_gelu, "text_cfg"),
        eps=float((text.get("norm_kwargs") or {}).get("eps", 1e-5)),
        causal=not text.get("no_causal_mask", False),
        pool="last" if pool == "last" else "eot",
        eot_token_id=eot,
        proj_bias=bool(text.get("proj_bias", False)),
        tokenizer="json" if text.get("hf_tokenizer_name") else "clip",  # SigLIP's SentencePiece as tokenizer.json
        canonicalize=clean == "canonicalize",
    )


def variant_from_open_clip_config(config: Mapping[str, Any], name: str) -> Variant:
    """Our Variant of an open_clip model config (``get_model_config``'s dict): the image tower (open_clip's
    ViT, or a timm trunk with ``timm_pool: map`` and ``timm_proj: none`` as SigLIP's) and the text tower."""
    if "multimodal_cfg" in config:
        raise CheckpointError("open_clip: CoCa models (multimodal_cfg) are not supported")
    embed = int(config["embed_dim"])
    quick = bool(config.get("quick_gelu", False))
    vision: Mapping[str, Any] = config.get("vision_cfg") or {}
    family = "siglip" if config.get("init_logit_bias") is not None else "clip"
    text = open_clip_text(config.get("text_cfg") or {}, embed, quick)
    extra: dict[str, Any] = {
        "text": text,
        "logit_bias": config.get("init_logit_bias") is not None,
        "image_mean": triple(vision.get("image_mean")),
        "image_std": triple(vision.get("image_std")),
    }
    if vision.get("timm_model_name"):
        pool, proj = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
        if proj != "none":
            raise CheckpointError(f"open_clip vision_cfg: timm_proj={proj!r} is not supported (a timm trunk without projection: 'none')")
        trunk = timm_variant(str(vision["timm_model_name"]), name, num_classes=0, global_pool=pool)
        variant = replace(trunk, family=family, **extra)
    else:
        _open_clip_checks(vision, "vision_cfg")
        layers = vision.get("layers", 12)
        if not isinstance(layers, int):
            raise CheckpointError(f"open_clip vision_cfg: layers={layers!r} is a ResNet, not a ViT")
        for key, wanted in (("pos_embed_type", "learnable"), ("pool_type", "tok")):
            if vision.get(key, wanted) != wanted:
                raise CheckpointError(f"open_clip vision_cfg: {key}={vision.get(key)!r} is not supported ({wanted!r})")
        width = int(vision.get("width", 768))
        ratio = float(vision.get("mlp_ratio", 4.0))
        ls = vision.get("ls_init_value")
        variant = Variant(
            name=name,
            family=family,
            arch=SIZE_CLASSES.get(width, "custom"),
            patch_size=square(vision, "patch_size") if "patch_size" in vision else 16,
            embed_dim=width,
            depth=layers,
            num_heads=width // int(vision.get("head_width", 64)),
            mlp_ratio=ratio,
            ffn_hidden_dim=int(width * ratio),  # open_clip's mlp_width
            eps=float((vision.get("norm_kwargs") or {}).get("eps", 1e-5)),
            layerscale_init=float(ls) if ls is not None else None,
            pretrain_img_size=square(vision, "image_size") if "image_size" in vision else 224,
            interpolate_offset=0.0,  # open_clip's resize_pos_embed: bicubic to the exact size, antialiased
            interpolate_antialias=True,
            pre_norm=not vision.get("no_ln_pre", False),
            patch_bias=False,
            act=_open_clip_act(vision, quick, "vision_cfg"),
            proj_dim=embed,
            **extra,
        )
    check_joint_space(variant)
    return variant


def from_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's CLIP / CustomTextCLIP state dict in ours: ``visual.*`` (its ViT, or a timm trunk
    ``visual.trunk.*``: timm's names, ours), the text tower (top-level, or under ``text.``), logit
    scale and bias. Projection matrices (x @ P) become Linear weights (P^T). Pure."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            vision[key.removeprefix("visual.")] = value
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value
        elif key.removeprefix("text.") != "attn_mask":  # the causal mask buffer (not persistent in recent open_clip)
            text[key.removeprefix("text.")] = value
    if any(k.startswith("trunk.") for k in vision):
        out |= {k.removeprefix("trunk."): v for k, v in vision.items() if k.startswith("trunk.")}
        out |= {f"visual.{k}": v for k, v in vision.items() if not k.startswith("trunk.")}  # not ours: named by the strict check
    else:
        if isinstance(vision.get("proj"), torch.Tensor):
            vision["proj"] = vision["proj"].T.contiguous()
        out |= rename(vision, OPENCLIP_VISION_KEYS)
    if isinstance(text.get("text_projection"), torch.Tensor):
        text["text_projection"] = text["text_projection"].T.contiguous()
    out |= with_prefix(rename(text, OPENCLIP_TEXT_KEYS), "text.")
    return as_token(out, "cls_token", "pos_embed", "logit_scale", "logit_bias")


def open_clip_bpe() -> Path:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (CLIP's BPE vocabulary, ``TextVariant.tokenizer`` 'clip'),
    for the archiver to copy next to the weights."""
    try:
        import open_clip
    except ImportError as e:
        raise CheckpointError("CLIP's BPE vocabulary comes with open_clip: pip install open_clip_torch (or give its files)") from e
    path = Path(open_clip.__file__).parent / OPENCLIP_BPE
    if not path.is_file():
        raise CheckpointError(f"open_clip's {OPENCLIP_BPE} is missing from {path.parent}: reinstall open_clip_torch")
    return path


# ----------------------------------------------------------------------------- specs
def base_from_spec(model: str, name: str | None = None) -> Variant | None:
    """The Variant a library spec names: ``timm:<model name>`` or ``open_clip:<config>``; None for
    anything else (hub names: ``variants.get_variant``). ``name``: the served name (default: the spec's)."""
    if model.startswith(TIMM_SPEC):
        return timm_variant(model.removeprefix(TIMM_SPEC), name)
    if model.startswith(OPEN_CLIP_SPEC):
        return open_clip_variant(model.removeprefix(OPEN_CLIP_SPEC), name)
    return None


def is_tower(variant: Variant) -> bool:
    """Whether ``variant`` is of a family without a table of its own (ViT/DeiT, CLIP, SigLIP): its
    checkpoints are converted here, not as a DINO family's."""
    return not FAMILIES[variant.family].variants
