"""Plain TorchServe rows (raw, multipart, JSON) decoded by their codec, and option validation."""

from __future__ import annotations

import base64
import json

import pytest

from vitscope.errors import RequestError
from vitscope.options import Defaults, parse_options
from vitscope.protocols import PLAIN
from vitscope.schema import ImageRequest
from vitscope.vocab import ModelFacts, Options

IMG = b"\x89PNG fake image bytes"
B64 = base64.b64encode(IMG).decode()


@pytest.mark.parametrize(
    "payload, options",
    [
        ({"body": IMG}, {}),
        ({"body": bytearray(IMG)}, {}),
        ({"data": IMG, "short_side": b"320", "heads": "0,2"}, {"short_side": b"320", "heads": "0,2"}),
        ({"image": IMG}, {}),
        ({"body": {"image": B64, "short_side": 320}}, {"short_side": 320}),
        ({"body": {"image": "data:image/png;base64," + B64}}, {}),
        ({"body": json.dumps({"image": B64, "layer": 3}).encode()}, {"layer": 3}),  # JSON the server did not decode
    ],
)
def test_plain_rows_decode(payload, options) -> None:
    assert PLAIN.decode(payload, {"accept": "application/x-npy"}).requests == [ImageRequest(IMG, options, "npy")]


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"body": b'{"image": "abc'}, "malformed JSON"),
        ({"body": {"short_side": 3}}, '"image": a base64'),
        ({"body": {"image": "not base64!!"}}, "not valid base64"),
        ({"body": {"image": "https://example.com/cat.jpg"}}, "URLs are not fetched"),
        ({"body": "plain text"}, "body is text, not an image"),
        ({"short_side": b"3"}, "exactly one image field"),
        ({"data": IMG, "image": IMG}, "exactly one image field"),
        ({"data": "text instead of a file"}, "must be the image file"),
    ],
)
def test_bad_payloads(payload, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        PLAIN.decode(payload)


FACTS = ModelFacts("dino_vits8", "dino", 8, depth=12, num_heads=6, embed_dim=384, num_registers=0)


def parse(**raw) -> Options:
    return parse_options(raw, FACTS, Defaults())


def test_defaults() -> None:
    assert parse() == Options(layer=11, heads=(0, 1, 2, 3, 4, 5), upsample=True, short_side=480)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"layer": "0"}, {"layer": 0}),
        ({"layer": -1}, {"layer": 11}),
        ({"layer": b"5"}, {"layer": 5}),
        ({"short_side": "320"}, {"short_side": 320}),
        ({"scale": "0.5"}, {"scale": 0.5, "short_side": None}),
        ({"size": "224x320"}, {"size": (224, 320), "short_side": None}),
        ({"size": [224, 320]}, {"size": (224, 320), "short_side": None}),
        ({"heads": "2,0"}, {"heads": (0, 2)}),
        ({"heads": [1]}, {"heads": (1,)}),
        ({"heads": 3}, {"heads": (3,)}),
        ({"upsample": "false"}, {"upsample": False}),
        ({"upsample": False}, {"upsample": False}),
        ({"short_side": None}, {"short_side": 480}),
        ({"precision": "BF16"}, {"precision": "bf16"}),
        ({"format": "npz", "dtype": "float16"}, {"format": "npz", "dtype": "float16"}),
    ],
)
def test_valid_options(raw, expected) -> None:
    options = parse(**raw)
    for name, value in expected.items():
        assert getattr(options, name) == value


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"layer": "99"}, "layer=99 is out of range"),
        ({"layer": "-13"}, "out of range"),
        ({"layer": "last"}, "not an integer"),
        ({"layer": True}, "not an integer"),
        ({"short_side": "-1"}, "short_side=-1 must be a positive integer"),
        ({"short_side": "0"}, "must be a positive integer"),
        ({"short_side": "12.5"}, "not an integer"),
        ({"scale": "0"}, "positive number"),
        ({"scale": "nan"}, "positive number"),
        ({"scale": "abc"}, "positive number"),
        ({"size": "abc"}, "is not HxW"),
        ({"size": "0x10"}, "positive integer"),
        ({"size": [1, 2, 3]}, "is not HxW"),
        ({"heads": "6"}, "head indices in 0..5"),
        ({"heads": ""}, "head indices"),
        ({"heads": "a,b"}, "not an integer"),
        ({"upsample": "maybe"}, "not a boolean"),
        ({"short_side": "320", "size": "10x10"}, "conflict"),
        ({"colour": "red"}, "unknown option"),
        ({"layer": b"\xff"}, "not UTF-8"),
        ({"precision": "fp8"}, "not one of \\['fp32', 'bf16', 'fp16', 'auto'\\]"),
        ({"format": "xml"}, "format='xml' is not one of"),
        ({"dtype": "int8"}, "dtype='int8' is not one of"),
    ],
)
def test_invalid_options(raw, match: str) -> None:
    with pytest.raises(RequestError, match=match) as err:
        parse(**raw)
    assert err.value.status == 400
