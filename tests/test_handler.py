"""The TorchServe handler in process (TorchServe's own Context, no Java): codec choice per row,
per-row status, content type, headers and metrics, one forward pass across protocols, envelopes,
initialisation from a context, and responses pinned byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from handler.vitscope_handler import AttentionHandler
from testkit.checkpoints import TINY, backbone_state, encode, save, smooth_rgb
from testkit.handler import answer, handler_for, mock_context, reply_of
from tests.support.services import tiny_service
from vitscope.methods import METHODS
from vitscope.protocols import KSERVE_V1, KSERVE_V2, PLAIN, V1_ENVELOPE, V2_ENVELOPE, route
from vitscope.service import AttentionService

PNG = encode(smooth_rgb(48, 64))
B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def uniform() -> AttentionService:
    """vit_tiny whose last block has no query: its [CLS] attention is exactly 1/N on every CPU."""
    state = backbone_state(seed=3)
    state["blocks.11.attn.qkv.weight"][: TINY.embed_dim] = 0
    state["blocks.11.attn.qkv.bias"][: TINY.embed_dim] = 0
    return tiny_service(TINY, state, weights="pinned.pth@sha256:0", short_side=32)


# Made by the code before the request path was split into codecs (commit 880fd4d), same inputs; re-pinned
# when "model" became the hub name (dino_vitt16, was vit_tiny): decoded, old and new bodies differ in that value only.
PINNED = [
    (({"body": PNG}, None), 200, "application/json", "81934e6c0ea90ece46e88e78b93c94c2c2f54de1dc294a57689789fb4c67ffe3"),
    (
        ({"data": PNG, "heads": "0,2", "upsample": "false", "format": "npy"}, None),
        200,
        "application/x-npy",
        "b82cd8dea174791c45c52213ae4cb2a8a117c50bf935dbb0cebe1e101135374f",
    ),
    (
        ({"body": {"image": B64, "dtype": "float16", "format": "npz", "layer": -1}}, None),
        200,
        "application/x-npz",
        "bafd4de7789527df698ecfb311e28151b1e93c7480d56307f3f8fa6223796224",
    ),
    (({"body": PNG}, "application/x-npz"), 200, "application/x-npz", "881dbacaa7759fb586c73c928995ac1ef56e0d67d05534f0ae4fbb5c7d9feb71"),
    (({"data": PNG, "layer": "99"}, None), 400, "application/json", "cea38f1d2589381a2409ccc47d32577a52a2dc445631a94b98a759ea335a9d34"),
    (
        ({"body": {"instances": [{"data": B64, "upsample": False}, B64]}}, None),
        200,
        "application/json",
        "1f442bccd32d931ead2c1ca7fe413a84d8c39ff7c07a2a6b1736bbaabad866a0",
    ),
    (
        (
            {
                "body": {
                    "id": "r1",
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}],
                    "parameters": {"upsample": False, "dtype": "float16"},
                }
            },
            None,
        ),
        200,
        "application/json",
        "220769cf024ad2e7bef0532271d27ac36acceea2bd6955c0ccd5a555ede14c62",
    ),
    (
        ({"body": {"instances": [{"data": "!!"}]}}, None),
        400,
        "application/json",
        "6c4b7044ec83f905e8a17f15ad536bcf888478ad387d5933d9fd4970331dcd87",
    ),
]
PINNED_NPY_META = (
    '{"model":"dino_vitt16","patch_size":16,"layer":11,"num_heads":3,"heads":[0,2],"weights":"pinned.pth@sha256:0",'
    '"input_size":[48,64],"resized_size":[32,42],"image_size":[32,32],"grid":[2,2],"upsampled":false,'
    '"precision":"fp32","precision_requested":"fp32","dtype":"float32"}'
)


def test_responses_are_byte_identical_to_the_pinned_ones(uniform: AttentionService) -> None:
    rows = [row for (row, _), *_ in PINNED]
    replies = answer(uniform, rows, [accept for (_, accept), *_ in PINNED])
    for reply, (_, status, content_type, digest) in zip(replies, PINNED, strict=True):
        assert (reply.status, reply.content_type) == (status, content_type)
        assert hashlib.sha256(reply.body).hexdigest() == digest, reply.body[:300]
        assert reply.headers.get("X-Attention-Precision") == ("fp32" if status == 200 else None)
    assert replies[1].headers["X-Attention-Meta"] == PINNED_NPY_META
    assert orjson.loads(replies[4].body) == {"error": "layer=99 is out of range: this model has 12 blocks (0..11, or -1 for last)"}
    assert orjson.loads(replies[7].body)["error"].startswith('item 0: "image" is not valid base64')
    np.testing.assert_array_equal(np.asarray(orjson.loads(replies[0].body)["attention"], np.float32), np.full((3, 32, 32), 0.2, np.float32))


@pytest.mark.parametrize(
    "row, codec",
    [
        ({"body": PNG}, PLAIN),
        ({"data": PNG, "layer": "3"}, PLAIN),
        ({"body": {"image": B64}}, PLAIN),
        ({"body": b'{"image": "..."}'}, PLAIN),  # JSON TorchServe did not decode: the plain codec parses it
        ({"body": {"instances": [B64]}}, KSERVE_V1),
        ({"body": {"inputs": []}}, KSERVE_V2),
        ({"data": B64, "layer": 3}, V1_ENVELOPE),  # what TorchServe's kserve envelope hands over
        (B64, V1_ENVELOPE),
        ({"name": "image", "shape": [1], "datatype": "BYTES", "data": B64}, V2_ENVELOPE),  # kservev2 envelope
    ],
)
def test_codec_is_chosen_from_the_row_alone(row: object, codec: object) -> None:
    assert route(row)[0] is codec


def test_each_row_gets_its_own_status_type_headers_and_metrics(uniform: AttentionService) -> None:
    rows = [
        {"data": PNG, "format": "npy"},
        {"body": b"not an image"},
        {"body": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}]}},
        {"body": {"instances": "not a list"}},
    ]
    context = mock_context([{}, {}, {}, {"accept": "application/x-npz"}])
    bodies = handler_for(uniform).handle(rows, context)
    replies = [reply_of(context, i, body) for i, body in enumerate(bodies)]
    assert [r.status for r in replies] == [200, 400, 200, 400]
    assert [r.content_type for r in replies] == ["application/x-npy", "application/json", "application/json", "application/json"]
    assert "X-Attention-Meta" in replies[0].headers and replies[2].headers["X-Attention-Precision"] == "fp32"
    assert "not an image" in orjson.loads(bodies[1])["error"]
    assert context.request_processor[1].get_response_status_phrase() == "Bad Request"
    metrics = context.metrics.metrics
    assert [dims[-1] for _, dims in metrics["DinoRejectedRequests"].values] == ["image", "payload"]
    assert len(metrics["DinoForwardTime"].values) == 2 and len(metrics["DinoResponseBytes"].values) == 2
    assert metrics["DinoResponseBytes"].values[0][0] == len(bodies[0])


def test_rows_of_different_protocols_share_one_forward(uniform: AttentionService, monkeypatch) -> None:
    calls = []
    forward = uniform.model.get_cls_attention_layers
    monkeypatch.setattr(uniform.model, "get_cls_attention_layers", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    rows = [
        {"body": PNG},
        {"body": {"instances": [B64]}},
        {"body": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}]}},
        {"data": PNG, "layer": "3"},  # another layer: a forward of its own
    ]
    assert [r.status for r in answer(uniform, rows)] == [200, 200, 200, 200]
    assert sorted(calls) == [1, 3]


def test_envelope_rows_answer_one_request(uniform: AttentionService) -> None:
    """TorchServe's envelopes unwrap one HTTP request into rows: status and headers go to request 0."""
    rows = [{"data": B64, "upsample": False}, {"data": "!!"}]
    context = mock_context([{}])
    results = handler_for(uniform).handle(rows, context)
    assert results[0]["attention"] == np.full((3, 2, 2), 0.2, np.float32).tolist() and results[0]["precision"] == "fp32"
    assert "not valid base64" in results[1]["error"]
    assert context.request_processor[0].get_response_status_code() == 400
    assert context.request_processor[0].get_response_header("X-Attention-Precision") == "fp32"
    v2 = handler_for(uniform).handle([{"name": "image", "datatype": "BYTES", "shape": [1], "data": B64}], mock_context([{}]))
    assert isinstance(v2[0], np.ndarray) and v2[0].shape == (3, 32, 32)


def test_initialize_from_the_context(tmp_path: Path) -> None:
    save(backbone_state(seed=1), tmp_path / "dino_backbone.pth")
    context = mock_context([{}], model_dir=tmp_path, serialized_file="dino_backbone.pth", handler_settings={"model": "dino_vitt16"})
    handler = AttentionHandler()
    handler.initialize(context)
    assert handler.initialized and handler.service is not None
    assert handler.service.device == torch.device("cpu") and handler.service.config.weights.startswith("dino_backbone.pth@sha256:")
    (body,) = handler.handle([{"body": PNG}], context)
    assert orjson.loads(body)["model"] == "dino_vitt16"


def binary_v2(document: dict, *elements: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 request with the binary tensor extension: (body, headers)."""
    tensor = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    document["inputs"][0]["parameters"] = {"binary_data_size": len(tensor)}
    header = orjson.dumps(document)
    return header + tensor, {"Inference-Header-Content-Length": str(len(header))}


def test_v2_binary_tensor_extension_in_and_out(uniform: AttentionService) -> None:
    document = {
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES"}],
        "parameters": {"binary_data_output": True, "upsample": False},
        "id": "b1",
    }
    body, headers = binary_v2(document, PNG, B64.encode())  # raw image bytes, or base64 text as bytes
    context = mock_context([headers])
    (reply_body,) = handler_for(uniform).handle([{"body": body}], context)
    reply = reply_of(context, 0, reply_body)
    assert reply.status == 200 and reply.content_type == "application/octet-stream"
    length = int(reply.headers["Inference-Header-Content-Length"])
    header = orjson.loads(reply_body[:length])
    assert header["id"] == "b1" and [o["name"] for o in header["outputs"]] == ["attention_0", "attention_1"]
    offset = length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        maps = np.frombuffer(reply_body[offset : offset + size], np.float32).reshape(output["shape"])
        np.testing.assert_array_equal(maps, np.full((3, 2, 2), 0.2, np.float32))
        offset += size
    assert offset == len(reply_body) and "data" not in header["outputs"][0]


def test_v2_json_body_without_content_type_is_v2(uniform: AttentionService) -> None:
    """TorchServe hands an undeclared JSON body over as bytes: it is still a v2 document."""
    document = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}], "parameters": {"upsample": False}}
    assert route({"body": orjson.dumps(document)})[0] is KSERVE_V2
    (reply,) = answer(uniform, [{"body": orjson.dumps(document)}])
    assert reply.status == 200 and orjson.loads(reply.body)["outputs"][0]["shape"] == [3, 2, 2]


@pytest.mark.parametrize("size, message", [(10**6, "does not fit"), (-1, "does not fit"), ("x", "does not fit")])
def test_v2_binary_sizes_are_checked(uniform: AttentionService, size: object, message: str) -> None:
    body, headers = binary_v2({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}, PNG)
    document = orjson.loads(body[: int(headers["Inference-Header-Content-Length"])])
    document["inputs"][0]["parameters"]["binary_data_size"] = size
    header = orjson.dumps(document)
    context = mock_context([{"Inference-Header-Content-Length": str(len(header))}])
    (reply_body,) = handler_for(uniform).handle([{"body": header + body[len(body) - len(PNG) - 4 :]}], context)
    assert reply_of(context, 0, reply_body).status == 400 and message in orjson.loads(reply_body)["error"]


def test_a_json_body_is_parsed_once(uniform: AttentionService, monkeypatch) -> None:
    """route() hands the parsed document on: neither a v2 nor a plain JSON body is parsed twice."""
    from vitscope.protocols import base as protocols  # json.loads, as every codec calls it

    parsed: list[int] = []
    loads = protocols.json.loads
    monkeypatch.setattr(protocols.json, "loads", lambda data, *a, **k: parsed.append(len(data)) or loads(data, *a, **k))
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}], "parameters": {"upsample": False}}
    replies = answer(uniform, [{"body": orjson.dumps(v2)}, {"body": orjson.dumps({"image": B64, "upsample": False})}])
    assert [r.status for r in replies] == [200, 200] and len(parsed) == 2


def test_describe_handle_answers_torchserves_describe_request(uniform: AttentionService) -> None:
    """TorchServe's frontend asks with the request header ``describe: True``; the handler answers
    the service's description as JSON text instead of running the batch."""
    context = mock_context([{"describe": "True"}])
    (body,) = handler_for(uniform).handle([{"body": b""}], context)
    described = json.loads(body)
    assert described == json.loads(json.dumps(uniform.description()))
    assert [m["name"] for m in described["methods"]] == list(METHODS)
    assert described["model"]["layers"] == 12 and described["model"]["heads"] == 3 and described["model"]["patch_size"] == 16
    assert not context.metrics.metrics  # nothing was computed
