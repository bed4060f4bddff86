"""What goes into the service and what comes out of it, defined once.

``ImageRequest``: one image and its raw options, as a protocol codec decoded them.
``AttentionResult``: one image's attention and its metadata. Its fields, in order, are the response
schema of every protocol (JSON keys, the .npy header, npz ``meta``, KServe parameters); the client,
the tests and README's field table are checked against ``SCHEMA_FIELDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

NOT_IN_SCHEMA = {"schema": False}  # dataclass field metadata: carried along, never sent
OPTIONAL = {"optional": True}  # sent only when set (the options that ask for them were given)


@dataclass(frozen=True)
class ImageRequest:
    """One image to explain: encoded image bytes and raw option values (strings, JSON values)."""

    image: bytes
    options: Mapping[str, object]
    accept: str | None = None  # the HTTP Accept header, which may choose the response format


@dataclass(frozen=True)
class AttentionResult:
    """The [CLS] attention of one image, with the metadata to interpret it (JSON key order)."""

    model: str  # torch.hub name, e.g. dino_vits8, dinov2_vits14_reg, dinov3_vits16
    patch_size: int
    layer: int  # block the attention comes from, 0-based
    num_heads: int  # heads of the model
    heads: list[int]  # the heads in ``attention``, in order
    weights: str  # checkpoint file name + sha256 prefix, or "random"
    input_size: list[int]  # [H0, W0] decoded (after EXIF orientation)
    resized_size: list[int]  # [Hr, Wr] after the resize
    image_size: list[int]  # [H, W] after the crop to a multiple of patch_size
    grid: list[int]  # [H/p, W/p]
    upsampled: bool  # attention per pixel (True) or per patch
    precision: str  # forward precision that ran: fp32, bf16 or fp16
    precision_requested: str  # what the request (or the model's default) asked for, auto included
    dtype: str  # element type the response carries: float32 or float16
    attention: np.ndarray = field(repr=False)  # (len(heads), H, W) / (layers, len(heads), H, W) / (1, H, W); or per patch
    layers: list[int] | None = field(default=None, metadata=OPTIONAL)  # the blocks of a layers= request
    method: str | None = field(default=None, metadata=OPTIONAL)  # "rollout" (plain attention is the default)
    head_fusion: str | None = field(default=None, metadata=OPTIONAL)  # rollout: mean, max or min
    discard_ratio: float | None = field(default=None, metadata=OPTIONAL)  # rollout: share of each row discarded
    mask: float | None = field(default=None, metadata=OPTIONAL)  # threshold t of the masks
    masks: np.ndarray | None = field(default=None, repr=False, metadata=OPTIONAL)  # (maps..., H/p, W/p) bool
    boxes: np.ndarray | None = field(default=None, repr=False, metadata=OPTIONAL)  # (maps..., 4) int32, pixels
    registers: np.ndarray | None = field(default=None, repr=False, metadata=OPTIONAL)  # (maps..., R) float32: [CLS] -> registers
    format: str = field(default="json", metadata=NOT_IN_SCHEMA)  # response encoding asked for: json|npy|npz
    stats: dict[str, float] = field(default_factory=dict, compare=False, metadata=NOT_IN_SCHEMA)  # for metrics

    def metadata(self) -> dict[str, object]:
        """Every schema field but the arrays (``attention``, ``masks``, ``boxes``, ``registers``), in schema order;
        optional fields only when set."""
        return {
            name: getattr(self, name)
            for name in SCHEMA_FIELDS
            if name not in ARRAY_FIELDS and not (name in OPTIONAL_FIELDS and getattr(self, name) is None)
        }


SCHEMA_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AttentionResult) if f.metadata.get("schema", True))
OPTIONAL_FIELDS: frozenset[str] = frozenset(f.name for f in fields(AttentionResult) if f.metadata.get("optional"))
ARRAY_FIELDS: tuple[str, ...] = ("attention", "masks", "boxes", "registers")  # encoded by each protocol in its own way
