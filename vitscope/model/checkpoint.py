"""DINO, DINOv2 and DINOv3 checkpoints: read safely, filter to the backbone (a pure function), load strictly."""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .variants import FAMILIES, Variant
from .vit import VisionTransformer

# Keys of training checkpoints that may hold the model, in order of preference: DINO's teacher and
# student, then DeiT's (and many trainers') ``model``, timm's and open_clip's ``state_dict``.
CHECKPOINT_KEYS: tuple[str, ...] = ("teacher", "student", "model", "state_dict")
# Wrappers around the backbone, stripped in this order: DistributedDataParallel, a flattened teacher,
# a training framework's model, DINO's MultiCropWrapper, transformers' base models in their
# ...ForImageClassification (base_model_prefix).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "teacher.", "model.", "backbone.", "dinov2_with_registers.", "dinov2.")
# Classifier heads: timm's and ours (``head``, DeiT's ``head_dist``), transformers' ``classifier``. Kept for
# a model with a head (``filter_state_dict(heads=...)``), dropped with one log line naming them otherwise.
HEAD_PREFIXES: tuple[str, ...] = ("head.", "head_dist.", "classifier.")
# A classifier's linear heads in our layout: what an archive of a model with a head holds.
LINEAR_HEADS: frozenset[str] = frozenset(f"{head}.{part}" for head in ("head", "head_dist") for part in ("weight", "bias"))
# DINO's and DINOv2/v3's training heads (projection heads, not classifiers): always dropped. DINO's
# MultiCropWrapper also names its projection head ``head.`` (head.mlp.*, head.last_layer.*).
TRAINING_HEAD_PREFIXES: tuple[str, ...] = ("dino_head.", "ibot_head.")
# DINOv2's training code groups blocks for FSDP (block_chunks): blocks.<chunk>.<index>. -> blocks.<index>.
CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
RANDOM_WEIGHTS = "random"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model."""


def read_checkpoint(path: str | Path) -> Mapping[str, object]:
    """``torch.load`` with ``weights_only=True`` (no arbitrary pickle code), on the CPU.

    ``argparse.Namespace`` is allowed: DINO's full checkpoints store their training ``args`` as one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass WEIGHTS=path/to/file.pth or WEIGHTS=random")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or DINO checkpoint")
    return obj


def filter_state_dict(
    checkpoint: Mapping[str, object], checkpoint_key: str | None = None, heads: bool | None = None
) -> dict[str, torch.Tensor]:
    """The model's state_dict from any DINO, timm or training layout; pure (the input is not modified).

    Accepts a plain state_dict (the hub checkpoints of all three families, or another library's:
    ``sources.py`` renames those), or a training checkpoint whose ``checkpoint_key`` (default: the
    first of ``CHECKPOINT_KEYS`` that holds one) does. Strips ``WRAPPER_PREFIXES``, un-chunks DINOv2's
    ``blocks.<chunk>.<i>.`` and drops DINO's training heads (``TRAINING_HEAD_PREFIXES``). The classifier
    heads (``HEAD_PREFIXES``): ``heads=True`` keeps them (a model with a head), ``False`` drops them (a
    backbone), ``None`` keeps only our linear ``head``/``head_dist`` (``LINEAR_HEADS``: an archived
    classifier's) and drops the rest (DINO's projection head ``head.mlp.*``). Dropped names are logged.
    """
    keys = (checkpoint_key,) if checkpoint_key else CHECKPOINT_KEYS
    state = next((checkpoint[k] for k in keys if isinstance(checkpoint.get(k), Mapping)), None)
    if state is None:
        if checkpoint_key:
            raise CheckpointError(f"checkpoint has no {checkpoint_key!r} entry; top-level keys: {sorted(checkpoint)}")
        state = checkpoint
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint entry is a {type(state).__name__}, not a state_dict")
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(TRAINING_HEAD_PREFIXES) or (key.startswith(HEAD_PREFIXES) and not _keeps_head(key, heads)):
            dropped.append(key)
            continue
        key = CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor; is this a state_dict?")
        out[key] = value
    if dropped:
        logger.info("dropped %d head tensor(s) the model does not use: %s", len(dropped), ", ".join(dropped))
    return out


def _keeps_head(key: str, heads: bool | None) -> bool:
    """Whether ``filter_state_dict`` keeps the classifier-head tensor ``key`` (see there)."""
    return key in LINEAR_HEADS if heads is None else heads


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Best-effort 'embed_dim=384, patch=14, blocks=12, registers=4' description, to say which variant a checkpoint is."""
    parts = []
    if isinstance(state.get("cls_token"), torch.Tensor):
        parts.append(f"embed_dim={state['cls_token'].shape[-1]}")
    proj = state.get("patch_embed.proj.weight")
    if isinstance(proj, torch.Tensor) and proj.ndim == 4:
        parts.append(f"patch={proj.shape[-1]}")
    blocks = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    if blocks:
        parts.append(f"blocks={len(blocks)}")
    for family in FAMILIES.values():
        if family.register_key and isinstance(state.get(family.register_key), torch.Tensor):
            parts.append(f"{state[family.register_key].shape[1]} {family.register_title}")
    if "rope_embed.periods" in state:
        parts.append("RoPE (DINOv3)")
    return ", ".join(parts) or "unrecognised layout"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and mis-shaped keys (if any)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            "checkpoint does not match the model "
            f"(checkpoint looks like: {describe_state_dict(state)}).\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(shapes)}): {shapes}\n"
            "Pick the MODEL the checkpoint was trained with (e.g. MODEL=dinov2_vits14_reg, MODEL=timm:<model name>, "
            "MODEL=open_clip:<config>), fix its config.json, or use another checkpoint."
        )


def build_model(variant: Variant, state: Mapping[str, torch.Tensor] | None) -> VisionTransformer:
    """The variant's network in eval mode; ``state=None`` keeps the random initialisation. With a
    ``state``, the network is made on the meta device and its tensors filled from ``state`` alone (every
    key checked first): no random initialisation that the checkpoint would overwrite."""
    if state is None:
        return VisionTransformer(variant).eval().requires_grad_(False)
    with torch.device("meta"):
        model = VisionTransformer(variant)
    check_state_dict(model, state)
    model = model.to_empty(device=torch.get_default_device())
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_tag(path: str | Path, digest: str | None = None, digits: int = 12) -> str:
    """'file.pth@sha256:<prefix>' identifying a weights file in every response (``digest``: its sha256, if known)."""
    return f"{Path(path).name}@sha256:{(digest or sha256_of(path))[:digits]}"
