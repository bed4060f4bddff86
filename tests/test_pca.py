"""``method=pca``: the PCA colours of a block's normed patch features, its foreground rules, its basis
sent back for the same colours, through every protocol and on every family."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
import torch

from testkit.checkpoints import TINY, backbone_state, brightness_seeking_state, encode, random_rgb, tiny_replica
from testkit.handler import answer
from tests.support.services import tiny_service
from vitscope.attention import to_tensor
from vitscope.image import prepare_image
from vitscope.methods.pca import auto_foreground, principal_components
from vitscope.model.variants import Variant
from vitscope.model.vit import VisionTransformer
from vitscope.service import AttentionService
from vitscope_client import cli, draw, mirrors, response

PNG = encode(random_rgb(64, 96, seed=7))


def service_of(variant: Variant, state: dict[str, torch.Tensor] | None = None, short_side: int = 64) -> AttentionService:
    return tiny_service(variant, state, short_side=short_side)


def reference_features(model: VisionTransformer, data: bytes, short_side: int) -> np.ndarray:
    """Independently: the explicit reference blocks and the final norm, (n, D) float64."""
    p = model.patch_size
    image = prepare_image(data, patch_size=p, max_pixels=10**8, max_tokens=10**6, short_side=short_side)
    x = to_tensor(image.image, model.variant.mean, model.variant.std)[None]
    with torch.inference_mode():
        tokens, rope = model.prepare_tokens(x)
        for blk in model.blocks:
            tokens = blk(tokens, rope, explicit=True)
        return model.norm(tokens)[0, model.num_prefix_tokens :].double().numpy()


def pca_of(service: AttentionService, data: bytes, **fields: str) -> dict:
    (reply,) = answer(service, [{"data": data, "method": "pca", "upsample": "false", **fields}])
    doc = orjson.loads(reply.body)
    assert reply.status == 200, doc
    return doc


@pytest.mark.parametrize("name", ["dino_vitt16", "dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"])
def test_each_channel_is_a_principal_component_of_the_normed_features(name: str) -> None:
    variant = TINY if name == "dino_vitt16" else tiny_replica(name)
    service = service_of(variant, short_side=4 * variant.patch_size)
    doc = pca_of(service, PNG, foreground="none")
    h, w = doc["grid"]
    colours = np.asarray(doc["pca"], np.float64).reshape(3, h * w)
    features = reference_features(service.model, PNG, service.config.short_side)  # (n, D)
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for channel, component in zip(colours, vt[:3], strict=True):
        r = np.corrcoef(channel, centred @ component)[0, 1]
        assert abs(r) >= 0.999, (name, r)
    assert colours.min() == 0.0 and colours.max() == 1.0  # min-max scaled per channel
    assert (doc["method"], doc["foreground"], doc["pca_fit"]) == ("pca", "none", "image")
    assert np.asarray(doc["pca_basis"]).shape == (5, variant.embed_dim) and "features" not in doc


def bright_square(size: int = 96, square: tuple[slice, slice] = (slice(32, 64), slice(32, 64))) -> bytes:
    """A textured bright square (every patch a little different) on a textured dark ground."""
    rng = np.random.default_rng(1)
    image = rng.integers(10, 60, (size, size, 3)).astype(np.uint8)
    image[square] = rng.integers(170, 255, (square[0].stop - square[0].start, square[1].stop - square[1].start, 3))
    return encode(image)


def test_auto_foreground_is_the_object_and_two_textures_get_two_colours() -> None:
    """Constructed: the features carry the brightness; a bright square on a dark ground."""
    service = service_of(TINY, brightness_seeking_state(), short_side=96)
    data = bright_square()
    auto = pca_of(service, data, layer="0")
    foreground = mirrors.decode_masks(auto["foreground_mask"])
    expected = np.zeros((6, 6), bool)
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(foreground, expected)  # the square touches no border: it is the object
    colours = np.asarray(auto["pca"])  # (3, 6, 6)
    assert (colours[:, ~expected] == 0).all() and colours[:, expected].max() > 0  # black background
    everything = pca_of(service, data, layer="0", foreground="none")
    red = np.asarray(everything["pca"])[0]  # the first component: the one that tells the textures apart
    inside, outside = red[expected], red[~expected]
    assert (
        min(inside.min() - outside.max(), outside.min() - inside.max())
        < 0
        < max(inside.min() - outside.max(), outside.min() - inside.max())
    )
    assert abs(inside.mean() - outside.mean()) > 0.5  # two textures, two colours


def test_foreground_from_attention() -> None:
    service = service_of(TINY, brightness_seeking_state(), short_side=96)
    doc = pca_of(service, bright_square(), layer="0", foreground="attention", mask="0.9")
    foreground = mirrors.decode_masks(doc["foreground_mask"])
    assert foreground[2:4, 2:4].all() and doc["mask"] == 0.9  # block 0's [CLS] seeks the bright patches


def test_basis_sent_back_gives_the_same_colours() -> None:
    service = service_of(TINY, backbone_state(seed=3))
    first = pca_of(service, PNG)
    basis = np.asarray(first["pca_basis"], np.float32)
    again = pca_of(service, PNG)
    assert again == first  # deterministic signs: the same image, the same colours
    for sent in (basis.tolist(), base64.b64encode(basis.astype("<f4").tobytes()).decode()):
        (reply,) = answer(
            service, [{"body": {"image": base64.b64encode(PNG).decode(), "method": "pca", "upsample": False, "pca_basis": sent}}]
        )
        projected = orjson.loads(reply.body)
        assert reply.status == 200 and projected["pca_fit"] == "basis"
        np.testing.assert_allclose(projected["pca"], first["pca"], atol=1e-5)
    other = pca_of(service, encode(random_rgb(64, 96, seed=8)), pca_basis=base64.b64encode(basis.astype("<f4").tobytes()).decode())
    assert other["pca_fit"] == "basis" and np.min(other["pca"]) >= 0 and np.max(other["pca"]) <= 1


def test_pca_in_every_format_and_protocol() -> None:
    service = service_of(TINY, backbone_state(seed=3))
    b64 = base64.b64encode(PNG).decode()
    fields = {"method": "pca", "upsample": "false"}
    npz, v2 = answer(
        service,
        [
            {"data": PNG, **fields, "format": "npz", "features": "true"},
            {
                "body": {
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                    "parameters": {**fields, "binary_data_output": True},
                }
            },
        ],
    )
    with np.load(io.BytesIO(npz.body)) as arrays:
        assert list(arrays.files) == ["pca", "meta", "foreground_mask", "pca_basis", "features"]
        assert arrays["pca"].shape == (3, 4, 6) and arrays["foreground_mask"].dtype == bool and arrays["features"].dtype == np.float16
    length = int(v2.headers["Inference-Header-Content-Length"])
    outputs = orjson.loads(v2.body[:length])["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [
        ("pca", "FP32", [3, 4, 6]),
        ("foreground_mask", "BOOL", [4, 6]),
        ("pca_basis", "FP32", [5, TINY.embed_dim]),
    ]
    assert outputs[0]["parameters"]["foreground"] == "auto"


def images_request(images: list[bytes], **fields: object) -> dict:
    """A plain JSON request of several images sent together."""
    return {"body": {"images": [base64.b64encode(data).decode() for data in images], **fields}}


def test_joint_fit_shares_one_basis_across_the_images() -> None:
    """pca_fit=joint: one basis fitted on the union of the images' features; each image's colours are
    that basis' projections, scaled over the union (so no single image spans [0, 1] on its own)."""
    service = service_of(TINY, backbone_state(seed=3))
    second = encode(random_rgb(64, 64, seed=9))  # another size: a 4x4 grid
    (reply,) = answer(service, [images_request([PNG, second], method="pca", upsample=False, foreground="none", pca_fit="joint")])
    assert reply.status == 200, reply.body
    docs = orjson.loads(reply.body)["images"]
    assert [d["pca_fit"] for d in docs] == ["joint", "joint"] and [d["grid"] for d in docs] == [[4, 6], [4, 4]]
    assert docs[0]["pca_basis"] == docs[1]["pca_basis"]
    features = [reference_features(service.model, data, service.config.short_side) for data in (PNG, second)]
    union = np.concatenate(features)
    _, _, vt = np.linalg.svd(union - union.mean(axis=0), full_matrices=False)
    colours = np.concatenate([np.asarray(d["pca"], np.float64).reshape(3, -1) for d in docs], axis=1)  # (3, n0 + n1)
    for channel, component in zip(colours, vt[:3], strict=True):
        assert abs(np.corrcoef(channel, (union - union.mean(axis=0)) @ component)[0, 1]) >= 0.999
        assert channel.min() == 0.0 and channel.max() == 1.0  # over the union
    alone = [pca_of(service, data, foreground="none") for data in (PNG, second)]
    assert alone[0]["pca_basis"] != docs[0]["pca_basis"]  # a different fit than each image alone
    v2 = {
        "body": {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [base64.b64encode(d).decode() for d in (PNG, second)]}],
            "parameters": {"method": "pca", "upsample": False, "foreground": "none", "pca_fit": "joint"},
        }
    }
    (reply,) = answer(service, [v2])
    outputs = {o["name"]: o for o in orjson.loads(reply.body)["outputs"]}
    assert outputs["pca_basis_0"]["data"] == outputs["pca_basis_1"]["data"]
    np.testing.assert_allclose(outputs["pca_1"]["data"], np.ravel(docs[1]["pca"]), atol=1e-6)


@pytest.mark.parametrize(
    "request_fields, message",
    [
        ({"pca_fit": "joint"}, "pca_fit=joint fits one basis on several images, and this request has one"),
        ({"pca_fit": "joint", "pca_basis": [[0.0] * 192] * 5}, "pca_basis colours with a given basis and pca_fit=joint fits one"),
        ({"pca_fit": "sometimes"}, "pca_fit='sometimes' is not one of ['image', 'joint']"),
    ],
)
def test_bad_joint_requests_name_the_option(request_fields: dict, message: str) -> None:
    service = service_of(TINY)
    (reply,) = answer(service, [images_request([PNG], method="pca", **request_fields)])
    assert reply.status == 400 and message in orjson.loads(reply.body)["error"]


def test_joint_needs_one_block_and_a_list_answers_in_json() -> None:
    service = service_of(TINY)
    b64 = base64.b64encode(PNG).decode()
    instances = [{"data": b64, "method": "pca", "pca_fit": "joint", "layer": str(layer)} for layer in (0, 1)]
    (reply,) = answer(service, [{"body": {"instances": instances}}])
    assert reply.status == 400 and "pca_fit=joint needs the features of one block, and the images ask layers [0, 1]" in reply.body.decode()
    (reply,) = answer(service, [images_request([PNG, PNG], method="pca", format="npz")])
    assert reply.status == 400 and 'a JSON "images" list is answered in JSON' in orjson.loads(reply.body)["error"]
    for body, message in (
        ({"images": [b64], "image": b64}, 'give "image" (one base64 image) or "images"'),
        ({"images": []}, '"images" must be a non-empty list'),
        ({"images": [b64, "not base64!"]}, "item 1: "),
    ):
        (reply,) = answer(service, [{"body": body}])
        assert reply.status == 400 and message in orjson.loads(reply.body)["error"], body


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"foreground": "sky"}, "foreground='sky' is not one of ['auto', 'attention', 'none']"),
        ({"mask": "0.5"}, "mask=t applies to method=pca with foreground=attention only (foreground=auto)"),
        ({"pca_basis": "AAAAAA=="}, "pca_basis has 1 values in the shape [1], not [5, 192]"),
        ({"pca_basis": "AAAA"}, "pca_basis is malformed (buffer size must be a multiple of element size)"),
        ({"pca_basis": [[0.0] * 192] * 4}, "pca_basis has 768 values in the shape [4, 192], not [5, 192]"),
        ({"pca_basis": "not base64!"}, "pca_basis is malformed"),
        ({"pca_basis": [[float("nan")] * 192] * 5}, "pca_basis holds NaN or infinite values"),
        ({"format": "npy"}, "format=npy carries one array, the pca; method=pca also returns foreground_mask, pca_basis"),
        ({"heads": "0"}, "heads does not apply to method=pca"),
    ],
)
def test_bad_pca_requests_name_the_option(fields: dict, message: str) -> None:
    service = service_of(TINY)
    (reply,) = answer(service, [{"body": {"image": base64.b64encode(PNG).decode(), "method": "pca", **fields}}])
    assert reply.status == 400 and message in orjson.loads(reply.body)["error"]
    (other,) = answer(service, [{"data": PNG, "foreground": "none"}])
    assert orjson.loads(other.body)["error"] == "foreground applies to method=pca only (method=attention)"


def test_auto_foreground_rule_on_constructed_features() -> None:
    """The first component splits two groups of features; the group away from the border wins, whatever its sign."""
    h, w = 5, 7
    inner = np.zeros((h, w), bool)
    inner[1:4, 2:5] = True
    x = np.where(inner.ravel()[:, None], 1.0, -1.0) * np.ones((h * w, 4)) + 0.01 * np.random.default_rng(0).random((h * w, 4))
    np.testing.assert_array_equal(auto_foreground(x, h, w), inner.ravel())
    np.testing.assert_array_equal(auto_foreground(-x, h, w), inner.ravel())
    mean, components = principal_components(x, 3)
    assert np.allclose(mean, x.mean(axis=0)) and (components[np.arange(3), np.abs(components).argmax(axis=1)] > 0).all()


@pytest.mark.parametrize("fmt", ["json", "npz"])
def test_client_draws_the_colours_and_the_foreground(fmt: str, tmp_path) -> None:
    service = service_of(TINY, brightness_seeking_state(), short_side=96)
    data = bright_square()
    (reply,) = answer(service, [{"data": data, "method": "pca", "layer": "0", "upsample": "false", "format": fmt}])
    result = response.parse_response(response.decode_body(reply.body, reply.content_type)).with_image(data)
    assert result.grid.shape == (3, 6, 6) and result.arrays["foreground_mask"].shape == (6, 6)
    assert result.arrays["pca_basis"].shape == (5, TINY.embed_dim) and "pca" not in result.meta
    assert result.title.startswith("dino_vitt16  PCA colours of layer 0's features (foreground auto, fitted on this image)")
    figure = result.figure()
    assert [ax.get_title() for ax in figure.axes] == ["image 96x96", "PCA colours", "over image"]
    assert sum(len(ax.collections) for ax in figure.axes) >= 2  # the foreground outline on the colours and over the image
    colours = draw.colours_of(result)
    assert colours.shape == (96, 96, 3) and colours[:32].max() == 0 and colours[32:64, 32:64].max() > 0  # black ground
    saved = tmp_path / ("answer." + fmt)
    saved.write_bytes(reply.body)
    image = tmp_path / "square.png"
    image.write_bytes(data)
    assert cli.main(["--from-file", str(saved), "--image", str(image), "--out", str(tmp_path), "--save-heads"]) == 0
    assert (tmp_path / "square_attention.png").is_file() and (tmp_path / "square" / "pca.png").is_file()
