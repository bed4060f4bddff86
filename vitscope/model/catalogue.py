"""The catalogue of official checkpoints: per family, one declared row (``Release``) of where its weights
are downloaded, under which licence, how the gated ones are obtained, and its checkpoint files.

It reads the architecture table (``variants.py``: a checkpoint is of a model of VARIANTS); the table
never reads it. A family without official weights has no row here: its checkpoints are the user's.

Sources: DINO https://github.com/facebookresearch/dino#pretrained-models ; DINOv2 ``dinov2/hub/backbones.py``
(<base>/<model>/<model>[_reg4]_pretrain.pth); DINOv3 ``dinov3/hub/backbones.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .variants import VARIANTS, Variant

WEIGHTS_URL_ENV = "DINO_WEIGHTS_URL"  # overrides every family's base: a mirror or an air-gapped file server
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})$")


@dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint. ``size``/``sha256`` are None where not published."""

    name: str  # file name without .pth, e.g. dino_deitsmall8_300ep_pretrain, dinov2_vits14_reg4_pretrain
    model: str  # key of VARIANTS
    folder: str  # directory under the family's base URL
    full: bool = False  # a training checkpoint (teacher/student), not a plain backbone
    size: int | None = None
    sha256: str | None = None
    default: bool = False  # its model's checkpoint when none is named (DEFAULT_CHECKPOINTS)

    @property
    def filename(self) -> str:
        return f"{self.name}.pth"

    @property
    def release(self) -> Release:
        return RELEASES[VARIANTS[self.model].family]

    @property
    def hash_prefix(self) -> str | None:
        """The sha256 prefix in the file name (torch.hub's ``-<hash>.pth`` convention), if any."""
        match = _HASH_SUFFIX.search(self.name)
        return match.group(1) if match else None

    def url(self, base: str | None = None) -> str:
        """Download URL under ``base`` (default: $DINO_WEIGHTS_URL, else the family's public base)."""
        base = base or os.environ.get(WEIGHTS_URL_ENV) or self.release.weights_url
        return f"{base.rstrip('/')}/{self.folder}/{self.filename}"

    def gated_message(self) -> str:
        """How to obtain this checkpoint if it cannot be downloaded anonymously, else ''."""
        template = self.release.gated
        return template.format(filename=self.filename, model=self.model, folder=self.folder) if template else ""


@dataclass(frozen=True)
class Release:
    """One family's official weights: their licence (the describe API names it), download base, gating, files."""

    family: str  # key of variants.FAMILIES
    licence: str
    licence_url: str
    weights_url: str  # official download base
    gated: str = ""  # how to obtain weights that cannot be downloaded anonymously
    checkpoints: tuple[Checkpoint, ...] = ()

    def __post_init__(self) -> None:
        strays = [c.name for c in self.checkpoints if VARIANTS[c.model].family != self.family]
        if strays:
            raise ValueError(f"release {self.family}: checkpoints {strays} are of another family's models")


def _dino_pair(folder: str, model: str, default: bool = False) -> tuple[Checkpoint, Checkpoint]:
    return Checkpoint(folder, model, folder, default=default), Checkpoint(f"{folder}_full_checkpoint", model, folder, full=True)


def _dinov2_checkpoint(model: str) -> Checkpoint:
    base = model.removesuffix("_reg")
    return Checkpoint(f"{base}_reg4_pretrain" if model.endswith("_reg") else f"{base}_pretrain", model, base, default=True)


def _dinov3_checkpoint(model: str, hash_prefix: str) -> Checkpoint:
    return Checkpoint(f"{model}_pretrain_lvd1689m-{hash_prefix}", model, model, default=True)


RELEASES: dict[str, Release] = {
    r.family: r
    for r in (
        Release(
            "dino",
            "Apache-2.0",
            "https://github.com/facebookresearch/dino/blob/main/LICENSE",
            "https://dl.fbaipublicfiles.com/dino",
            checkpoints=(
                *_dino_pair("dino_deitsmall16_pretrain", "dino_vits16", default=True),
                *_dino_pair("dino_deitsmall8_300ep_pretrain", "dino_vits8", default=True),  # DINO's paper figures
                *_dino_pair("dino_deitsmall8_pretrain", "dino_vits8"),
                *_dino_pair("dino_vitbase16_pretrain", "dino_vitb16", default=True),
                *_dino_pair("dino_vitbase8_pretrain", "dino_vitb8", default=True),
            ),
        ),
        Release(
            "dinov2",
            "Apache-2.0",
            "https://github.com/facebookresearch/dinov2/blob/main/LICENSE",
            "https://dl.fbaipublicfiles.com/dinov2",
            checkpoints=tuple(_dinov2_checkpoint(v.name) for v in VARIANTS.values() if v.family == "dinov2"),
        ),
        Release(
            "dinov3",
            "DINOv3 License",
            "https://github.com/facebookresearch/dinov3/blob/main/LICENSE.md",
            "https://dl.fbaipublicfiles.com/dinov3",
            gated=(
                "DINOv3 weights are gated: request access with Meta's form at "
                "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/ , download {filename} "
                "with the link Meta emails you, then pass the file: make archive MODEL={model} WEIGHTS=path/to/{filename} "
                "(or set $DINO_WEIGHTS_URL to a mirror that serves {folder}/{filename})"
            ),
            checkpoints=(
                _dinov3_checkpoint("dinov3_vits16", "08c60483"),
                _dinov3_checkpoint("dinov3_vits16plus", "4057cbaa"),
                _dinov3_checkpoint("dinov3_vitb16", "73cec8be"),
                _dinov3_checkpoint("dinov3_vitl16", "8aa4cbdd"),
            ),
        ),
    )
}
CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for release in RELEASES.values() for c in release.checkpoints}
DEFAULT_CHECKPOINTS: dict[str, str] = {c.model: c.name for c in CHECKPOINTS.values() if c.default}


def get_checkpoint(variant: Variant, name: str | None = None) -> Checkpoint:
    """The named checkpoint (checked against the variant) or the variant's default one."""
    if name is None:
        if variant.name not in DEFAULT_CHECKPOINTS:
            raise ValueError(
                f"no official weights for {variant.name}; available: {sorted(DEFAULT_CHECKPOINTS)}. "
                "Use WEIGHTS=path/to/your.pth or WEIGHTS=random"
            )
        name = DEFAULT_CHECKPOINTS[variant.name]
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; choose one of {sorted(CHECKPOINTS)}")
    checkpoint = CHECKPOINTS[name]
    if checkpoint.model != variant.name:
        raise ValueError(f"{name} is a {checkpoint.model} checkpoint, not {variant.name}")
    return checkpoint


def official_checkpoint(filename: str) -> Checkpoint | None:
    """The official checkpoint a file name is, if it is one (to verify the hash in its name)."""
    return next((c for c in CHECKPOINTS.values() if c.filename == filename), None)


def licence_of(family: str) -> dict[str, str]:
    """What the describe API says of a family's weights: ``licence`` and ``licence_url``; nothing for
    a family without an official release (its weights are the user's, under the user's terms)."""
    release = RELEASES.get(family)
    return {"licence": release.licence, "licence_url": release.licence_url} if release else {}
