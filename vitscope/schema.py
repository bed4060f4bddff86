"""What goes into the service and what comes out of it, defined once.

``ImageRequest``: one image and its raw options, as a protocol codec decoded them.
``AttentionResult``: one image's arrays and the metadata to interpret them. Its metadata fields, in
order, then the method's own fields, are the response schema of every protocol (JSON keys, the .npy
header, npz ``meta``, KServe parameters); the arrays are the method's declared outputs (``methods/``).
``response_fields()`` is every field a response may hold: docs/api.md's field table and the client are
checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from .methods import METHODS, all_outputs
from .vocab import OutputSpec

NOT_IN_SCHEMA = {"schema": False}  # dataclass field metadata: carried along, never sent as a field of its own
OPTIONAL = {"optional": True}  # sent only when set (the options that ask for them were given)


@dataclass(frozen=True)
class ImageRequest:
    """One image to explain: encoded image bytes and raw option values (strings, JSON values)."""

    image: bytes
    options: Mapping[str, object]
    accept_format: str | None = None  # the response format the HTTP Accept header names (protocols/), if any
    deadline: float | None = None  # unix time after which its answer is of no use (not computed then: 504)


@dataclass(frozen=True)
class AttentionResult:
    """What the service found for one image, with the metadata to interpret it (JSON key order)."""

    model: str  # torch.hub name, e.g. dino_vits8, dinov2_vits14_reg, dinov3_vits16
    patch_size: int
    layer: int  # block the maps come from, 0-based
    num_heads: int  # heads of the model
    heads: list[int]  # the heads in ``attention``, in order
    weights: str  # checkpoint file name + sha256 prefix, or "random"
    input_size: list[int]  # [H0, W0] decoded (after EXIF orientation)
    resized_size: list[int]  # [Hr, Wr] after the resize
    image_size: list[int]  # [H, W] after the crop to a multiple of patch_size
    grid: list[int]  # [H/p, W/p]
    upsampled: bool  # maps per pixel (True) or per patch
    precision: str  # forward precision that ran: fp32, bf16 or fp16
    precision_requested: str  # what the request (or the model's default) asked for, auto included
    dtype: str  # element type of the float arrays the response carries: float32 or float16
    layers: list[int] | None = field(default=None, metadata=OPTIONAL)  # the blocks of a layers= request
    method: str | None = field(default=None, metadata=OPTIONAL)  # any method but the default
    method_fields: dict[str, object] = field(default_factory=dict, metadata=NOT_IN_SCHEMA)  # how it ran, after ``method``
    mask: float | None = field(default=None, metadata=OPTIONAL)  # threshold t of the masks
    query: str | None = field(default=None, metadata=OPTIONAL)  # the token the maps are of, when the request named one
    # What each relevance map explains, in order (the explanation methods): {target, index?, label?, score}
    targets: list[dict[str, object]] | None = field(default=None, metadata=OPTIONAL)
    # The top classes (of the head, or of the request's labels), most probable first: {index, label, probability}
    predictions: list[dict[str, object]] | None = field(default=None, metadata=OPTIONAL)
    # With faithfulness=: per map (per target for relevance, aligned with ``targets``), its deletion/insertion
    # curves and AUCs and a random order's: {target, score, deletion?, insertion?, random} (faithfulness.py)
    faithfulness: list[dict[str, object]] | None = field(default=None, metadata=OPTIONAL)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata=NOT_IN_SCHEMA)  # output name -> array
    outputs: tuple[OutputSpec, ...] = field(default=(), repr=False, metadata=NOT_IN_SCHEMA)  # the method's, in order
    format: str = field(default="json", metadata=NOT_IN_SCHEMA)  # response encoding asked for: json|npy|npz
    stats: dict[str, float] = field(default_factory=dict, compare=False, metadata=NOT_IN_SCHEMA)  # for metrics

    def metadata(self) -> dict[str, object]:
        """Every metadata field in schema order, the method's own after ``method``; optional ones only when set."""
        meta: dict[str, object] = {}
        for name in SCHEMA_FIELDS:
            value = getattr(self, name)
            if not (name in OPTIONAL_FIELDS and value is None):
                meta[name] = value
            if name == "method":
                meta.update(self.method_fields)
        return meta

    def sent(self) -> list[tuple[OutputSpec, np.ndarray]]:
        """The arrays this result carries, each with its declaration, main output first."""
        return [(spec, self.arrays[spec.name]) for spec in self.outputs if spec.name in self.arrays]

    @property
    def main(self) -> tuple[OutputSpec, np.ndarray]:
        """The method's main output (what format=npy and TorchServe's kservev2 envelope carry)."""
        return self.sent()[0]


SCHEMA_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AttentionResult) if f.metadata.get("schema", True))
OPTIONAL_FIELDS: frozenset[str] = frozenset(f.name for f in fields(AttentionResult) if f.metadata.get("optional"))


def response_fields() -> tuple[str, ...]:
    """Every field a response may hold: the metadata, each method's own fields, each output."""
    own = tuple(dict.fromkeys(name for method in METHODS.values() for name in method.metadata_fields))
    return SCHEMA_FIELDS + own + tuple(output.name for output in all_outputs())
