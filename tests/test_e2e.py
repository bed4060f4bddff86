"""End to end: archive with the real torch-model-archiver, serve with a real TorchServe, curl it.

TorchServe runs on free ports with its own model store, logs and temp dir, and is always stopped.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import yaml

from scripts import REPO, archive
from testkit.checkpoints import encode, random_rgb
from testkit.handler import answer
from testkit.torchserve import ModelApiServer
from vitscope.methods import METHODS
from vitscope.model.variants import IMAGENET_MEAN, IMAGENET_STD
from vitscope.vocab import DEFAULT_METHOD, ModelFacts
from vitscope_client import AttentionClient, ClientError

from .conftest import NAME, Served

TIMEOUT = 120  # s per HTTP call: generous for a loaded CI machine


def attention_of(reply: requests.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text[:500]
    assert reply.headers["Content-Type"].startswith("application/json")
    return np.asarray(reply.json()["attention"], dtype=np.float32)


def in_process(served: Served, payload: dict) -> dict:
    (reply,) = answer(served.in_process, [payload])
    assert reply.status == 200
    return orjson.loads(reply.body)


def worker_pids(served: Served) -> list[int]:
    reply = requests.get(f"{served.management}/models/{NAME}", timeout=TIMEOUT)
    return [w["pid"] for w in reply.json()[0]["workers"]]


LICENCE = "https://github.com/facebookresearch/dino/blob/main/LICENSE"


def test_describe_api_serves_the_registry(served: Served) -> None:
    """TorchServe's describe API (``?customized=true``) and the client's ``describe()``: the methods,
    each with its options (the model's defaults) and outputs, and the model's facts."""
    described = AttentionClient(served.url, management=served.management).describe()
    expected = json.loads(json.dumps(served.in_process.description()))
    measured = ("precisions", "attention_kernel", "limits", "cost_corrections")  # what each process measures for itself
    assert {k: v for k, v in described.items() if k not in measured} == {k: v for k, v in expected.items() if k not in measured}
    assert set(described["precisions"]) == {"fp32", "bf16", "fp16", "auto"}  # what each runs as: the worker's own probe
    assert described["attention_kernel"] == "attention kernel: sdpa (not measured)"  # the fixture's attention_kernel: sdpa
    assert described["limits"] == {**expected["limits"], "cost_budget_s": 60.0}  # half the archive's responseTimeout
    assert all(0.25 <= factor <= 4.0 for factor in described["cost_corrections"].values())  # learned from what it served
    assert [m["name"] for m in described["methods"]] == list(METHODS) and described["default_method"] == DEFAULT_METHOD
    facts = ModelFacts.of(served.in_process.model).describe()
    assert served.in_process.config.source == "hub (tiny16_full.pth)"  # recorded by the archiver
    preprocessing = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": served.in_process.config.source}
    weights = served.in_process.config.weights
    targets = {"targets": ["embedding (two images or more)"]}  # a backbone: what target= may name
    assert described["model"] == {**facts, "weights": weights, **preprocessing, "licence": "Apache-2.0", "licence_url": LICENCE, **targets}
    by_name = {m["name"]: m for m in described["methods"]}
    rollout_options = {o["name"]: o for o in by_name["rollout"]["options"]}
    assert rollout_options["head_fusion"]["choices"] == ["mean", "max", "min"] and "heads" not in rollout_options
    assert rollout_options["discard_ratio"] | {"help": ""} == {
        "name": "discard_ratio",
        "type": "number",
        "default": 0.0,
        "help": "",
        "interval": "[0, 1)",
        "minimum": 0.0,
        "maximum": 1.0,
        "exclusive_minimum": False,
        "exclusive_maximum": True,
    }
    attention_options = {o["name"]: o for o in by_name["attention"]["options"]}
    assert attention_options["short_side"]["default"] == served.in_process.config.short_side and "head_fusion" not in attention_options
    assert [o["name"] for o in by_name["attention"]["outputs"]] == ["attention", "masks", "boxes", "registers"]
    with pytest.raises(ClientError, match="HTTP 404"):
        AttentionClient(served.url.replace(NAME, "no_such_model"), management=served.management).describe()


def test_raw_body_forms(served: Served, tmp_path: Path) -> None:
    data = encode(random_rgb(150, 110, seed=1), "JPEG", quality=92)
    (tmp_path / "img.jpg").write_bytes(data)
    out = tmp_path / "out.json"
    # README's curl form, verbatim
    subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-T", str(tmp_path / "img.jpg"), served.url, "-o", str(out)], check=True, timeout=TIMEOUT
    )
    via_curl = requests.models.Response()
    via_curl.status_code, via_curl._content = 200, out.read_bytes()
    via_curl.headers["Content-Type"] = "application/json"
    posted = requests.post(served.url, data=data, headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT)
    doc = posted.json()
    expected = in_process(served, {"body": data})
    assert {k: v for k, v in doc.items() if k != "attention"} == {k: v for k, v in expected.items() if k != "attention"}
    assert doc["weights"].startswith("tiny16_full.pth@sha256:")
    assert (doc["resized_size"], doc["image_size"], doc["grid"]) == ([654, 480], [640, 480], [40, 30])  # 110 -> 480
    np.testing.assert_allclose(attention_of(posted), np.asarray(expected["attention"]), atol=1e-6)
    np.testing.assert_array_equal(attention_of(via_curl), attention_of(posted))
    assert attention_of(posted).shape == (3, 640, 480)


def test_multipart_form_with_options(served: Served) -> None:
    data = encode(random_rgb(100, 140, seed=2))
    fields = {"short_side": "64", "heads": "0,2", "layer": "5"}
    reply = requests.post(served.url, files={"data": ("img.png", data, "image/png")}, data=fields, timeout=TIMEOUT)
    attention = attention_of(reply)
    doc = reply.json()
    assert (doc["layer"], doc["heads"], doc["image_size"]) == (5, [0, 2], [64, 80])
    assert attention.shape == (2, 64, 80)
    np.testing.assert_allclose(attention, np.asarray(in_process(served, {"data": data, **fields})["attention"]), atol=1e-6)


def test_json_form(served: Served) -> None:
    data = encode(random_rgb(70, 90, seed=3), "WEBP", lossless=True)
    body = {"image": base64.b64encode(data).decode(), "size": "48x64", "upsample": False}
    reply = requests.post(served.url, json=body, timeout=TIMEOUT)
    attention = attention_of(reply)
    assert reply.json()["resized_size"] == [48, 64] and attention.shape == (3, 3, 4)
    np.testing.assert_allclose(attention, np.asarray(in_process(served, {"body": body})["attention"]), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": b""}, "empty request body"),
        ({"data": b"definitely not an image", "headers": {"Content-Type": "image/jpeg"}}, "not an image"),
        ({"data": encode(random_rgb(64, 64), "JPEG")[:400]}, "truncated or corrupt"),
        ({"files": {"data": ("a.png", encode(random_rgb(8, 8)))}, "data": {"scale": "1"}}, "smaller than one 16x16 patch"),
        ({"files": {"data": ("a.png", encode(random_rgb(64, 64)))}, "data": {"layer": "99"}}, "layer=99 is out of range"),
        ({"files": {"data": ("a.png", encode(random_rgb(64, 64)))}, "data": {"short_side": "-1"}}, "short_side=-1"),
        ({"files": {"data": ("a.png", encode(random_rgb(64, 64)))}, "data": {"size": "abc"}}, "size='abc' is not HxW"),
        ({"files": {"data": ("a.png", encode(random_rgb(64, 64)))}, "data": {"colour": "red"}}, "unknown option"),
        ({"json": {"image": "http://example.com/a.jpg"}}, "URLs are not fetched"),
    ],
)
def test_bad_request_gets_400_and_the_worker_keeps_serving(served: Served, kwargs: dict, message: str) -> None:
    pids = worker_pids(served)
    bad = requests.post(served.url, timeout=TIMEOUT, **kwargs)
    assert bad.status_code == 400, bad.text[:300]
    assert bad.headers["Content-Type"].startswith("application/json")
    assert message in bad.json()["error"]
    good = requests.post(served.url, files={"data": encode(random_rgb(40, 40))}, data={"scale": "1"}, timeout=TIMEOUT)  # small: liveness
    assert good.status_code == 200
    assert worker_pids(served) == pids  # no worker restart


def test_token_limit_gives_413(served: Served) -> None:
    reply = requests.post(served.url, files={"data": ("a.png", encode(random_rgb(32, 32)))}, data={"size": "4096x4096"}, timeout=TIMEOUT)
    assert reply.status_code == 413 and "max_tokens" in reply.json()["error"]


def test_concurrent_mixed_requests_each_get_their_own_answer(served: Served) -> None:
    """Queued behind a slow request, so TorchServe batches them (batchSize 4); sizes differ, one is bad."""
    images = [encode(random_rgb(h, w, seed=h)) for h, w in ((64, 64), (48, 96), (64, 64), (80, 32))]
    payloads = [{"data": img} for img in images] + [{"data": b"junk"}]
    log = served.log_dir / "model_log.log"
    batches_before = log.read_text().count("batch of")

    small = {"scale": "1", "upsample": "false"}  # the sizes as sent (grids 4x4, 3x6, 4x4, 5x2), the patch grid: compared, not upsampled

    def send(i: int) -> requests.Response:
        return requests.post(served.url, files={"data": payloads[i]["data"]}, data=small, timeout=TIMEOUT)

    with ThreadPoolExecutor(len(payloads) + 1) as pool:
        slow = pool.submit(  # slow in its forward pass (4,096 tokens), not in encoding 1024x1024 upsampled maps as JSON
            requests.post,
            served.url,
            files={"data": encode(random_rgb(64, 64))},
            data={"short_side": "1024", "upsample": "false"},
            timeout=TIMEOUT,
        )
        time.sleep(0.2)  # the worker is busy with the slow request while the others queue up
        replies = list(pool.map(send, range(len(payloads))))
        assert slow.result().status_code == 200
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 400]
    for payload, reply in zip(payloads[:4], replies[:4], strict=True):
        expected = in_process(served, {"data": payload["data"], **small})
        assert reply.json()["image_size"] == expected["image_size"]
        np.testing.assert_allclose(attention_of(reply), np.asarray(expected["attention"]), atol=1e-6)
    assert log.read_text().count("batch of") > batches_before  # TorchServe really handed over a batch


def test_accept_header_reaches_the_handler(served: Served) -> None:
    data = encode(random_rgb(48, 64))
    reply = requests.post(served.url, data=data, headers={"Accept": "application/x-npy"}, timeout=TIMEOUT)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/x-npy"
    meta = orjson.loads(reply.headers["X-Attention-Meta"])
    attention = np.load(io.BytesIO(reply.content), allow_pickle=False)
    assert attention.shape == (3, *meta["image_size"])
    np.testing.assert_allclose(attention, np.asarray(in_process(served, {"body": data})["attention"]), atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_reduced_precision_through_the_server(served: Served, precision: str) -> None:
    """The worker runs what this machine runs natively (bf16, or fp32 where bf16 is emulated) and says so."""
    data = encode(random_rgb(64, 96))
    reply = requests.post(served.url, files={"data": ("a.png", data)}, data={"precision": precision, "upsample": "false"}, timeout=TIMEOUT)
    expected = in_process(served, {"data": data, "precision": precision, "upsample": "false"})
    ran = served.in_process.precisions.resolve(precision)
    assert reply.json()["precision"] == expected["precision"] == ran and reply.headers["X-Attention-Precision"] == ran
    assert reply.json()["precision_requested"] == precision
    np.testing.assert_allclose(attention_of(reply), np.asarray(expected["attention"]), atol=1e-6)


def test_random_weights_archive(tmp_path: Path) -> None:
    assert archive.main(["--model", "vit_tiny", "--patch", "16", "--weights", "random", "--export-path", str(tmp_path)]) == 0
    with zipfile.ZipFile(tmp_path / f"{NAME}.mar") as mar:
        names = set(mar.namelist())
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config["handler"] == {**config["handler"], "model": "dino_vitt16", "weights": "random"}
    assert {"vitscope_handler.py", "vitscope/service/pipeline.py", "vitscope/model/vit.py"} <= names
    assert not any(n.endswith(".pth") for n in names)
    # the archive ships only what the worker imports: unpacked alone, loading and serving imports every module
    root = tmp_path / "model_dir"
    zipfile.ZipFile(tmp_path / f"{NAME}.mar").extractall(root)
    shipped = sorted(n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py"))
    code = (
        "import sys, json, yaml; sys.path.insert(0, '.'); from vitscope_handler import AttentionHandler; "
        "from testkit.handler import mock_context; "
        "ctx = mock_context([{}], model_dir='.', handler_settings=yaml.safe_load(open('model-config.yaml'))['handler']); "
        "h = AttentionHandler(); h.initialize(ctx); h.handle([{'body': open(sys.argv[1], 'rb').read()}], ctx); "
        "import os, vitscope; assert vitscope.__file__.startswith(os.getcwd()), vitscope.__file__; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    image = tmp_path / "img.png"
    image.write_bytes(encode(random_rgb(32, 32)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # tests.support only; vitscope comes from the archive
    out = subprocess.run([sys.executable, "-c", code, str(image)], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert set(shipped) <= imported, sorted(set(shipped) - imported)
    assert "scripts.download" not in imported and not any(n.startswith(("scripts/", "tests/")) for n in names)


def test_dinov2_with_registers_is_served(tmp_path: Path, model_api: ModelApiServer) -> None:
    """docs/models.md's DINOv2 walk-through: archive dinov2_vits14_reg (random weights), serve it, and curl a
    non-square image with registers=true (registered on the session's model-API TorchServe: the served
    fixture's has the model API off, as by default)."""
    name, store = "dinov2_vits14_reg", tmp_path / "store"
    assert archive.main(["--model", name, "--weights", "random", "--export-path", str(store)]) == 0
    (tmp_path / "img.png").write_bytes(encode(random_rgb(300, 200, seed=9)))
    out = tmp_path / "out.json"
    with model_api.register(store / f"{name}.mar"):
        command = ["curl", "-sS", "--fail-with-body", "-F", f"data=@{tmp_path / 'img.png'}", "-F", "registers=true", model_api.url(name)]
        subprocess.run([*command, "-o", str(out)], check=True, timeout=TIMEOUT)
    doc = orjson.loads(out.read_bytes())
    attention, registers = np.asarray(doc["attention"]), np.asarray(doc["registers"])
    assert (doc["model"], doc["patch_size"], doc["num_heads"], doc["weights"]) == (name, 14, 6, "random")
    assert doc["image_size"] == [714, 476] and doc["grid"] == [51, 34]  # 200x300 -> 480x720 -> multiples of 14
    assert attention.shape == (6, 714, 476) and registers.shape == (6, 4)
    patch_mass = attention[:, ::14, ::14].sum(axis=(1, 2))
    assert (patch_mass + registers.sum(axis=1) <= 1 + 1e-4).all() and (patch_mass > 0).all()
