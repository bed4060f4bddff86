"""``method=similarity``: the cosine similarity of every patch's normed feature to the patch at
``point``, through every protocol, on every family; the first method added on the registry."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from testkit.checkpoints import TINY, backbone_state, brightness_seeking_state, encode, random_rgb, tiny_replica
from testkit.handler import answer
from tests.support.services import tiny_service
from vitscope.attention import to_tensor
from vitscope.image import prepare_image
from vitscope.model.variants import Variant
from vitscope.model.vit import VisionTransformer
from vitscope.schema import ImageRequest
from vitscope.service import AttentionService
from vitscope_client import cli, response

PNG = encode(random_rgb(48, 80, seed=4))  # short_side 48: 48x80, a 3x5 grid at patch 16


def service_of(variant: Variant, state: dict[str, torch.Tensor] | None = None) -> AttentionService:
    return tiny_service(variant, state, short_side=48 if variant.patch_size == 16 else 56)


def reference_similarity(model: VisionTransformer, data: bytes, layer: int, point: tuple[int, int], short_side: int) -> np.ndarray:
    """Independently: the explicit reference blocks, the final norm, torch's cosine similarity. (h, w)"""
    p = model.patch_size
    image = prepare_image(data, patch_size=p, max_pixels=10**8, max_tokens=10**6, short_side=short_side)
    x = to_tensor(image.image, model.variant.mean, model.variant.std)[None]
    with torch.inference_mode():
        tokens, rope = model.prepare_tokens(x)
        for blk in list(model.blocks)[: layer + 1]:
            tokens = blk(tokens, rope, explicit=True)
        patches = model.norm(tokens)[0, model.num_prefix_tokens :]  # (n, D)
    h, w = x.shape[-2] // p, x.shape[-1] // p
    target = patches[(point[1] // p) * w + point[0] // p]
    return F.cosine_similarity(patches, target[None], dim=-1).reshape(h, w).numpy()


@pytest.mark.parametrize("name", ["dino_vitt16", "dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"])
def test_similarity_is_the_cosine_of_the_normed_patch_features(name: str) -> None:
    variant = TINY if name == "dino_vitt16" else tiny_replica(name)
    service = service_of(variant)
    p = variant.patch_size
    layer = 1
    (reply,) = answer(
        service, [{"data": PNG, "method": "similarity", "point": f"{3 * p + 2},{p + 5}", "layer": str(layer), "upsample": "false"}]
    )
    doc = orjson.loads(reply.body)
    assert reply.status == 200, doc
    assert (doc["method"], doc["point"], doc["patch"], doc["layer"]) == ("similarity", [3 * p + 2, p + 5], [1, 3], layer)
    similarity = np.asarray(doc["similarity"], np.float32)
    expected = reference_similarity(service.model, PNG, layer, (3 * p + 2, p + 5), service.config.short_side)
    assert similarity.shape == (1, *expected.shape) == (1, *doc["grid"])
    np.testing.assert_allclose(similarity[0], expected, atol=1e-4)
    assert similarity[0, 1, 3] == pytest.approx(1.0, abs=1e-5) and (np.abs(similarity) <= 1 + 1e-5).all()
    assert "attention" not in doc and "features" not in doc and "heads" in doc  # the shared metadata, the method's own array


def test_similarity_peaks_on_the_clicked_region() -> None:
    """Constructed: patch features carry the brightness; a click on the bright half finds the bright half."""
    service = service_of(TINY, brightness_seeking_state())
    image = np.full((48, 96, 3), 30, np.uint8)
    image[:, 48:] = 225  # the right half is bright
    (reply,) = answer(service, [{"data": encode(image), "method": "similarity", "point": "70,20", "layer": "0", "upsample": "false"}])
    similarity = np.asarray(orjson.loads(reply.body)["similarity"])[0]  # (3, 6)
    assert similarity[:, 3:].min() > similarity[:, :3].max()


def test_several_images_are_compared_with_the_first_images_patch() -> None:
    """Cross-image correspondence: point is a pixel of the first image; every map is the cosine of
    that image's features to the first image's patch (the second image is smaller than the point)."""
    service = service_of(TINY, backbone_state(seed=2))
    second = encode(random_rgb(48, 48, seed=5))
    point = (70, 20)  # outside the 48x48 second image: it is the first's
    images = [base64.b64encode(data).decode() for data in (PNG, second)]
    (reply,) = answer(service, [{"body": {"images": images, "method": "similarity", "point": "70,20", "upsample": False}}])
    assert reply.status == 200, reply.body
    first, other = orjson.loads(reply.body)["images"]
    assert first["patch"] == other["patch"] == [1, 4] and other["grid"] == [3, 3]
    last = TINY.depth - 1
    with torch.inference_mode():
        grids = [service.model.get_patch_features(service.prepare(ImageRequest(d, {})).tensor[None], last)[0] for d in (PNG, second)]
    target = grids[0][1 * 5 + 4]  # (D,) the first image's patch (row 1, column 4) of its 3x5 grid
    for doc, features in zip((first, other), grids, strict=True):
        expected = F.cosine_similarity(features, target[None], dim=-1).reshape(doc["grid"]).numpy()
        np.testing.assert_allclose(np.asarray(doc["similarity"])[0], expected, atol=1e-4)
    expected = reference_similarity(service.model, PNG, last, point, 48)
    np.testing.assert_allclose(np.asarray(first["similarity"])[0], expected, atol=1e-4)
    instances = [{"data": images[0], "method": "similarity", "point": "70,20"}, {"data": images[1], "method": "similarity", "point": "5,5"}]
    (reply,) = answer(service, [{"body": {"instances": instances}}])
    assert reply.status == 400
    assert "item 1: point=5,5 differs from the first image's point=70,20" in orjson.loads(reply.body)["error"]


def test_similarity_in_every_format_and_protocol() -> None:
    service = service_of(TINY, backbone_state(seed=1))
    fields = {"method": "similarity", "point": "20,20", "features": "true", "upsample": "false"}
    b64 = base64.b64encode(PNG).decode()
    v2_input = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}
    plain, npz, npy, v1, v2 = answer(
        service,
        [
            {"data": PNG, **fields},
            {"data": PNG, **fields, "format": "npz"},
            {"data": PNG, **{k: v for k, v in fields.items() if k != "features"}, "format": "npy"},
            {"body": {"instances": [{"data": b64, **fields}]}},
            {"body": {"inputs": [v2_input], "parameters": {**fields, "binary_data_output": True}}},
        ],
    )
    doc = orjson.loads(plain.body)
    similarity, features = np.asarray(doc["similarity"], np.float32), np.asarray(doc["features"], np.float16)
    assert list(doc)[-2:] == ["similarity", "features"] and features.shape == (TINY.embed_dim, 3, 5)
    with np.load(io.BytesIO(npz.body)) as arrays:
        assert list(arrays.files) == ["similarity", "meta", "features"] and arrays["features"].dtype == np.float16
        np.testing.assert_array_equal(arrays["features"], features)
        np.testing.assert_allclose(arrays["similarity"], similarity, rtol=1e-6)
    np.testing.assert_allclose(np.load(io.BytesIO(npy.body)), similarity, rtol=1e-6)
    assert json.loads(npy.headers["X-Attention-Meta"])["patch"] == [1, 1]
    assert orjson.loads(v1.body)["predictions"][0]["patch"] == [1, 1]
    length = int(v2.headers["Inference-Header-Content-Length"])
    outputs = json.loads(v2.body[:length])["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [
        ("similarity", "FP32", [1, 3, 5]),
        ("features", "FP16", [TINY.embed_dim, 3, 5]),
    ]
    assert outputs[0]["parameters"]["point"] == "20,20" and outputs[0]["parameters"]["patch"] == "1,1"
    raw = v2.body[length:]
    np.testing.assert_allclose(
        np.frombuffer(raw[: outputs[0]["parameters"]["binary_data_size"]], np.float32).reshape(1, 3, 5), similarity, rtol=1e-6
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"method": "similarity"}, "method=similarity needs point=x,y"),
        ({"method": "similarity", "point": "80,10"}, "point=80,10 is outside the processed image, 80 pixels wide and 48 high"),
        ({"method": "similarity", "point": "10,48"}, "give x < 80 and y < 48"),
        ({"method": "similarity", "point": "10"}, "point='10' is not x,y"),
        ({"method": "similarity", "point": "-1,3"}, "pixel coordinates are not negative"),
        ({"point": "10,10"}, "point applies to method=similarity only (method=attention)"),
        ({"method": "rollout", "features": "true"}, "features applies to method=similarity or method=pca only (method=rollout)"),
        ({"method": "similarity", "point": "1,1", "heads": "0"}, "heads does not apply to method=similarity"),
        ({"method": "similarity", "point": "1,1", "mask": "0.5"}, "mask does not apply to method=similarity"),
        ({"method": "similarity", "point": "1,1", "features": "true", "format": "npy"}, "format=npy carries one array, the similarity"),
    ],
)
def test_bad_similarity_requests_name_the_option(fields: dict, message: str) -> None:
    service = service_of(TINY)
    (reply,) = answer(service, [{"data": PNG, **fields}])
    assert reply.status == 400 and message in orjson.loads(reply.body)["error"]


def test_points_share_one_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    service = service_of(TINY)
    calls = []
    forward = service.model.get_patch_features
    monkeypatch.setattr(service.model, "get_patch_features", lambda x, *a: calls.append(x.shape[0]) or forward(x, *a))
    replies = answer(service, [{"data": PNG, "method": "similarity", "point": point} for point in ("0,0", "40,20", "79,47")])
    assert [r.status for r in replies] == [200] * 3 and calls == [3]
    peaks = [np.unravel_index(np.argmax(orjson.loads(r.body)["similarity"][0]), (48, 80)) for r in replies]
    assert [(int(y) // 16, int(x) // 16) for y, x in peaks] == [(0, 0), (1, 2), (2, 4)]


@pytest.mark.parametrize("fmt", ["json", "npz", "npy"])
def test_client_draws_the_similarity_with_its_point(fmt: str, tmp_path) -> None:
    service = service_of(TINY, brightness_seeking_state())
    image = np.full((48, 96, 3), 30, np.uint8)
    image[:, 48:] = 225
    data = encode(image)
    (reply,) = answer(service, [{"data": data, "method": "similarity", "point": "70,20", "upsample": "false", "format": fmt}])
    doc = response.decode_body(reply.body, reply.content_type, reply.headers.get("X-Attention-Meta"))
    result = response.parse_response(doc).with_image(data)
    assert result.grid.shape == (1, 3, 6) and result.meta["patch"] == [1, 4] and "similarity" not in result.meta
    assert result.title.startswith("dino_vitt16  similarity to patch (1, 4) at x=70, y=20, layer 11")
    figure = result.figure(mask=0.6)  # masks are not drawn on signed similarity maps
    markers = [line for ax in figure.axes for line in ax.lines if line.get_marker() == "P"]
    assert [tuple(m.get_xydata()[0]) for m in markers] == [(70.0, 20.0)] * 3
    assert not [ax for ax in figure.axes if ax.get_title().endswith("of mass")]
    args = cli.parse_args(["img.png", "--method", "similarity", "--point", "70,20"])
    assert cli.option_fields(args) == {"upsample": "false", "method": "similarity", "point": "70,20"}
