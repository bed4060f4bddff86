"""The one table of model variants, official checkpoints and constants. Nothing here is re-typed elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# DINO's checkpoints were trained at 224x224; the stored position embedding is that grid.
PRETRAIN_IMG_SIZE = 224
DEPTH = 12
MLP_RATIO = 4.0
LAYER_NORM_EPS = 1e-6
PATCH_SIZES: tuple[int, ...] = (8, 16)


@dataclass(frozen=True)
class Arch:
    """Width of one ViT family member; DINO's depth/MLP ratio/eps are shared."""

    embed_dim: int
    num_heads: int
    hub_prefix: str  # DINO torch.hub naming: dino_vits8, dino_vitb16, ...


ARCHS: dict[str, Arch] = {
    "vit_tiny": Arch(embed_dim=192, num_heads=3, hub_prefix="dino_vitt"),
    "vit_small": Arch(embed_dim=384, num_heads=6, hub_prefix="dino_vits"),
    "vit_base": Arch(embed_dim=768, num_heads=12, hub_prefix="dino_vitb"),
}


@dataclass(frozen=True)
class Variant:
    """A concrete model: architecture x patch size, with its preprocessing constants."""

    arch: str  # key of ARCHS, e.g. vit_small
    patch_size: int
    embed_dim: int
    num_heads: int
    depth: int = DEPTH
    mlp_ratio: float = MLP_RATIO
    eps: float = LAYER_NORM_EPS
    pretrain_img_size: int = PRETRAIN_IMG_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def archive_name(self) -> str:
        """DINO hub-style name, e.g. ``dino_vits8``; used for the .mar and the URL."""
        return f"{ARCHS[self.arch].hub_prefix}{self.patch_size}"

    @property
    def pretrain_grid(self) -> int:
        """Side of the position-embedding grid stored in the checkpoint (224 / patch)."""
        return self.pretrain_img_size // self.patch_size


def get_variant(name: str, patch_size: int) -> Variant:
    """Look up a variant; raise ``ValueError`` naming the valid choices."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}")
    if patch_size not in PATCH_SIZES:
        raise ValueError(f"unsupported patch size {patch_size!r}; choose one of {list(PATCH_SIZES)}")
    arch = ARCHS[name]
    return Variant(arch=name, patch_size=patch_size, embed_dim=arch.embed_dim, num_heads=arch.num_heads)


def resolve_layer(layer: int | None, depth: int) -> int:
    """Block index 0..depth-1 from ``None`` (the last), a negative (Python-style) or a positive index."""
    if layer is None:
        return depth - 1
    if not -depth <= layer < depth:
        raise ValueError(f"layer={layer} is out of range: this model has {depth} blocks (0..{depth - 1}, or -1 for last)")
    return layer % depth


def all_variants() -> list[Variant]:
    """Every (architecture, patch size) pair, in table order."""
    return [get_variant(name, p) for name in ARCHS for p in PATCH_SIZES]


# Official DINO checkpoints (https://github.com/facebookresearch/dino#pretrained-models).
DINO_BASE_URL = "https://dl.fbaipublicfiles.com/dino/"
WEIGHTS_URL_ENV = "DINO_WEIGHTS_URL"  # overrides DINO_BASE_URL: a mirror or an air-gapped file server


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable DINO checkpoint. ``size``/``sha256`` are None where not published."""

    name: str  # e.g. dino_deitsmall8_300ep_pretrain
    arch: str
    patch_size: int
    full: bool = False  # a training checkpoint (teacher/student), not a plain backbone
    size: int | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.pth"

    def url(self, base: str | None = None) -> str:
        """Download URL under ``base`` (default: $DINO_WEIGHTS_URL, else DINO's public base)."""
        base = base or os.environ.get(WEIGHTS_URL_ENV) or DINO_BASE_URL
        folder = self.name.removesuffix("_full_checkpoint")
        return f"{base.rstrip('/')}/{folder}/{self.filename}"


def _pair(folder: str, model: str, patch: int) -> tuple[Checkpoint, Checkpoint]:
    return Checkpoint(folder, model, patch), Checkpoint(f"{folder}_full_checkpoint", model, patch, full=True)


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        *_pair("dino_deitsmall16_pretrain", "vit_small", 16),
        *_pair("dino_deitsmall8_300ep_pretrain", "vit_small", 8),  # DINO's paper figures
        *_pair("dino_deitsmall8_pretrain", "vit_small", 8),
        *_pair("dino_vitbase16_pretrain", "vit_base", 16),
        *_pair("dino_vitbase8_pretrain", "vit_base", 8),
    )
}
DEFAULT_CHECKPOINTS: dict[tuple[str, int], str] = {
    ("vit_small", 16): "dino_deitsmall16_pretrain",
    ("vit_small", 8): "dino_deitsmall8_300ep_pretrain",
    ("vit_base", 16): "dino_vitbase16_pretrain",
    ("vit_base", 8): "dino_vitbase8_pretrain",
}


def get_checkpoint(variant: Variant, name: str | None = None) -> Checkpoint:
    """The named checkpoint (checked against the variant) or the variant's default one."""
    if name is None:
        if (variant.arch, variant.patch_size) not in DEFAULT_CHECKPOINTS:
            raise ValueError(
                f"DINO published no weights for {variant.arch}/{variant.patch_size}; "
                f"available: {sorted(DEFAULT_CHECKPOINTS)}. Use WEIGHTS=path/to/your.pth or WEIGHTS=random"
            )
        name = DEFAULT_CHECKPOINTS[(variant.arch, variant.patch_size)]
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; choose one of {sorted(CHECKPOINTS)}")
    checkpoint = CHECKPOINTS[name]
    if (checkpoint.arch, checkpoint.patch_size) != (variant.arch, variant.patch_size):
        raise ValueError(f"{name} is a {checkpoint.arch}/{checkpoint.patch_size} checkpoint, not {variant.arch}/{variant.patch_size}")
    return checkpoint
