"""The same archive on KServe's model server (kserve_engine) and on TorchServe: the same answers,
through real clients (tritonclient.http JSON and binary, KServe's own REST client), on every route.

The KServe server runs the Dockerfile's entry point and arguments, outside a container, on the
.mar the session's TorchServe serves.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from scripts import REPO, background
from scripts.serve_kserve import model_folder
from testkit.checkpoints import encode, random_rgb
from testkit.torchserve import free_ports
from vitscope.methods import METHODS, all_outputs

from .conftest import NAME, Served

TIMEOUT = 120


@dataclass
class Engine:
    base: str  # http://127.0.0.1:<port>
    host: str  # 127.0.0.1:<port>, for tritonclient


def dockerfile_command(model_dir: Path, port: int) -> list[str]:
    """The Dockerfile's ENTRYPOINT + CMD, with this interpreter, ``model_dir`` for /mnt/models, and
    loopback on ``port`` for 0.0.0.0:8080."""
    text = (REPO / "Dockerfile").read_text()
    entry, cmd = (json.loads(re.findall(rf"^{word} (\[.*\])$", text, re.MULTILINE)[0]) for word in ("ENTRYPOINT", "CMD"))
    replace = {"python": sys.executable, "/mnt/models": str(model_dir), "0.0.0.0": "127.0.0.1", "8080": str(port)}
    return [replace.get(part, part) for part in [*entry, *cmd, "--model_name", NAME]]


@pytest.fixture(scope="module")
def engine(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    port = free_ports(1)[0]
    folder = model_folder(Path(served.server.props["model_store"]), NAME, tmp_path_factory.mktemp("models"))
    pid_file = tmp_path_factory.mktemp("kserve") / "kserve.pid"
    base = f"http://127.0.0.1:{port}"
    background.start(dockerfile_command(folder, port), pid_file, f"{base}/v2/models/{NAME}/ready", timeout=TIMEOUT)
    try:
        yield Engine(base, f"127.0.0.1:{port}")
    finally:
        background.stop(pid_file)


def torchserve_host(served: Served) -> str:
    return served.server.props["inference_address"].removeprefix("http://")


def image_b64(seed: int = 0, size: tuple[int, int] = (64, 96)) -> str:
    return base64.b64encode(encode(random_rgb(*size, seed=seed))).decode()


def infer(host: str, b64: str, binary: bool, **parameters: object) -> triton.InferResult:
    client = triton.InferenceServerClient(host, network_timeout=TIMEOUT)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b64], dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput("attention", binary_data=binary)]
    return client.infer(NAME, [tensor], parameters=parameters, outputs=outputs)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("parameters", [{}, {"dtype": "float16", "layer": 3, "heads": "0,2"}, {"method": "rollout", "upsample": False}])
def test_same_tensor_as_torchserve_to_the_last_bit(served: Served, engine: Engine, binary: bool, parameters: dict) -> None:
    b64 = image_b64(seed=3)
    ours, theirs = infer(engine.host, b64, binary, **parameters), infer(torchserve_host(served), b64, binary, **parameters)
    a, b = ours.as_numpy("attention"), theirs.as_numpy("attention")
    assert a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()
    assert ours.get_output("attention") == theirs.get_output("attention")  # shape, datatype, metadata parameters
    assert a.dtype == (np.float16 if parameters.get("dtype") == "float16" else np.float32)


def test_same_json_body_and_v1(served: Served, engine: Engine) -> None:
    document = {
        "id": "r7",
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [image_b64(1), image_b64(2, (40, 40))]}],
        "parameters": {"upsample": False, "mask": 0.6, "boxes": True},
    }
    route = f"/v2/models/{NAME}/infer"
    ours = requests.post(engine.base + route, json=document, timeout=TIMEOUT)
    theirs = requests.post(served.server.props["inference_address"] + route, json=document, timeout=TIMEOUT)
    assert ours.status_code == theirs.status_code == 200
    assert ours.content == theirs.content  # the same codec wrote both bodies
    assert ours.headers["X-Attention-Precision"] == theirs.headers["X-Attention-Precision"] == "fp32"
    v1 = {"instances": [{"data": image_b64(4), "upsample": False, "heads": "1"}]}
    ours = requests.post(f"{engine.base}/v1/models/{NAME}:predict", json=v1, timeout=TIMEOUT)
    theirs = requests.post(f"{served.server.props['inference_address']}/v1/models/{NAME}:predict", json=v1, timeout=TIMEOUT)
    assert ours.status_code == theirs.status_code == 200 and ours.json() == theirs.json()


@pytest.mark.parametrize(
    "parameters",
    [{"method": "pca", "pca_fit": "joint", "foreground": "none"}, {"method": "similarity", "point": "20,10"}],
    ids=["pca-joint", "similarity-across"],
)
def test_images_sent_together_on_both_engines(served: Served, engine: Engine, parameters: dict) -> None:
    """The elements of one v2 input are seen together: one PCA basis, or every map against the first
    image's patch; both engines answer alike."""
    document = {
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [image_b64(1), image_b64(2, (40, 40))]}],
        "parameters": {"upsample": False, "short_side": 48, **parameters},
    }
    route = f"/v2/models/{NAME}/infer"
    ours = requests.post(engine.base + route, json=document, timeout=TIMEOUT)
    theirs = requests.post(served.server.props["inference_address"] + route, json=document, timeout=TIMEOUT)
    assert ours.status_code == theirs.status_code == 200, ours.text
    assert ours.content == theirs.content
    outputs = {o["name"]: o for o in ours.json()["outputs"]}
    if parameters["method"] == "pca":
        assert outputs["pca_basis_0"]["data"] == outputs["pca_basis_1"]["data"]
        assert outputs["pca_0"]["parameters"]["pca_fit"] == "joint"
    else:
        assert outputs["similarity_0"]["parameters"]["patch"] == outputs["similarity_1"]["parameters"]["patch"] == "0,1"
    single = {**document, "inputs": [{**document["inputs"][0], "shape": [1], "data": [image_b64(1)]}]}
    if parameters["method"] == "pca":  # joint with one image: refused alike
        ours = requests.post(engine.base + route, json=single, timeout=TIMEOUT)
        assert ours.status_code == 400 and "pca_fit=joint fits one basis on several images" in ours.json()["error"]


@pytest.mark.parametrize(
    "route, document, status, message",
    [
        ("v2", {"parameters": {"layer": 99}}, 400, "layer=99 is out of range"),
        ("v2", {"parameters": {"size": "4096x4096"}}, 413, "max_tokens"),
        ("v2", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}, 400, "not valid base64"),
        ("v1", {"instances": [{"data": "aGVsbG8="}]}, 400, "not an image"),
    ],
)
def test_same_errors(served: Served, engine: Engine, route: str, document: dict, status: int, message: str) -> None:
    if route == "v2":
        document = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image_b64()]}], **document}
    path = f"/v2/models/{NAME}/infer" if route == "v2" else f"/v1/models/{NAME}:predict"
    ours = requests.post(engine.base + path, json=document, timeout=TIMEOUT)
    theirs = requests.post(served.server.props["inference_address"] + path, json=document, timeout=TIMEOUT)
    assert ours.status_code == theirs.status_code == status
    assert ours.json() == theirs.json() and message in ours.json()["error"]
    assert requests.get(f"{engine.base}/v2/models/{NAME}/ready", timeout=TIMEOUT).json()["ready"]  # still serving


def test_metrics_count_refusals_and_admitted_cost(engine: Engine) -> None:
    """KServe's /metrics carries ours: refusals by reason, the admitted requests' estimated cost, the queue."""
    route = f"{engine.base}/v2/models/{NAME}/infer"
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [image_b64()]}
    assert requests.post(route, json={"inputs": [image], "parameters": {"timeout": 1}}, timeout=TIMEOUT).status_code == 504
    assert requests.post(route, json={"inputs": [image], "parameters": {"upsample": False}}, timeout=TIMEOUT).status_code == 200
    text = requests.get(f"{engine.base}/metrics", timeout=TIMEOUT).text
    assert re.search(rf'dino_rejected_requests_total\{{model_name="{NAME}",reason="deadline"\}} [1-9]', text), text[-3000:]
    assert re.search(rf'dino_admitted_cost_seconds_count\{{model_name="{NAME}"\}} [1-9]', text)
    assert f'dino_queue_length{{model_name="{NAME}"}} 0.0' in text


def test_health_and_metadata_with_real_clients(engine: Engine) -> None:
    client = triton.InferenceServerClient(engine.host)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    metadata = client.get_model_metadata(NAME)
    assert metadata["name"] == NAME and metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == [o.name for o in all_outputs()]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]}["boxes"] == [-1, 4]
    described = json.loads(metadata["parameters"]["description"])  # the registry, as TorchServe's describe API serves it
    assert [m["name"] for m in described["methods"]] == list(METHODS) and described["model"]["name"] == NAME
    assert not client.is_model_ready("no_such_model")
    assert requests.get(f"{engine.base}/v1/models/{NAME}", timeout=TIMEOUT).json() == {"name": NAME, "ready": True}


def test_kserves_own_rest_client(engine: Engine) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def ask() -> object:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT))
        try:
            tensor = InferInput("image", [1], "BYTES", [image_b64(5)])
            request = InferRequest(model_name=NAME, infer_inputs=[tensor], parameters={"upsample": False})
            ready = await client.is_model_ready(engine.base, NAME)
            return ready, await client.infer(engine.base, request, model_name=NAME)
        finally:
            await client.close()

    ready, response = asyncio.run(ask())
    assert ready
    attention = response.outputs[0]
    assert attention.name == "attention" and attention.datatype == "FP32" and attention.shape == [3, 30, 45]  # 64x96 -> 480x720
    assert attention.parameters["model"] == NAME


def test_concurrent_requests_are_all_answered(engine: Engine) -> None:
    def one(seed: int) -> tuple[int, list[int]]:
        result = infer(engine.host, image_b64(seed, (32 + 16 * (seed % 3), 48)), False, upsample=False, scale=1)
        array = result.as_numpy("attention")
        return seed, list(array.shape) if array is not None else []

    with ThreadPoolExecutor(8) as pool:
        shapes = dict(pool.map(one, range(16)))
    assert shapes == {seed: [3, 2 + seed % 3, 3] for seed in range(16)}


def test_make_serve_kserve_starts_and_stop_stops(served: Served, tmp_path: Path, monkeypatch) -> None:
    from scripts import serve_kserve

    monkeypatch.setattr(serve_kserve, "PID_FILE", tmp_path / "kserve.pid")
    port = free_ports(1)[0]
    url = serve_kserve.start(NAME, port, Path(served.server.props["model_store"]))
    try:
        assert url == f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
        assert triton.InferenceServerClient(f"127.0.0.1:{port}").is_model_ready(NAME)
    finally:
        assert serve_kserve.stop()
    with pytest.raises(FileNotFoundError, match="make archive"):
        serve_kserve.model_folder(tmp_path, "dinov2_vits14")
    assert subprocess.run([sys.executable, "-m", "kserve_engine", "--model_dir", str(tmp_path)], capture_output=True).returncode == 2


def test_explain_routes_on_both_engines(served: Served, engine: Engine) -> None:
    """KServe v1 ``:explain`` on our engine and TorchServe's ``/explanations``: method=legrad by default;
    a backbone explains the images' embeddings (target=embedding, instances sent together)."""
    v1 = {"instances": [{"data": image_b64(s), "upsample": False, "target": "embedding"} for s in (1, 2)]}
    ours = requests.post(f"{engine.base}/v1/models/{NAME}:explain", json=v1, timeout=TIMEOUT)
    assert ours.status_code == 200, ours.text
    answers = ours.json()["predictions"]
    assert [a["method"] for a in answers] == ["legrad", "legrad"] and all(a["targets"][0]["target"] == "embedding" for a in answers)
    plain = requests.post(
        f"{served.server.props['inference_address']}/explanations/{NAME}",
        json={"images": [image_b64(1), image_b64(2)], "upsample": False, "target": "embedding"},
        timeout=TIMEOUT,
    )
    assert plain.status_code == 200, plain.text
    body = plain.json()["images"]
    assert [a["method"] for a in body] == ["legrad", "legrad"]
    assert np.allclose(np.array(body[0]["relevance"]), np.array(answers[0]["relevance"]), atol=1e-6)
