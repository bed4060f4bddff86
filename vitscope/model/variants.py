"""The architecture table: each model family is one declared row of FAMILIES (the facts its models
share, and its variants), with the constants of the network's input and the checks of a model's facts.
Nothing here is re-typed elsewhere. The official checkpoints (URLs, licences, gating) are the catalogue's
(``catalogue.py``): it reads this table; this table never reads it.

Three self-supervised families with official weights, each named as its torch.hub entry point:

* DINO (Caron et al. 2021): ``dino_vits8`` ... learned position embedding on a 224/p grid.
* DINOv2 (Oquab et al. 2023): ``dinov2_vits14`` ... LayerScale, a 518/14 = 37x37 position grid,
  ViT-g with a SwiGLU FFN; ``_reg`` variants add 4 register tokens (Darcet et al. 2024).
* DINOv3 (Simeoni et al. 2025): ``dinov3_vits16`` ... no position embedding but RoPE on the patch
  tokens, 4 storage tokens, a masked key bias, LayerScale; ViT-S+ with a SwiGLU FFN.

Three families whose checkpoints are the user's (no row of variants: a checkpoint's own config, or
the library's, describes each model, ``sources.py``): supervised ``vit`` classifiers (ViT, DeiT with
its distillation token), ``clip`` (a ViT image tower with a projection and a causal text tower) and
``siglip`` (no [CLS]: an attention-pool probe, a sigmoid with a bias). timm's ``VisionTransformer``
flags (``class_token``, ``pre_norm``, ``global_pool``, ...) are the model: ``Variant``'s fields below.

The architecture facts come from the official code (facebookresearch/dino, dinov2 ``hub/backbones.py``
and dinov3 ``hub/backbones.py``); tests freeze the resulting state_dict layouts. Adding a
family: docs/guides/model-family.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The FFNs the network builds, by ``Variant.ffn``: mlp (fc1/fc2), swiglu_fused (DINOv2 ViT-g: w12/w3), swiglu
# (DINOv3 ViT-S+: w1/w2/w3). vit.py's FFN_MODULES holds their modules, in this order.
FFNS: tuple[str, ...] = ("mlp", "swiglu_fused", "swiglu")
# The MLPs' activations: exact GELU (DINO, ViT), OpenAI CLIP's quick_gelu x * sigmoid(1.702 x), SigLIP's tanh GELU.
ACTS: tuple[str, ...] = ("gelu", "quick_gelu", "gelu_tanh")
# How a model pools an image into one vector, which is also the query its maps are of (``queries``):
# "token": the normed [CLS] token; "map": SigLIP's attention-pool probe over the last block's tokens.
POOLS: tuple[str, ...] = ("token", "map")
# What a classifier head reads: "token" the pooled token (with a distillation token: head and head_dist averaged);
# "token_mean" [CLS] with the patches' mean (DINOv2's); "cls" [CLS] alone, a distillation token's output
# unused (transformers' DeiTForImageClassification).
# "cls4_mean": the [CLS] of each of the last 4 blocks with the last one's patch mean (DINOv2's linear4 heads).
HEAD_INPUTS: tuple[str, ...] = ("token", "token_mean", "cls", "cls4_mean")
HEAD_BLOCKS = 4  # the blocks a cls4_mean head reads the [CLS] of
# The queries maps can be of, by name: the [CLS] token, DeiT's distillation token, SigLIP's probe.
CLS, DISTILLATION, PROBE = "cls", "distillation", "probe"
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP's and timm's augreg ViTs' mean and std


@dataclass(frozen=True)
class TextVariant:
    """A text tower (CLIP, SigLIP): token and position embeddings, pre-norm blocks, a final norm,
    the pooled token projected into the image embedding's space."""

    vocab_size: int
    context_length: int
    embed_dim: int  # the tower's width
    depth: int
    num_heads: int
    proj_dim: int  # the joint embedding's size
    mlp_ratio: float = 4.0
    act: str = "gelu"
    eps: float = 1e-5
    causal: bool = True  # CLIP's causal mask; SigLIP's tower sees every token
    pool: str = "eot"  # "eot": the first end-of-text token (CLIP); "last": the last position (SigLIP)
    eot_token_id: int = 49407  # CLIP's <|endoftext|>
    proj_bias: bool = False  # SigLIP's projection has a bias
    tokenizer: str = "clip"  # the tokenizer its ids come from (model/tokenizer.py): clip or json
    canonicalize: bool = False  # SigLIP's text cleaning (lower case, no punctuation) before tokenizing

    # The block's facts a text tower shares with every image tower (vit.Block reads them).
    ffn = "mlp"
    layerscale_init = None
    mask_k_bias = False

    @property
    def ffn_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


@dataclass(frozen=True)
class Variant:
    """A concrete model: its architecture, tokens, position encoding and preprocessing."""

    name: str  # torch.hub name, e.g. dino_vits8, dinov2_vits14_reg, dinov3_vits16: archive and URL name
    family: str  # key of FAMILIES: the row that declares it
    arch: str  # size class: vit_tiny, vit_small, vit_small_plus, vit_base, vit_large, vit_giant2
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # one of FFNS
    eps: float = 1e-6  # LayerNorm epsilon
    layerscale_init: float | None = None  # LayerScale (ls1/ls2.gamma) and its init value; None: none
    num_registers: int = 0  # register (DINOv2) / storage (DINOv3) tokens after [CLS]
    pretrain_img_size: int = 224  # the stored position grid is pretrain_img_size / patch_size (learned positions)
    interpolate_offset: float = 0.1  # position-grid resize: scale factor (grid + offset) / stored grid; 0: size=
    interpolate_antialias: bool = False
    rope_base: float | None = None  # RoPE instead of a position embedding (DINOv3): period base
    mask_k_bias: bool = False  # qkv bias multiplied by a stored bias_mask (DINOv3 zeroes the key bias)
    # Read from a fine-tuned checkpoint's own config (model/sources.py); the family's otherwise:
    ffn_hidden_dim: int = 0  # the FFN's hidden width as its config states it; 0: from mlp_ratio as the official code
    image_mean: tuple[float, float, float] | None = None  # preprocessing of its preprocessor config
    image_std: tuple[float, float, float] | None = None
    # timm's VisionTransformer flags, for the supervised ViT/DeiT, CLIP and SigLIP families:
    class_token: bool = True  # a [CLS] token first (SigLIP has none)
    distill_token: bool = False  # DeiT's distillation token after [CLS], with its own head (head_dist)
    pre_norm: bool = False  # CLIP: a LayerNorm (norm_pre) over the tokens before the blocks
    patch_bias: bool = True  # CLIP's patch projection has no bias
    act: str = "gelu"  # the MLPs' activation: one of ACTS
    pool: str = "token"  # one of POOLS
    num_classes: int = 0  # a classifier head (head, and head_dist with a distillation token); 0: none
    head_input: str = "token"  # one of HEAD_INPUTS
    proj_dim: int = 0  # CLIP's image projection into the joint space (proj, no bias); 0: none
    text: TextVariant | None = None  # a text tower (CLIP, SigLIP), with logit_scale
    logit_bias: bool = False  # SigLIP's learned bias on the scaled cosines

    @property
    def pretrain_grid(self) -> int:
        """Side of the position-embedding grid stored in the checkpoint (224 / patch, or 518 / 14)."""
        return self.pretrain_img_size // self.patch_size

    @property
    def num_class_tokens(self) -> int:
        """The tokens before the registers, each with a learned position: [CLS] and DeiT's distillation token."""
        return int(self.class_token) + int(self.distill_token)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: [CLS], the distillation token, the registers."""
        return self.num_class_tokens + self.num_registers

    @property
    def queries(self) -> tuple[str, ...]:
        """The queries its maps can be of, the one it pools by first (``query=``)."""
        if self.pool == "map":
            return (PROBE,)
        return (CLS, DISTILLATION) if self.distill_token else (CLS,)

    @property
    def embed_size(self) -> int:
        """The size of the image embedding: the projection's, else the pooled token's."""
        return self.proj_dim or self.embed_dim

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.image_mean or FAMILIES[self.family].mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.image_std or FAMILIES[self.family].std

    @property
    def register_key(self) -> str:
        return FAMILIES[self.family].register_key if self.num_registers else ""

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN as the official code computes it (SwiGLU: 2/3 of it, aligned to 8)."""
        if self.ffn_hidden_dim:
            return self.ffn_hidden_dim
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu_fused":
            return (int(hidden * 2 / 3) + 7) // 8 * 8
        if self.ffn == "swiglu":
            d = int(hidden * 2 / 3)
            return d + (-d % 8)
        return hidden


@dataclass(frozen=True)
class Family:
    """One model family, declared as one row of FAMILIES: the facts its models share, and its variants."""

    name: str  # dino, dinov2, dinov3: every variant's ``family``
    title: str
    register_key: str = ""  # state_dict name of the extra tokens after [CLS] ("" if the family has none)
    register_title: str = ""  # what the family calls them, for messages ("" if none)
    mask_token: bool = False  # its checkpoints carry a (1, C) mask_token (masked-image training; unused at inference)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # preprocessing (LVD-1689M DINOv3 weights use ImageNet's too)
    std: tuple[float, float, float] = IMAGENET_STD
    variants: tuple[Variant, ...] = ()  # its models, in table order

    def __post_init__(self) -> None:
        strays = [v.name for v in self.variants if v.family != self.name]
        if strays:
            raise ValueError(f"family {self.name}: variants {strays} name another family")


# DINO (v1) sizes: name -> (embed_dim, heads, hub letter); depth 12, patch 8 or 16.
DINO_ARCHS: dict[str, tuple[int, int, str]] = {
    "vit_tiny": (192, 3, "t"),
    "vit_small": (384, 6, "s"),
    "vit_base": (768, 12, "b"),
}
DINO_PATCH_SIZES: tuple[int, ...] = (8, 16)
DEFAULT_DINO_PATCH = 8
DEFAULT_MODEL = "dino_vits8"  # what the handler, the scripts and make serve when no model is named (DINO's paper figures)
# DINOv2 sizes: name -> (embed_dim, depth, heads, hub letter); patch 14, each with and without registers.
V2_ARCHS: dict[str, tuple[int, int, int, str]] = {
    "vit_small": (384, 12, 6, "s"),
    "vit_base": (768, 12, 12, "b"),
    "vit_large": (1024, 24, 16, "l"),
    "vit_giant2": (1536, 40, 24, "g"),
}
# DINOv3 LVD-1689M ViTs: hub name -> (size, embed_dim, depth, heads, FFN ratio, FFN); patch 16.
V3_MODELS: dict[str, tuple[str, int, int, int, float, str]] = {
    "dinov3_vits16": ("vit_small", 384, 12, 6, 4.0, "mlp"),
    "dinov3_vits16plus": ("vit_small_plus", 384, 12, 6, 6.0, "swiglu"),
    "dinov3_vitb16": ("vit_base", 768, 12, 12, 4.0, "mlp"),
    "dinov3_vitl16": ("vit_large", 1024, 24, 16, 4.0, "mlp"),
}


def _dino(arch: str, patch: int) -> Variant:
    dim, heads, letter = DINO_ARCHS[arch]
    return Variant(f"dino_vit{letter}{patch}", "dino", arch, patch, dim, 12, heads)


def _dinov2(arch: str, registers: bool) -> Variant:
    dim, depth, heads, letter = V2_ARCHS[arch]
    return Variant(
        f"dinov2_vit{letter}14" + ("_reg" if registers else ""),
        "dinov2",
        arch,
        14,
        dim,
        depth,
        heads,
        ffn="swiglu_fused" if arch == "vit_giant2" else "mlp",
        layerscale_init=1.0,
        num_registers=4 if registers else 0,
        pretrain_img_size=518,
        # The register models resize the position grid to an explicit size, antialiased (dinov2 hub).
        interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=registers,
    )


def _dinov3(name: str) -> Variant:
    arch, dim, depth, heads, mlp_ratio, ffn = V3_MODELS[name]
    return Variant(
        name,
        "dinov3",
        arch,
        16,
        dim,
        depth,
        heads,
        mlp_ratio=mlp_ratio,
        ffn=ffn,
        eps=1e-5,
        layerscale_init=1e-5,
        num_registers=4,
        rope_base=100.0,
        mask_k_bias=True,
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("dino", "DINO", variants=tuple(_dino(arch, patch) for arch in DINO_ARCHS for patch in DINO_PATCH_SIZES)),
        Family(
            "dinov2",
            "DINOv2",
            "register_tokens",
            "registers (DINOv2)",
            mask_token=True,
            variants=tuple(_dinov2(arch, registers) for registers in (False, True) for arch in V2_ARCHS),
        ),
        Family(
            "dinov3",
            "DINOv3",
            "storage_tokens",
            "storage tokens (DINOv3)",
            mask_token=True,
            variants=tuple(_dinov3(name) for name in V3_MODELS),
        ),
        # The user's checkpoints, described by their own config or library (sources.py):
        Family("vit", "ViT / DeiT (supervised)", "reg_token", "registers"),
        Family("clip", "CLIP", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
        Family("siglip", "SigLIP", mean=HALF, std=HALF),
    )
}
VARIANTS: dict[str, Variant] = {v.name: v for family in FAMILIES.values() for v in family.variants}


def get_variant(name: str, patch_size: int | None = None) -> Variant:
    """The variant of a hub name (``dinov2_vits14_reg``), or of DINO's ``vit_small`` + patch 8/16.

    ``patch_size`` with a hub name must agree with it. ``ValueError`` names the valid choices.
    """
    if name in VARIANTS:
        variant = VARIANTS[name]
        if patch_size is not None and patch_size != variant.patch_size:
            raise ValueError(f"{name} has patch size {variant.patch_size}, not {patch_size}: leave PATCH out for hub names")
        return variant
    if name in DINO_ARCHS:
        patch_size = patch_size or DEFAULT_DINO_PATCH
        if patch_size not in DINO_PATCH_SIZES:
            raise ValueError(f"unsupported patch size {patch_size!r} for DINO's {name}; choose one of {list(DINO_PATCH_SIZES)}")
        return VARIANTS[f"dino_vit{DINO_ARCHS[name][2]}{patch_size}"]
    raise ValueError(f"unknown model {name!r}; choose a hub name {sorted(VARIANTS)} or DINO's {sorted(DINO_ARCHS)} with PATCH=8|16")


VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a model name TorchServe and KServe accept in URLs


def variant_to_mapping(variant: Variant) -> dict[str, object]:
    """A variant as plain values (lists for tuples, a mapping for its text tower): what an archive
    records of a model built from its checkpoint (``architecture:`` in its model-config.yaml)."""
    out: dict[str, object] = {}
    for f in fields(Variant):
        value = getattr(variant, f.name)
        if isinstance(value, TextVariant):
            value = {t.name: getattr(value, t.name) for t in fields(TextVariant)}
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def text_from_mapping(values: object) -> TextVariant:
    """A text tower's fields, checked: ``ValueError`` naming what is wrong."""
    if not isinstance(values, Mapping):
        raise ValueError(f"architecture: text must be a mapping of a text tower's fields, not {values!r}")
    known = {f.name: f for f in fields(TextVariant)}
    unknown = sorted(set(values) - set(known))
    missing = sorted(name for name, f in known.items() if f.default is MISSING and name not in values)
    if unknown or missing:
        raise ValueError(f"architecture: text: unknown fields {unknown}, missing fields {missing}")
    checked: dict[str, Any] = {k: float(v) if isinstance(known[k].default, float) and isinstance(v, int) else v for k, v in values.items()}
    text = TextVariant(**checked)
    if text.act not in ACTS or text.pool not in ("eot", "last"):
        raise ValueError(f"architecture: text: act {text.act!r} (one of {list(ACTS)}) or pool {text.pool!r} (eot or last)")
    return text


def variant_from_mapping(values: Mapping[str, object]) -> Variant:
    """The inverse of ``variant_to_mapping``, checked: ``ValueError`` naming the field that is wrong."""
    known = {f.name: f for f in fields(Variant)}
    unknown = sorted(set(values) - set(known))
    missing = sorted(name for name, f in known.items() if f.default is MISSING and name not in values)
    if unknown or missing:
        raise ValueError(f"architecture: unknown fields {unknown}, missing fields {missing}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name].default
        if name == "text" and value is not None:
            value = text_from_mapping(value)
        elif name in ("image_mean", "image_std") and value is not None:
            if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(c, (int, float)) for c in value)):
                raise ValueError(f"architecture: {name} must be three numbers, not {value!r}")
            value = tuple(float(c) for c in value)
        elif isinstance(value, int) and not isinstance(value, bool) and (isinstance(default, float) or name == "rope_base"):
            value = float(value)  # YAML writes 1 for 1.0
        checked[name] = value
    variant = Variant(**checked)
    if variant.family not in FAMILIES:
        raise ValueError(f"architecture: family {variant.family!r} is not one of {sorted(FAMILIES)}")
    for name, allowed in (("ffn", FFNS), ("act", ACTS), ("pool", POOLS), ("head_input", HEAD_INPUTS)):
        if getattr(variant, name) not in allowed:
            raise ValueError(f"architecture: {name} {getattr(variant, name)!r} is not one of {list(allowed)}")
    if variant.pool == "map" and (variant.class_token or variant.distill_token):
        raise ValueError("architecture: pool 'map' (an attention-pool probe) is for models without [CLS] (SigLIP)")
    if not VARIANT_NAME.match(variant.name):
        raise ValueError(f"architecture: name {variant.name!r} must be letters, digits, '_', '-' or '.' (a URL path segment)")
    for name in ("patch_size", "embed_dim", "depth", "num_heads", "pretrain_img_size"):
        if not isinstance(getattr(variant, name), int) or getattr(variant, name) < 1:
            raise ValueError(f"architecture: {name} must be a positive integer, not {getattr(variant, name)!r}")
    if variant.embed_dim % variant.num_heads:
        raise ValueError(f"architecture: embed_dim {variant.embed_dim} is not divisible by num_heads {variant.num_heads}")
    return variant


def resolve_layer(layer: int | None, depth: int) -> int:
    """Block index 0..depth-1 from ``None`` (the last), a negative (Python-style) or a positive index."""
    if layer is None:
        return depth - 1
    if not -depth <= layer < depth:
        raise ValueError(f"layer={layer} is out of range: this model has {depth} blocks (0..{depth - 1}, or -1 for last)")
    return layer % depth


def all_variants() -> list[Variant]:
    """Every variant, in table order."""
    return list(VARIANTS.values())
