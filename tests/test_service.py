"""The engine-agnostic pipeline: schema, values, batching, error isolation, the geometric check."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from testkit.checkpoints import TINY, backbone_state, brightness_seeking_state, encode, random_rgb, save
from testkit.handler import answer
from vitscope.attention import patch_attention, to_tensor
from vitscope.image import prepare_image
from vitscope.model.checkpoint import build_model
from vitscope.precision import PrecisionPlan
from vitscope.schema import OPTIONAL_FIELDS, SCHEMA_FIELDS
from vitscope.service import AttentionService, ConfigError, ServiceConfig, create_service, select_device


@pytest.fixture(scope="module")
def service() -> AttentionService:
    model = build_model(TINY, backbone_state(seed=3))
    return AttentionService(model, TINY, ServiceConfig(model="dino_vitt16", weights="test.pth@sha256:0", short_side=64))


def expected_maps(service: AttentionService, data: bytes, layer: int, **resize) -> np.ndarray:
    """Independent computation of the patch-grid maps for one image: (heads, H/p, W/p)."""
    prepared = prepare_image(data, patch_size=16, max_pixels=10**9, max_tokens=10**9, **resize)
    x = to_tensor(prepared.image, TINY.mean, TINY.std)[None]
    return patch_attention(service.model, x, layer)[0].numpy()


def test_response_schema_and_values(service: AttentionService) -> None:
    data = encode(random_rgb(90, 130))
    (reply,) = answer(service, [{"body": data}])
    assert reply.status == 200 and reply.content_type == "application/json"
    doc = orjson.loads(reply.body)
    assert tuple(doc) == (*(f for f in SCHEMA_FIELDS if f not in OPTIONAL_FIELDS), "attention")  # the JSON keys, in the schema's order
    assert doc["model"] == "dino_vitt16" and doc["patch_size"] == 16 and doc["layer"] == 11 and doc["num_heads"] == 3
    assert doc["weights"] == "test.pth@sha256:0" and doc["heads"] == [0, 1, 2] and doc["upsampled"] is True
    # short_side 64: 90x130 -> 64x92 -> crop to 64x80
    assert (doc["input_size"], doc["resized_size"], doc["image_size"], doc["grid"]) == ([90, 130], [64, 92], [64, 80], [4, 5])
    attention = np.asarray(doc["attention"], dtype=np.float32)
    assert attention.shape == (3, 64, 80)
    grid = expected_maps(service, data, 11, short_side=64)
    np.testing.assert_allclose(attention, np.kron(grid, np.ones((16, 16), np.float32)), rtol=0, atol=1e-7)
    sums = grid.sum(axis=(1, 2))
    assert np.all(sums > 0) and np.all(sums <= 1 + 1e-6)  # CLS->CLS dropped


def test_options_heads_layer_no_upsample(service: AttentionService) -> None:
    data = encode(random_rgb(64, 48))
    (reply,) = answer(service, [{"data": data, "heads": "2,0", "layer": "4", "upsample": "false", "scale": "1"}])
    doc = orjson.loads(reply.body)
    assert doc["heads"] == [0, 2] and doc["layer"] == 4 and doc["upsampled"] is False
    attention = np.asarray(doc["attention"], dtype=np.float32)
    assert attention.shape == (2, 4, 3) and doc["grid"] == [4, 3]
    np.testing.assert_allclose(attention, expected_maps(service, data, 4, scale=1.0)[[0, 2]], atol=1e-7)


def test_batch_mixed_sizes_and_bad_requests(service: AttentionService) -> None:
    images = [encode(random_rgb(64, 64, seed=1)), encode(random_rgb(48, 96, seed=2)), encode(random_rgb(64, 64, seed=3))]
    batch = [
        {"body": images[0]},
        {"body": b"not an image"},
        {"data": images[1], "scale": "1"},
        {"data": images[2], "layer": "99"},
        {"body": images[2]},
    ]
    replies = answer(service, batch)
    assert [r.status for r in replies] == [200, 400, 200, 400, 200]
    assert "not an image" in orjson.loads(replies[1].body)["error"]
    assert "layer=99" in orjson.loads(replies[3].body)["error"]
    for i in (0, 2, 4):
        (alone,) = answer(service, [batch[i]])
        np.testing.assert_allclose(
            np.asarray(orjson.loads(replies[i].body)["attention"]), np.asarray(orjson.loads(alone.body)["attention"]), atol=1e-6
        )


def test_same_size_same_layer_share_one_forward(service: AttentionService, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = service.model.get_cls_attention_layers
    monkeypatch.setattr(
        service.model, "get_cls_attention_layers", lambda x, layers, query=None: calls.append(tuple(x.shape)) or original(x, layers, query)
    )
    data = [encode(random_rgb(64, 64, seed=s)) for s in range(3)]
    answer(service, [{"body": data[0]}, {"body": data[1]}, {"data": data[2], "layer": "2"}])
    assert sorted(calls) == [(1, 3, 64, 64), (2, 3, 64, 64)]


def test_attention_peak_lies_on_bright_square(tmp_path: Path) -> None:
    svc = create_service({"model": "dino_vitt16"}, save(brightness_seeking_state(), tmp_path / "bright.pth"))
    image = np.zeros((96, 160, 3), np.uint8)  # non-square, black
    top, left, side = 16, 96, 32  # off-centre bright square, patch-aligned
    image[top : top + side, left : left + side] = 255
    (reply,) = answer(svc, [{"data": encode(image), "layer": "0", "scale": "1"}])
    attention = np.asarray(orjson.loads(reply.body)["attention"])  # (heads, H, W)
    assert attention.shape == (3, 96, 160)
    inside = np.zeros((96, 160), bool)
    inside[top : top + side, left : left + side] = True
    for head in attention:
        y, x = np.unravel_index(np.argmax(head), head.shape)
        assert inside[y, x]
        assert head[inside].sum() > 0.99 * head.sum()
        assert np.all(head[head >= 0.5 * head.max()] == head[inside].min())  # the whole square, evenly


def test_create_service_with_random_weights_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        svc = create_service({"model": "dino_vitt16", "weights": "random"}, None)
    assert "RANDOM weights" in caplog.text
    (reply,) = answer(svc, [{"data": encode(random_rgb(32, 32)), "scale": "1"}])
    assert orjson.loads(reply.body)["weights"] == "random"


def test_create_service_tags_weights_file(tmp_path: Path) -> None:
    path = save(backbone_state(), tmp_path / "tiny.pth")
    svc = create_service({"model": "dino_vitt16"}, path)
    assert svc.config.weights.startswith("tiny.pth@sha256:")


@pytest.mark.parametrize(
    "settings, weights, match",
    [
        ({"model": "dino_vitt16", "colour": 1}, "random", "unknown handler setting"),
        ({"model": 16}, "random", "model=16 must be str"),
        ({"arch": "vit_tiny", "patch_size": 16}, "random", "unknown handler setting"),
        ({"model": "dino_vitt16", "max_tokens": 0}, "random", "max_tokens must be positive"),
        ({"model": "dinov2_vitg16"}, "random", "unknown model 'dinov2_vitg16'"),
        ({"model": "dino_vitt16"}, "", "carries no weights"),
    ],
)
def test_bad_settings(settings, weights: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_service({**settings, "weights": weights}, None)


def test_device_selection() -> None:
    assert select_device(None) == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert select_device(0) == expected and select_device("0") == expected


@pytest.mark.parametrize("layer", [0, 6, 11])
def test_bf16_maps_correlate_with_fp32(service: AttentionService, layer: int) -> None:
    """bf16 arithmetic itself (forced native, whatever this CPU does) keeps the maps."""
    bf16 = AttentionService(service.model, TINY, service.config, precisions=PrecisionPlan("cpu", ("bf16",), "bf16"))
    data = (Path(__file__).resolve().parent.parent / "data" / "samples" / "astronaut.jpg").read_bytes()
    maps = {}
    for precision in ("fp32", "bf16"):
        (reply,) = answer(bf16, [{"data": data, "short_side": "160", "layer": str(layer), "precision": precision, "upsample": "false"}])
        doc = orjson.loads(reply.body)
        assert doc["precision"] == precision and reply.headers["X-Attention-Precision"] == precision
        maps[precision] = np.asarray(doc["attention"])
    assert not np.array_equal(maps["fp32"], maps["bf16"])  # bf16 really ran
    for a, b in zip(maps["fp32"], maps["bf16"], strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_precision_default_comes_from_settings(tmp_path: Path) -> None:
    svc = create_service({"model": "dino_vitt16", "precision": "auto"}, save(backbone_state(), tmp_path / "w.pth"))
    (reply,) = answer(svc, [{"data": encode(random_rgb(32, 32)), "scale": "1"}])
    doc = orjson.loads(reply.body)
    assert doc["precision_requested"] == "auto" and doc["precision"] == svc.precisions.auto
    with pytest.raises(ConfigError, match="precision='fp8' must be one of"):
        create_service({"model": "dino_vitt16", "precision": "fp8", "weights": "random"}, None)


def test_binary_formats_keep_values_and_metadata(service: AttentionService) -> None:
    data = encode(random_rgb(64, 96))
    (as_json,) = answer(service, [{"data": data, "scale": "1"}])
    doc = orjson.loads(as_json.body)
    expected = np.asarray(doc.pop("attention"), dtype=np.float32)

    (npy,) = answer(service, [{"data": data, "scale": "1", "format": "npy"}])
    assert npy.content_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.body), allow_pickle=False), expected)
    assert orjson.loads(npy.headers["X-Attention-Meta"]) == doc

    (npz,) = answer(service, [{"data": data, "scale": "1", "format": "npz", "dtype": "float16"}])
    assert npz.content_type == "application/x-npz"
    with np.load(io.BytesIO(npz.body), allow_pickle=False) as archive:
        assert archive["attention"].dtype == np.float16
        np.testing.assert_allclose(archive["attention"], expected, rtol=1e-3)
        assert orjson.loads(str(archive["meta"])) == {**doc, "dtype": "float16"}


def test_accept_header_picks_format_unless_option_says_otherwise(service: AttentionService) -> None:
    data = encode(random_rgb(32, 32))
    replies = answer(
        service,
        [{"data": data}, {"data": data}, {"data": data, "format": "json"}],
        ["application/x-npz", "text/html, application/x-npy;q=0.9", "application/x-npy"],
    )
    assert [r.content_type for r in replies] == ["application/x-npz", "application/x-npy", "application/json"]


def test_float16_json_is_smaller_and_close(service: AttentionService) -> None:
    data = encode(random_rgb(64, 64))
    full, half = (answer(service, [{"data": data, "scale": "1", "dtype": d}])[0] for d in ("float32", "float16"))
    a, b = (np.asarray(orjson.loads(r.body)["attention"]) for r in (full, half))
    assert len(half.body) < 0.8 * len(full.body)
    np.testing.assert_allclose(b, a, atol=float(a.max()) * 1e-3)
