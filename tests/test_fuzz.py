"""Property-based fuzzing of the request entry point: any bytes and options give a prepared tensor or
a ``RequestError`` (our own, with an HTTP status), never another exception."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.checkpoints import encode
from tests.support.services import tiny_service
from vitscope.errors import RequestError
from vitscope.options import option_names
from vitscope.protocols import PLAIN
from vitscope.service import AttentionService, Prepared

# FUZZ_EXAMPLES=5000 make test for a longer run
# Corrupt inputs make PIL warn (e.g. "Corrupt EXIF data"); the property is about exceptions.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 300)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [
    encode(np.full((40, 56, 3), 128, np.uint8), fmt, **kw)
    for fmt, kw in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}))
]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.lists(st.integers(-3, 40), max_size=4),
    st.sampled_from(["0", "-1", "11", "0,2", "32x48", "0.5", "true", "bf16", "npz", "float16", "1e400"]),
)
options = st.dictionaries(st.sampled_from([*option_names(), "bogus", "data"]), values, max_size=4)


@pytest.fixture(scope="module")
def service() -> AttentionService:
    return tiny_service(weights="random", short_side=32, max_tokens=64, max_pixels=200_000)


@st.composite
def mutated_image(draw) -> bytes:
    """A valid image with bytes overwritten, cut or appended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)]) + draw(st.binary(max_size=16))


payload_bytes = st.one_of(st.binary(max_size=600), mutated_image())


def check(service: AttentionService, payload: dict) -> None:
    try:
        (request,) = PLAIN.decode(payload).requests
        prepared = service.prepare(request)
    except RequestError as e:
        assert 400 <= e.status < 500 and str(e)
        return
    assert isinstance(prepared, Prepared)
    assert prepared.tensor.shape[1] % 16 == 0 and prepared.tensor.shape[2] % 16 == 0
    assert torch.isfinite(prepared.tensor).all()


@FUZZ
@given(data=payload_bytes)
def test_raw_bodies(service: AttentionService, data: bytes) -> None:
    check(service, {"body": data})


@FUZZ
@given(data=payload_bytes, opts=options)
def test_multipart_with_options(service: AttentionService, data: bytes, opts: dict) -> None:
    check(service, {"data": data, **opts})


@FUZZ
@given(data=payload_bytes, opts=options, mangle=st.booleans())
def test_json_documents(service: AttentionService, data: bytes, opts: dict, mangle: bool) -> None:
    image = base64.b64encode(data).decode()
    check(service, {"body": {"image": image[:-1] if mangle else image, **opts}})


@FUZZ
@given(
    doc=st.recursive(
        values, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8
    )
)
def test_arbitrary_json(service: AttentionService, doc: object) -> None:
    check(service, {"body": doc})
