"""KServe: the storage layout, native v1/v2 protocol answers, and TorchServe's own envelopes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http
import tritonclient.utils

from scripts import KSERVE_TORCHSERVE_PORT, archive, kserve_bundle
from scripts.serve import read_properties
from testkit.checkpoints import encode, random_rgb
from testkit.torchserve import PrivateServer, TorchServe

from .conftest import NAME, Served

TIMEOUT = 120
IMAGE = encode(random_rgb(48, 80, seed=9))
B64 = base64.b64encode(IMAGE).decode()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    assert archive.main(["--model", "vit_tiny", "--patch", "16", "--weights", "random", "--export-path", str(store)]) == 0
    return kserve_bundle.bundle(NAME, store, tmp_path_factory.mktemp("kserve") / "bundle")


def test_bundle_layout(bundle: Path) -> None:
    assert (bundle / "model-store" / f"{NAME}.mar").is_file() and (bundle / "config" / "metrics.yaml").is_file()
    props = read_properties(bundle / "config" / "config.properties")
    assert props["inference_address"] == f"http://0.0.0.0:{KSERVE_TORCHSERVE_PORT}" and props["model_store"] == "/mnt/models/model-store"
    assert props["enable_envvars_config"] == "false" and props["metrics_mode"] == "prometheus"
    model = json.loads(props["model_snapshot"])["models"][NAME]["1.0"]
    assert model["marName"] == f"{NAME}.mar" and model["defaultVersion"] is True
    assert {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"} <= set(model)


@pytest.fixture(scope="module")
def kserve_server(served: Served) -> PrivateServer:
    """The session's TorchServe: its inference API answers KServe's native /v1 and /v2 routes too.
    (The bundle's own config is served in ``test_torchserve_envelopes``.)"""
    return served.server


def reference(kserve_server: PrivateServer, **options) -> dict:
    reply = requests.post(kserve_server.url(NAME), files={"data": IMAGE}, data=options, timeout=TIMEOUT)
    assert reply.status_code == 200
    return reply.json()


def test_native_v2_gives_proper_tensors(kserve_server: PrivateServer) -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}],
        "parameters": {"scale": 1, "upsample": False, "precision": "bf16"},
    }
    reply = requests.post(f"{kserve_server.props['inference_address']}/v2/models/{NAME}/infer", json=body, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text[:300]
    doc = reply.json()
    assert doc["model_name"] == NAME and doc["id"] == "req-1"
    (output,) = doc["outputs"]
    assert output["name"] == "attention" and output["datatype"] == "FP32" and output["shape"] == [3, 3, 5]
    params = output["parameters"]
    assert params["image_size"] == "48,80" and params["model"] == "dino_vitt16" and params["upsampled"] is False
    expected = reference(kserve_server, scale="1", upsample="false", precision="bf16")
    # the precision that ran (bf16 where native, else fp32) is named in the parameters and the header
    assert params["precision"] == expected["precision"] == reply.headers["X-Attention-Precision"]
    assert params["precision_requested"] == "bf16"
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(output["shape"]), np.asarray(expected["attention"]), atol=1e-7)


def test_native_v2_fp16_several_images_and_errors(kserve_server: PrivateServer) -> None:
    url = f"{kserve_server.props['inference_address']}/v2/models/{NAME}/infer"
    body = {
        "inputs": [
            {"name": "images", "shape": [2], "datatype": "BYTES", "data": [B64, B64], "parameters": {"scale": 1, "dtype": "float16"}}
        ]
    }
    outputs = requests.post(url, json=body, timeout=TIMEOUT).json()["outputs"]
    assert [o["name"] for o in outputs] == ["attention_0", "attention_1"]
    assert all(o["datatype"] == "FP16" and o["shape"] == [3, 48, 80] and len(o["data"]) == 3 * 48 * 80 for o in outputs)
    bad = requests.post(url, json={"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "base64" in bad.json()["error"]
    wrong_type = requests.post(url, json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, timeout=TIMEOUT)
    assert wrong_type.status_code == 400 and "BYTES" in wrong_type.json()["error"]


def test_native_v1(kserve_server: PrivateServer) -> None:
    body = {"instances": [{"data": B64, "upsample": False, "scale": 1}, {"image": {"b64": B64}, "heads": "1", "scale": 1}]}
    reply = requests.post(f"{kserve_server.props['inference_address']}/v1/models/{NAME}:predict", json=body, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text[:300]
    assert reply.headers["X-Attention-Precision"] == "fp32"
    first, second = reply.json()["predictions"]
    np.testing.assert_allclose(first["attention"], reference(kserve_server, scale="1", upsample="false")["attention"], atol=1e-7)
    assert second["heads"] == [1] and np.asarray(second["attention"]).shape == (1, 48, 80)


@pytest.mark.parametrize("envelope", ["kserve", "kservev2"])
def test_torchserve_envelopes(bundle: Path, envelope: str, torchserve: TorchServe) -> None:
    """With TorchServe's own envelope (what KServe's controller asks for) the handler still answers."""
    extra = {"metrics_config": str(bundle / "config" / "metrics.yaml"), "service_envelope": envelope}
    with torchserve(bundle / "model-store", NAME, config=bundle / "config" / "config.properties", extra=extra) as server:
        base = server.props["inference_address"]
        if envelope == "kserve":
            body = {"instances": [{"data": B64, "scale": 1, "upsample": False}]}
            reply = requests.post(f"{base}/v1/models/{NAME}:predict", json=body, timeout=TIMEOUT)
            assert reply.status_code == 200, reply.text[:300]
            (prediction,) = reply.json()["predictions"]
            assert prediction["image_size"] == [48, 80] and np.asarray(prediction["attention"]).shape == (3, 3, 5)
            assert prediction["precision"] == "fp32" == reply.headers["X-Attention-Precision"]
            bad = requests.post(f"{base}/v1/models/{NAME}:predict", json={"instances": [{"data": "!!"}]}, timeout=TIMEOUT)
            assert bad.status_code == 400 and "base64" in bad.text
        else:
            body = {
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64], "parameters": {"scale": 1, "upsample": False}}
                ]
            }
            reply = requests.post(f"{base}/v2/models/{NAME}/infer", json=body, timeout=TIMEOUT)
            assert reply.status_code == 200, reply.text[:300]
            (output,) = reply.json()["outputs"]
            assert output["datatype"] == "FP32" and len(output["data"]) == 3 * 3 * 5  # TorchServe flattens the shape
            assert reply.headers["X-Attention-Precision"] == "fp32"  # the one place this envelope names it


def triton(server: PrivateServer) -> tritonclient.http.InferenceServerClient:
    return tritonclient.http.InferenceServerClient(server.props["inference_address"].removeprefix("http://"), network_timeout=TIMEOUT)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_on_the_v2_route(kserve_server: PrivateServer, binary: bool) -> None:
    """A standard v2 client: JSON tensors (sent without a Content-Type) or the binary tensor extension
    (raw image bytes in, raw float32/bool tensors out), with our options as request parameters."""
    image = tritonclient.http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([IMAGE if binary else B64], dtype=object), binary_data=binary)
    outputs = None if binary else [tritonclient.http.InferRequestedOutput(n, binary_data=False) for n in ("attention", "masks")]
    params = {"scale": 1, "upsample": False, "mask": 0.6}
    result = triton(kserve_server).infer(NAME, [image], outputs=outputs, parameters=params)
    expected = reference(kserve_server, scale="1", upsample="false")
    np.testing.assert_allclose(result.as_numpy("attention"), np.asarray(expected["attention"]), atol=1e-7)
    assert result.as_numpy("masks").dtype == np.bool_ and result.as_numpy("masks").shape == (3, 3, 5)
    assert result.get_output("attention")["parameters"]["mask"] == 0.6
    if not binary:
        assert result.get_output("boxes") is None  # only the outputs asked for


def test_tritonclient_errors_name_the_option(kserve_server: PrivateServer) -> None:
    image = tritonclient.http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([B64], dtype=object), binary_data=False)
    with pytest.raises(tritonclient.utils.InferenceServerException, match="layer=99 is out of range"):
        triton(kserve_server).infer(NAME, [image], parameters={"layer": 99})


def test_v2_json_without_content_type(kserve_server: PrivateServer) -> None:
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [B64]}], "parameters": {"upsample": False, "scale": 1}}
    url = f"{kserve_server.props['inference_address']}/v2/models/{NAME}/infer"
    reply = requests.post(url, data=json.dumps(body).encode(), timeout=TIMEOUT)  # no Content-Type header
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json()["outputs"][0]["shape"] == [3, 3, 5]
