"""The towers section (fp32, one image): the new families' image towers, ours against the library's
own forward pass, side by side in one process at 224x224 and 480x480:

* a supervised ViT classifier (ViT-S/16, 1000 classes) against transformers'
  ``ViTForImageClassification`` and timm's ``vit_small_patch16_224`` (``dynamic_img_size=True``);
* a distilled DeiT (the same size) against transformers' ``DeiTForImageClassificationWithTeacher``;
* a CLIP image tower (ViT-B/16, quick_gelu, pre-norm, no patch bias, a 512-d projection) against
  transformers' ``CLIPVisionModelWithProjection``;
* a SigLIP image tower (ViT-B/16 with the attention-pool head) against transformers' ``SiglipVisionModel``.

Columns, each the best of ``--repeats`` calls timed round-robin (every configuration of a model and
size once per round, the order rotating), so that the machine's noise falls on all of them alike:
(a) the library's forward without attentions (transformers' default SDPA attention, timm's fused),
(b) the library's forward with ``output_attentions=True`` (transformers' eager attention: what a
library gives a caller who wants the maps), (c) ours as a served request: the last layer's pooling
query's attention row and the predictions from that same pass (``recording_final``, then the logits
or the projected pooled embedding), (d) ours, the pooled forward only (``model(x)``).

Every model is built from its configuration with random weights: this is a speed comparison, not
an accuracy one.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from bench.section import Run
from bench.tables import Column, Table, Target, size_name
from bench.timing import Machine, native_kernels
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import Variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import FP32

logger = logging.getLogger("bench")

SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 480))
LIBRARY, ATTENTIONS, SERVED, POOLED = "library", "attentions", "served", "pooled"  # columns (a), (b), (c), (d)


@dataclass(frozen=True)
class Shape:
    """A tower's size: ViT-S/16 or ViT-B/16 at full size, a few channels in the tests."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    num_classes: int = 1000  # the classifiers' head
    proj_dim: int = 512  # CLIP's projection
    image_size: int = 224  # the stored position grid's image size

    @property
    def name(self) -> str:
        known = {VIT_S16: "ViT-S", VIT_B16: "ViT-B"}
        return f"{known.get(self, f'{self.embed_dim}/{self.depth}/{self.num_heads}')}/{self.patch_size}"


VIT_S16 = Shape(384, 12, 6)
VIT_B16 = Shape(768, 12, 12)


# ----------------------------------------------------------------------------- our models
def vit_classifier(s: Shape) -> Variant:
    return Variant("vit_s16_classifier", "vit", "custom", s.patch_size, s.embed_dim, s.depth, s.num_heads, num_classes=s.num_classes)


def deit_distilled(s: Shape) -> Variant:
    return replace(vit_classifier(s), name="deit_s16_distilled", distill_token=True)


def clip_image(s: Shape) -> Variant:
    return Variant(
        "clip_b16_image", "clip", "custom", s.patch_size, s.embed_dim, s.depth, s.num_heads, eps=1e-5, pre_norm=True, patch_bias=False,
        act="quick_gelu", proj_dim=s.proj_dim,
    )  # fmt: skip


def siglip_image(s: Shape) -> Variant:
    return Variant(
        "siglip_b16_image", "siglip", "custom", s.patch_size, s.embed_dim, s.depth, s.num_heads, class_token=False, pool="map",
        act="gelu_tanh",
    )  # fmt: skip


# ----------------------------------------------------------------------------- the libraries' models
def transformers_config(s: Shape, attn: str, **extra: Any) -> dict[str, Any]:
    """A transformers config's arguments for ``s`` with attention implementation ``attn`` (sdpa, eager)."""
    shape = {
        "hidden_size": s.embed_dim,
        "num_hidden_layers": s.depth,
        "num_attention_heads": s.num_heads,
        "intermediate_size": 4 * s.embed_dim,
    }
    return {**shape, "patch_size": s.patch_size, "image_size": s.image_size, "attn_implementation": attn, **extra}


def hf_vit(s: Shape, attn: str) -> nn.Module:
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig(**transformers_config(s, attn, num_labels=s.num_classes)))


def hf_deit(s: Shape, attn: str) -> nn.Module:
    import transformers

    config = transformers.DeiTConfig(**transformers_config(s, attn, num_labels=s.num_classes))
    return transformers.DeiTForImageClassificationWithTeacher(config)


def hf_clip(s: Shape, attn: str) -> nn.Module:
    import transformers

    config = transformers.CLIPVisionConfig(**transformers_config(s, attn, projection_dim=s.proj_dim, hidden_act="quick_gelu"))
    return transformers.CLIPVisionModelWithProjection(config)


def hf_siglip(s: Shape, attn: str) -> nn.Module:
    import transformers

    config = transformers.SiglipVisionConfig(**transformers_config(s, attn, hidden_act="gelu_pytorch_tanh", vision_use_head=True))
    return transformers.SiglipVisionModel(config)


def timm_vit(s: Shape, attn: str) -> nn.Module:
    """timm's ViT-S/16 classifier (``attn`` unused: its attention is fused, F.scaled_dot_product_attention,
    unless TIMM_FUSED_ATTN=0), resizing its position grid to each image (``dynamic_img_size``)."""
    import timm

    shape: dict[str, Any] = {"embed_dim": s.embed_dim, "depth": s.depth, "num_heads": s.num_heads, "patch_size": s.patch_size}
    shape |= {"img_size": s.image_size, "num_classes": s.num_classes, "dynamic_img_size": True}
    return timm.create_model("vit_small_patch16_224", pretrained=False, **shape)


@dataclass(frozen=True)
class Library:
    """A library's model of a tower: how to build it (``attn``: transformers' attention implementation)."""

    name: str
    build: Callable[[Shape, str], nn.Module]
    transformers: bool = True  # False: timm (no output_attentions, no interpolate_pos_encoding: it resizes by itself)


@dataclass(frozen=True)
class Tower:
    """One family's row(s): our variant and the libraries' models of the same architecture."""

    family: str
    base: bool  # ViT-B/16 (else ViT-S/16)
    variant: Callable[[Shape], Variant]
    libraries: tuple[Library, ...]


TOWERS: tuple[Tower, ...] = (
    Tower(
        "ViT classifier",
        False,
        vit_classifier,
        (Library("transformers ViTForImageClassification", hf_vit), Library("timm vit_small_patch16_224", timm_vit, transformers=False)),
    ),
    Tower("DeiT distilled", False, deit_distilled, (Library("transformers DeiTForImageClassificationWithTeacher", hf_deit),)),
    Tower("CLIP image tower", True, clip_image, (Library("transformers CLIPVisionModelWithProjection", hf_clip),)),
    Tower("SigLIP image tower", True, siglip_image, (Library("transformers SiglipVisionModel", hf_siglip),)),
)


# ----------------------------------------------------------------------------- what is timed
def served_request(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A served request's work: the last layer's pooling-query attention row (B, heads, N) and, from
    that same pass, the predictions (the logits, or the pooled image in the joint space)."""
    with model.recording_final(True) as final:
        rows = model.get_cls_attention_layers(x, [model.depth - 1])[:, 0]
    normed = final[0]
    out = model.logits(normed) if model.head is not None else model.embed_image(model.pool(normed))
    return rows, out


def library_call(model: nn.Module, library: Library, x: torch.Tensor, size: tuple[int, int], shape: Shape, attentions: bool) -> Any:
    if not library.transformers:
        return model(x)
    resize = size != (shape.image_size, shape.image_size)
    out = model(pixel_values=x, interpolate_pos_encoding=resize, output_attentions=attentions)
    if attentions and len(out.attentions) != shape.depth:
        raise RuntimeError(f"{library.name} returned {len(out.attentions)} attention maps, not {shape.depth}")
    return out


def round_robin(calls: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of each of ``calls`` over ``rounds`` rounds, each call once per round after one untimed
    call each (allocations, oneDNN primitives); the order rotates by one every round."""
    keys = list(calls)
    for key in keys:
        calls[key]()
    sync()
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            calls[key]()
            sync()
            times[key].append(time.perf_counter() - start)
    return times


@dataclass
class TowerRow:
    """One family against one library at one size: each column's seconds, one per round."""

    family: str
    library: str
    size: tuple[int, int]
    tokens: int  # patch tokens
    times: dict[str, list[float]] = field(default_factory=dict)  # LIBRARY, ATTENTIONS (absent: the library has none), SERVED, POOLED

    def best(self, column: str) -> float | None:
        return min(self.times[column]) if self.times.get(column) else None

    @property
    def served_over_library(self) -> float:
        """(c) / (a): ours, a served request, over the library's forward without attentions."""
        return min(self.times[SERVED]) / min(self.times[LIBRARY])

    @property
    def attentions_over_served(self) -> float | None:
        """(b) / (c): how many times faster ours is than the library with ``output_attentions=True``."""
        attentions = self.best(ATTENTIONS)
        return attentions / min(self.times[SERVED]) if attentions is not None else None


def bench_tower(tower: Tower, shape: Shape, sizes: Sequence[tuple[int, int]], rounds: int, device: torch.device) -> list[TowerRow]:
    """``tower``'s rows: our model and each library's (random weights), every size timed round-robin."""
    torch.manual_seed(0)
    variant = tower.variant(shape)
    ours = build_model(variant, None).to(device)
    ours.use_kernels(native_kernels(device, variant, [FP32]))  # as served: the kernels measured for fp32 at load
    built: list[tuple[Library, nn.Module, nn.Module | None]] = []
    for library in tower.libraries:
        fused = library.build(shape, "sdpa").eval().to(device)
        eager = None
        if library.transformers:  # the same weights, eager attention: the only one that returns the attentions
            eager = library.build(shape, "eager").eval().to(device)
            eager.load_state_dict(fused.state_dict())
        built.append((library, fused, eager))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows: list[TowerRow] = []
    for size in sizes:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
        calls: dict[str, Callable[[], object]] = {SERVED: partial(served_request, ours, x), POOLED: partial(ours, x)}
        for library, fused, eager in built:
            calls[f"{library.name}:{LIBRARY}"] = partial(library_call, fused, library, x, size, shape, False)
            if eager is not None:
                calls[f"{library.name}:{ATTENTIONS}"] = partial(library_call, eager, library, x, size, shape, True)
        logger.info("  %s %s: %d configurations x %d rounds", tower.family, size_name(size), len(calls), rounds)
        with torch.inference_mode():
            times = round_robin(calls, rounds, sync)
        tokens = (size[0] // shape.patch_size) * (size[1] // shape.patch_size)
        for library, _, eager in built:
            columns = {LIBRARY: times[f"{library.name}:{LIBRARY}"], SERVED: times[SERVED], POOLED: times[POOLED]}
            if eager is not None:
                columns[ATTENTIONS] = times[f"{library.name}:{ATTENTIONS}"]
            rows.append(TowerRow(f"{tower.family} ({shape.name})", library.name, size, tokens, columns))
    return rows


def bench_towers(
    sizes: Sequence[tuple[int, int]], rounds: int, device: torch.device, small: Shape = VIT_S16, base: Shape = VIT_B16
) -> list[TowerRow]:
    """Every family's rows (``TOWERS``), ViT-S/16 or ViT-B/16 as ``small`` and ``base``, on torch's default
    threads (the machine's cores), as the other in-process sections run."""
    rows: list[TowerRow] = []
    for tower in TOWERS:
        rows += bench_tower(tower, base if tower.base else small, sizes, rounds, device)
    return rows


# ----------------------------------------------------------------------------- the table and the targets
def towers_table(rows: Sequence[TowerRow], machine: Machine) -> Table:
    table = Table(
        "Towers (fp32, one image): ours vs the library's own forward pass, ViT / DeiT classifiers, CLIP and SigLIP image towers",
        (
            Column("family"),
            Column("library"),
            Column("size"),
            Column("tokens"),
            Column("(a) library s", "{:.3f}"),
            Column("(b) library, output_attentions s", "{:.3f}"),
            Column("(c) ours, served request s", "{:.3f}"),
            Column("(d) ours, pooled forward s", "{:.3f}"),
            Column("(c)/(a)", "{:.2f}x"),
            Column("(b)/(c): ours faster than output_attentions", "{:.1f}x"),
        ),
    )
    for r in rows:
        table.add(
            r.family,
            r.library,
            size_name(r.size),
            r.tokens,
            r.best(LIBRARY),
            r.best(ATTENTIONS),
            r.best(SERVED),
            r.best(POOLED),
            r.served_over_library,
            r.attentions_over_served,
        )
    rounds = min((len(t) for r in rows for t in r.times.values()), default=0)
    table.notes += [
        f"Best of {rounds} rounds, each configuration of a model and size once per round, round-robin in one process (the "
        "order rotating every round), after one untimed call each. (a) the library's forward without attentions "
        "(transformers' default SDPA attention; timm's fused attention, `dynamic_img_size=True`); (b) transformers with "
        '`attn_implementation="eager"` and `output_attentions=True` (every layer\'s N x N maps; timm returns none: blank); '
        "(c) ours as a served request: the last layer's pooling-query attention row and, from the same pass "
        "(`recording_final`), the predictions (the classifier's logits; CLIP/SigLIP: the pooled image embedding, projected); "
        "(d) ours, the pooled forward only (`model(x)`). transformers gets `interpolate_pos_encoding=True` at 480x480.",
        "Every model (ours and the libraries') has random weights built from its configuration with the same architecture: "
        "this is a speed comparison, not an accuracy one.",
        f"Measured on: {machine.description}.",
    ]
    return table


def towers_targets(rows: Sequence[TowerRow]) -> list[Target]:
    """Per row: ours as a served request at least as fast as the library's forward without attentions."""
    return [
        Target(
            f"{r.family} at {size_name(r.size)}: ours (a served request: map + predictions) over {r.library}'s forward without attentions",
            r.served_over_library,
            1.0,
            higher_is_better=False,
            fmt="{:.2f}x",
        )
        for r in rows
    ]


class Towers:
    key = "towers"
    title = "ViT/DeiT classifiers, CLIP and SigLIP image towers: ours vs the library's forward (transformers, timm)"

    def __init__(self, sizes: Sequence[tuple[int, int]] = SIZES, small: Shape = VIT_S16, base: Shape = VIT_B16) -> None:
        self.sizes, self.small, self.base = tuple(sizes), small, base

    def measure(self, run: Run) -> list[TowerRow]:
        logger.info("towers: ViT, DeiT, CLIP, SigLIP, ours vs transformers/timm (round-robin in this process) ...")
        return bench_towers(self.sizes, run.args.repeats, torch.device(run.args.device), self.small, self.base)

    def tables(self, figures: list[TowerRow], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [towers_table(figures, machine)]

    def targets(self, figures: list[TowerRow], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return towers_targets(figures)


SECTION = Towers()
