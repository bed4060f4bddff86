"""The encoding section: the time and size of each response encoding (the seed's ``json.dumps``,
orjson, npy, npz; float32 or float16; upsampled or not) of the same 480x480 maps."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bench.section import Run
from bench.tables import Column, Table, Target
from bench.timing import Machine, timed
from vitscope.attention import upsample_nearest
from vitscope.methods import METHODS
from vitscope.methods.maps import MAPS
from vitscope.model.variants import get_variant
from vitscope.protocols.plain import encode_attention
from vitscope.schema import AttentionResult
from vitscope.vocab import DEFAULT_METHOD

logger = logging.getLogger("bench")


@dataclass
class Encoding:
    format: str
    seconds: float
    mb: float


def bench_encodings(maps: np.ndarray, patch: int, repeats: int) -> list[Encoding]:
    """Time and size of each response encoding of the same maps (heads, H/p, W/p)."""
    up = upsample_nearest(maps, patch)
    heads, h, w = maps.shape
    base = AttentionResult(
        model="bench",
        patch_size=patch,
        layer=11,
        num_heads=heads,
        heads=list(range(heads)),
        weights="random",
        input_size=[h * patch, w * patch],
        resized_size=[h * patch, w * patch],
        image_size=[h * patch, w * patch],
        grid=[h, w],
        upsampled=True,
        precision="fp32",
        precision_requested="fp32",
        dtype="float32",
        arrays={MAPS.name: up},
        outputs=METHODS[DEFAULT_METHOD].outputs,
    )

    def body(fmt: str, dtype: str, upsampled: bool = True) -> bytes:
        result = replace(base, format=fmt, dtype=dtype, upsampled=upsampled, arrays={MAPS.name: up if upsampled else maps})
        return encode_attention(result)[0]

    cases: dict[str, Callable[[], bytes]] = {
        "json.dumps(tolist()) [seed-style]": lambda: json.dumps({**base.metadata(), "attention": up.tolist()}).encode(),
        "orjson, upsampled float32 [default]": lambda: body("json", "float32"),
        "orjson, upsampled dtype=float16": lambda: body("json", "float16"),
        "orjson, upsample=false": lambda: body("json", "float32", upsampled=False),
        "npy, upsampled float32": lambda: body("npy", "float32"),
        "npz, upsampled float16": lambda: body("npz", "float16"),
        "npz, upsample=false float16": lambda: body("npz", "float16", upsampled=False),
    }
    return [Encoding(name, min(timed(fn, repeats)), len(fn()) / 1e6) for name, fn in cases.items()]


def encodings_table(encodings: Sequence[Encoding], heads: int) -> Table:
    table = Table(
        f"Response encoding (480x480 maps, {heads} heads)", (Column("format"), Column("seconds", "{:.3f}"), Column("MB", "{:.2f}"))
    )
    for e in encodings:
        table.add(e.format, e.seconds, e.mb)
    return table


class Encodings:
    key = "encoding"
    title = "each response encoding (json, orjson, npy, npz; float32/float16; upsampled or not) of the same 480x480 maps"

    def measure(self, run: Run) -> list[Encoding]:
        logger.info("encodings ...")
        maps480 = run.workdir / "fp32_480x480.npy"  # the forward section's maps, where it ran at 480x480
        heads = get_variant(run.args.model, run.args.patch).num_heads
        side = 480 // run.args.patch  # the patch grid of 480x480 maps, as the title says
        grid = np.load(maps480) if maps480.exists() else np.random.default_rng(0).random((heads, side, side), dtype=np.float32)
        return bench_encodings(np.ascontiguousarray(grid, dtype=np.float32), run.args.patch, run.args.repeats)

    def tables(self, figures: list[Encoding], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [encodings_table(figures, get_variant(args.model, args.patch).num_heads)]

    def targets(self, figures: list[Encoding], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Encodings()
