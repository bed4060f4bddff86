"""Checkpoints as users share them, read at archive time into the hub's layout and the ``Variant``
that serves them. The worker never imports this module (the .mar does not ship it).

Supported (``load_checkpoint``):

* a Hugging Face model directory: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``),
  as ``save_pretrained`` writes ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``DINOv3ViTModel``
  (or their ``...ForImageClassification``): the architecture is built from ``config.json`` and the
  mean/std from ``preprocessor_config.json`` where present;
* a ``.safetensors`` file (read without pickle), or a ``.pth``/``.pt`` file (``weights_only``), in
  the hub's, timm's or transformers' key layout, plain or as a training checkpoint
  (``teacher``/``student``, ``module.``/``backbone.``/``model.`` prefixes, heads): ``MODEL=`` names the
  family and size; the patch size and the position grid are read from the tensors.

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
from .variants import FAMILIES, VARIANT_NAME, Variant
from .vit import VisionTransformer

logger = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what save_pretrained writes, preferred first
# config.json's model_type -> our family; anything else is not a DINO-family ViT.
HF_MODEL_TYPES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3"}
# What our network computes; a config asking for something else is refused, not approximated.
HF_REQUIRED: dict[str, dict[str, object]] = {
    "dinov2": {"qkv_bias": True, "num_channels": 3},
    "dinov3": {"query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True, "num_channels": 3},
}
SIZE_CLASSES = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}
HUB, TIMM, HUGGINGFACE = "hub", "timm", "huggingface"


@dataclass(frozen=True)
class Loaded:
    """A checkpoint in the hub's layout, checked strictly against the variant that serves it."""

    state: dict[str, torch.Tensor]
    variant: Variant
    source: str  # what it was: "huggingface dinov2_with_registers (model.safetensors)", "timm (x.safetensors)", ...
    file: Path  # the weights file read (its name and hash tag every response)
    sha256: str


def load_checkpoint(path: str | Path, base: Variant | None, name: str | None = None, checkpoint_key: str | None = None) -> Loaded:
    """Read ``path`` (a Hugging Face directory, a .safetensors or a .pth/.pt file) for serving as
    ``name``. ``base``: the hub variant ``MODEL=`` names, needed unless the checkpoint carries its
    config. ``CheckpointError`` says what is wrong and how to fix it; nothing is written."""
    path = Path(path)
    if name is not None and not VARIANT_NAME.match(name):
        raise CheckpointError(f"NAME={name!r} must be letters, digits, '_', '-' or '.' (it is the URL /predictions/<NAME>)")
    if path.is_dir():
        return load_hf_directory(path, name)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; WEIGHTS= takes a Hugging Face model directory, a .safetensors or a .pth/.pt file")
    if base is None:
        raise CheckpointError(f"{path.name} carries no config: name its family and size with MODEL= (e.g. MODEL=dinov2_vitb14)")
    state = read_weights(path, checkpoint_key)
    layout = detect_layout(state, base)
    if layout == HUB:
        state = from_hub(state, base)  # the family's own key names, where they are not ours (keymaps.HUB_KEYS)
    variant = shaped_like(state, base, layout)
    variant = replace(variant, name=name or variant.name)
    state = to_hub_layout(state, variant, layout)
    return Loaded(state, variant, f"{layout} ({path.name})", path, sha256_of(path))


# ----------------------------------------------------------------------------- reading files
def read_weights(path: Path, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    """The backbone tensors of a .safetensors (no pickle) or .pth/.pt/.bin file (``weights_only``):
    training-checkpoint entries and wrapper prefixes resolved, heads dropped (``filter_state_dict``)."""
    if path.suffix == ".safetensors":
        return filter_state_dict(read_safetensors(path), checkpoint_key)
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise CheckpointError(
            f"{path.name}: unknown checkpoint format {path.suffix!r}; use .safetensors, .pth, .pt or a Hugging Face directory"
        )
    return filter_state_dict(read_checkpoint(path), checkpoint_key)


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
    variant = variant_from_hf_config(config, name or default_name(folder), preprocessor)
    state = to_hub_layout(read_weights(weights), variant, HUGGINGFACE)
    return Loaded(state, variant, f"huggingface {config['model_type']} ({weights.name})", weights, sha256_of(weights))


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
    return re.sub(r"[^A-Za-z0-9_.-]", "_", folder.resolve().name).strip("._-") or "model"


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


def variant_from_hf_config(config: Mapping[str, object], name: str, preprocessor: Mapping[str, object] | None = None) -> Variant:
    """Our ``Variant`` for a transformers DINOv2 / DINOv2-with-registers / DINOv3 config."""
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"config.json describes model_type={model_type!r} (architectures {config.get('architectures')}), "
            f"not a DINO-family ViT; supported: {sorted(HF_MODEL_TYPES)}"
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
