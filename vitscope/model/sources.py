"""Checkpoints as users share them, read at archive time into the hub's layout and the ``Variant``
that serves them. The worker never imports this module (the .mar does not ship it).

Supported (``load_checkpoint``):

* a Hugging Face model directory: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``),
  as ``save_pretrained`` writes ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``DINOv3ViTModel``
  (``Dinov2[WithRegisters]ForImageClassification`` keeps its classifier: [CLS] with the patches' mean),
  or the ViT / DeiT / CLIP / SigLIP models of ``towers.HF_TOWERS``: the architecture is built from
  ``config.json``, the mean/std from ``preprocessor_config.json`` where present, the class names
  from ``id2label``;
* a ``.safetensors`` file (read without pickle), or a ``.pth``/``.pt`` file (``weights_only``), in
  the hub's, timm's or transformers' key layout, plain or as a training checkpoint
  (``teacher``/``student``, ``module.``/``backbone.``/``model.`` prefixes, heads): ``MODEL=`` names the
  family and size; the patch size and the position grid are read from the tensors;
* for ``MODEL=timm:<model name>`` or ``MODEL=open_clip:<config>`` (``base_from_spec``), a timm or
  open_clip state dict, converted by ``towers.py``.

The position-embedding resize follows each source's own code: the hub's for hub checkpoints, timm's
(``resample_abs_pos_embed``: bicubic to the exact size, antialiased) for timm's, and transformers'
(bicubic to the exact size; antialiased for the register models only) for Hugging Face's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, check_state_dict, filter_state_dict, read_checkpoint, sha256_of
from .keymaps import SOURCES, from_hub
from .towers import HF_TOWERS, SIZE_CLASSES, hf_classes, hf_labels, hf_tower, is_tower, number, square, tower_state, url_safe_name
from .towers import base_from_spec as base_from_spec  # the archiver's MODEL=timm:<name> / open_clip:<config>
from .variants import FAMILIES, HEAD_BLOCKS, VARIANT_NAME, Variant
from .vit import VisionTransformer

logger = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers' SigLIP tokenizer lower-cases and strips punctuation before its SentencePiece model
# (``canonicalize_text``): our json tokenizer does the same (``canonicalize``); SigLIP 2's Gemma tokenizer does not.
SIGLIP_TOKENIZER = "SiglipTokenizer"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what save_pretrained writes, preferred first
# config.json's model_type -> our family; anything else is not a DINO-family ViT.
HF_MODEL_TYPES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3"}
# What our network computes; a config asking for something else is refused, not approximated.
HF_REQUIRED: dict[str, dict[str, object]] = {
    "dinov2": {"qkv_bias": True, "num_channels": 3},
    "dinov3": {"query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True, "num_channels": 3},
}
HUB, TIMM, HUGGINGFACE = "hub", "timm", "huggingface"


@dataclass(frozen=True)
class Loaded:
    """A checkpoint in the hub's layout, checked strictly against the variant that serves it."""

    state: dict[str, torch.Tensor]
    variant: Variant
    source: str  # what it was: "huggingface dinov2_with_registers (model.safetensors)", "timm (x.safetensors)", ...
    file: Path  # the weights file read (its name and hash tag every response)
    sha256: str
    labels: tuple[str, ...] = ()  # the head's class names the checkpoint carries (transformers' id2label); () if none


def load_checkpoint(
    path: str | Path, base: Variant | None, name: str | None = None, checkpoint_key: str | None = None, head: str | Path | None = None
) -> Loaded:
    """Read ``path`` (a Hugging Face directory, a .safetensors or a .pth/.pt file) for serving as
    ``name``. ``base``: the variant ``MODEL=`` names (a hub name's, or ``base_from_spec``'s for
    ``timm:``/``open_clip:``), needed unless the checkpoint carries its config. ``head``: DINOv2's
    official linear-classifier head file (``dinov2_vits14_linear4_head.pth``, ...), joined to a hub
    backbone. ``CheckpointError`` says what is wrong and how to fix it; nothing is written."""
    path = Path(path)
    if name is not None and not VARIANT_NAME.match(name):
        raise CheckpointError(f"NAME={name!r} must be letters, digits, '_', '-' or '.' (it is the URL /predictions/<NAME>)")
    if head is not None and (path.is_dir() or (base is not None and is_tower(base))):
        raise CheckpointError("HEAD= joins DINOv2's official linear head to a DINOv2 backbone file (MODEL=dinov2_vit*14 WEIGHTS=<.pth>)")
    if path.is_dir():
        return load_hf_directory(path, name)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; WEIGHTS= takes a Hugging Face model directory, a .safetensors or a .pth/.pt file")
    if base is None:
        raise CheckpointError(f"{path.name} carries no config: name its family and size with MODEL= (e.g. MODEL=dinov2_vitb14)")
    if is_tower(base):  # timm's or open_clip's
        state, variant, library = tower_state(read_weights(path, checkpoint_key, heads=True), base)
        variant = replace(variant, name=name or variant.name)
        check_state_dict(VisionTransformer(variant), state)
        return Loaded(state, variant, f"{library} ({path.name})", path, sha256_of(path))
    state = read_weights(path, checkpoint_key, heads=bool(base.num_classes))
    if head is not None or LINEAR_HEAD + "weight" in state:
        state, base = with_linear_head(state, base, read_weights(Path(head)) if head is not None else None)
    layout = detect_layout(state, base)
    if layout == HUB:
        state = from_hub(state, base)  # the family's own key names, where they are not ours (keymaps.HUB_KEYS)
    variant = shaped_like(state, base, layout)
    variant = replace(variant, name=name or variant.name)
    state = to_hub_layout(state, variant, layout)
    return Loaded(state, variant, f"{layout} ({path.name})", path, sha256_of(path))


LINEAR_HEAD = "linear_head."  # DINOv2's hub classifiers (dinov2_vit*14_lc): the backbone's keys, then these


def with_linear_head(
    state: dict[str, torch.Tensor], base: Variant, head: dict[str, torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor], Variant]:
    """DINOv2's official linear classifier: its head (``head``, a ``{weight, bias}`` file; else the
    ``linear_head.*`` entries of ``state``) as our ``head``, 1000 ImageNet classes over the [CLS] of
    the last 1 or 4 blocks and the patches' mean, the count read from its shape (hub ``layers=1|4``). Pure."""
    if base.family != "dinov2":
        raise CheckpointError(f"a linear_head (DINOv2's hub classifiers) on {base.name}: it is for DINOv2 backbones (MODEL=dinov2_vit*14)")
    state = dict(state)
    if head is None:
        head = {key.removeprefix(LINEAR_HEAD): state.pop(key) for key in [k for k in state if k.startswith(LINEAR_HEAD)]}
    weight, bias = head.get("weight"), head.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or set(head) != {"weight", "bias"}:
        raise CheckpointError(f"a DINOv2 linear head holds weight and bias (classes, (1 + layers) * C); this one holds {sorted(head)}")
    layers = weight.shape[1] // base.embed_dim - 1
    if layers not in (1, HEAD_BLOCKS) or weight.shape[1] % base.embed_dim:
        raise CheckpointError(
            f"the linear head reads {weight.shape[1]} features: {base.name} (C={base.embed_dim}) heads read 2C (layers=1) or 5C (layers=4)"
        )
    state["head.weight"], state["head.bias"] = weight, bias
    return state, replace(base, num_classes=int(weight.shape[0]), head_input="token_mean" if layers == 1 else "cls4_mean")


# ----------------------------------------------------------------------------- reading files
def read_weights(path: Path, checkpoint_key: str | None = None, heads: bool | None = False) -> dict[str, torch.Tensor]:
    """The model's tensors of a .safetensors (no pickle) or .pth/.pt/.bin file (``weights_only``):
    training-checkpoint entries and wrapper prefixes resolved, classifier heads kept or dropped by
    ``heads`` (``filter_state_dict``; DINO's training heads always dropped)."""
    if path.suffix == ".safetensors":
        return filter_state_dict(read_safetensors(path), checkpoint_key, heads)
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise CheckpointError(
            f"{path.name}: unknown checkpoint format {path.suffix!r}; use .safetensors, .pth, .pt or a Hugging Face directory"
        )
    return filter_state_dict(read_checkpoint(path), checkpoint_key, heads)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a corrupt or truncated file is a ``CheckpointError``."""
    from safetensors import SafetensorError  # archive time only: the served core does not need safetensors
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file (corrupt or truncated?): {e}") from e


# ----------------------------------------------------------------------------- Hugging Face directories
def load_hf_directory(folder: Path, name: str | None) -> Loaded:
    config_path = folder / HF_CONFIG
    weights = next((folder / f for f in HF_WEIGHTS if (folder / f).is_file()), None)
    if not config_path.is_file() or weights is None:
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise CheckpointError(
            f"{folder} is not a Hugging Face model directory: it needs {HF_CONFIG} and one of {list(HF_WEIGHTS)} "
            f"(save_pretrained writes them); it holds {present}"
        )
    config = read_json(config_path)
    preprocessor = read_json(folder / HF_PREPROCESSOR) if (folder / HF_PREPROCESSOR).is_file() else {}
    source = f"huggingface {config.get('model_type')} ({weights.name})"
    if config.get("model_type") in HF_TOWERS:  # ViT, DeiT, CLIP, SigLIP (towers.py)
        tower = hf_tower(config, preprocessor, read_weights(weights, heads=True), name or default_name(folder))
        variant = tower.variant
        if variant.text is not None and variant.family == "siglip":  # SiglipTokenizer's cleaning, Gemma's (SigLIP 2) none
            tokenizer = read_json(folder / HF_TOKENIZER_CONFIG) if (folder / HF_TOKENIZER_CONFIG).is_file() else {}
            cleaning = tokenizer.get("tokenizer_class", SIGLIP_TOKENIZER) == SIGLIP_TOKENIZER
            variant = replace(variant, text=replace(variant.text, canonicalize=cleaning))
        check_state_dict(VisionTransformer(variant), tower.state)
        return Loaded(tower.state, variant, source, weights, sha256_of(weights), tower.labels)
    variant = variant_from_hf_config(config, name or default_name(folder), preprocessor)
    state = read_weights(weights, heads=True)
    classes = dinov2_classes(config, state)
    if classes:  # transformers' Dinov2[WithRegisters]ForImageClassification: classifier(cat([CLS], mean of the patches))
        variant = replace(variant, num_classes=classes, head_input="token_mean")
    else:
        state = filter_state_dict(state, heads=False)
    state = to_hub_layout(state, variant, HUGGINGFACE)
    return Loaded(state, variant, source, weights, sha256_of(weights), hf_labels(config, classes))


def dinov2_classes(config: Mapping[str, object], state: Mapping[str, torch.Tensor]) -> int:
    """The classes of a DINOv2 classifier's head: per ``architectures`` (...ForImageClassification), else
    per the tensors (a ``classifier``); 0 for a backbone."""
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        return hf_classes(config) if str(architectures[0]).endswith("ForImageClassification") else 0
    head = state.get("classifier.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else 0


def read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def default_name(folder: Path) -> str:
    """The served name of a directory when NAME= is not given: its name, made URL-safe."""
    return url_safe_name(folder.resolve().name)


def variant_from_hf_config(config: Mapping[str, object], name: str, preprocessor: Mapping[str, object] | None = None) -> Variant:
    """Our ``Variant`` for a transformers DINOv2 / DINOv2-with-registers / DINOv3 config."""
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"config.json describes model_type={model_type!r} (architectures {config.get('architectures')}), "
            f"not a ViT read here; supported model types: {sorted([*HF_MODEL_TYPES, *HF_TOWERS])}"
        )
    family = HF_MODEL_TYPES[str(model_type)]
    for key, wanted in HF_REQUIRED[family].items():
        if config.get(key, wanted) != wanted:
            raise CheckpointError(f"config.json: {key}={config.get(key)!r} is not supported here (DINO's models use {wanted!r})")
    dim, depth, heads = (int(number(config, k)) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads"))
    patch, image = square(config, "patch_size"), square(config, "image_size")
    gated = bool(config.get("use_swiglu_ffn" if family == "dinov2" else "use_gated_mlp", False))
    activation = config.get("hidden_act", "gelu")
    if (family == "dinov2" and not gated and activation != "gelu") or (family == "dinov3" and activation != ("silu" if gated else "gelu")):
        raise CheckpointError(f"config.json: hidden_act={activation!r} is not supported with {'a gated' if gated else 'an'} FFN")
    mean, std = (preprocessor or {}).get("image_mean"), (preprocessor or {}).get("image_std")
    common: dict[str, Any] = {
        "name": name,
        "family": family,
        "arch": SIZE_CLASSES.get(dim, "custom"),
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "eps": number(config, "layer_norm_eps", 1e-6 if family == "dinov2" else 1e-5),
        "layerscale_init": number(config, "layerscale_value", 1.0),
        "num_registers": int(number(config, "num_register_tokens", 0)),
        "pretrain_img_size": image,
        "image_mean": tuple(float(c) for c in mean) if isinstance(mean, list) and len(mean) == 3 else None,
        "image_std": tuple(float(c) for c in std) if isinstance(std, list) and len(std) == 3 else None,
    }
    if family == "dinov2":
        return Variant(
            **common,
            mlp_ratio=number(config, "mlp_ratio", 4.0),
            ffn="swiglu_fused" if gated else "mlp",
            # transformers resizes to the exact size (no 0.1 offset), antialiased for the register models only
            interpolate_offset=0.0,
            interpolate_antialias=model_type == "dinov2_with_registers",
        )
    hidden = int(number(config, "intermediate_size", 4 * dim))
    return Variant(
        **common,
        mlp_ratio=hidden / dim,
        ffn="swiglu" if gated else "mlp",
        rope_base=number(config, "rope_theta", 100.0),
        mask_k_bias=True,
        ffn_hidden_dim=hidden,
    )


# ----------------------------------------------------------------------------- bare state dicts
def detect_layout(state: Mapping[str, torch.Tensor], base: Variant) -> str:
    """Which library's key names ``state`` uses: transformers', timm's or the hub's."""
    if any(k.startswith(("embeddings.", "encoder.layer.")) or re.match(r"^layer\.\d+\.attention\.", k) for k in state):
        return HUGGINGFACE
    timm_only = any(k == "reg_token" or re.search(r"\.gamma_[12]$|\.attn\.[qv]_bias$", k) for k in state)
    # The hub's DINOv2/v3 checkpoints always carry mask_token; timm's never do.
    if timm_only or (FAMILIES[base.family].mask_token and "mask_token" not in state):
        return TIMM
    return HUB


def shaped_like(state: Mapping[str, torch.Tensor], base: Variant, layout: str) -> Variant:
    """``base`` with the patch size and the position grid of the tensors (a fine-tune at another
    resolution), and the position resize of the library the checkpoint comes from."""
    variant = base
    proj = state.get("embeddings.patch_embeddings.projection.weight" if layout == HUGGINGFACE else "patch_embed.proj.weight")
    if proj is None and layout == HUGGINGFACE:
        proj = state.get("embeddings.patch_embeddings.weight")
    if isinstance(proj, torch.Tensor) and proj.ndim == 4 and proj.shape[-1] == proj.shape[-2]:
        variant = replace(variant, patch_size=int(proj.shape[-1]))
    positions = state.get("embeddings.position_embeddings" if layout == HUGGINGFACE else "pos_embed")
    if isinstance(positions, torch.Tensor) and positions.ndim == 3:
        patches = positions.shape[1] - (0 if layout == TIMM and base.num_registers else 1)  # timm's register models: no [CLS] position
        grid = round(patches**0.5)
        if grid * grid != patches:
            raise CheckpointError(f"the position embedding has {patches} patch positions, not a square grid")
        variant = replace(variant, pretrain_img_size=grid * variant.patch_size)
    if layout == TIMM:
        variant = replace(variant, interpolate_offset=0.0, interpolate_antialias=True)
    elif layout == HUGGINGFACE:
        variant = replace(variant, interpolate_offset=0.0, interpolate_antialias=base.num_registers > 0)
    if (variant.patch_size, variant.pretrain_img_size) != (base.patch_size, base.pretrain_img_size):
        logger.info(
            "%s: patch %d and a %dx%d position grid read from the checkpoint (the table's %s: patch %d, %dx%d)",
            base.name,
            variant.patch_size,
            variant.pretrain_grid,
            variant.pretrain_grid,
            base.name,
            base.patch_size,
            base.pretrain_grid,
            base.pretrain_grid,
        )
    return variant


def to_hub_layout(state: Mapping[str, torch.Tensor], variant: Variant, layout: str) -> dict[str, torch.Tensor]:
    """``state`` renamed from ``layout`` to the hub's and checked strictly against ``variant``'s
    network (``CheckpointError`` listing missing, unexpected and mis-shaped keys)."""
    model = VisionTransformer(variant)
    reference = model.state_dict()
    out = dict(state) if layout == HUB else SOURCES[layout](state, variant, reference)
    check_state_dict(model, out)
    return out
