"""A CLIP model archived from a transformers directory and served by TorchServe: zero-shot
predictions over the wire equal transformers' own ``logits_per_image`` softmax, with the maps, and
the client and the describe API see the new options. (The other sources' archives: test_towers.py.)"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from scripts import archive
from testkit.checkpoints import encode, random_rgb
from testkit.torchserve import TorchServe
from tests.support.archives import model_config
from vitscope.attention import to_tensor
from vitscope.image import prepare_image
from vitscope.model.tokenizer import ClipTokenizer
from vitscope_client import AttentionClient

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
OPEN_CLIP_DIR = Path(open_clip.__file__).parent
NAME = "tiny_clip"
LABELS = ["a photo of a cat", "a dog", "a red car"]


@pytest.fixture(scope="module")
def clip_served(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, object]]:
    tmp = tmp_path_factory.mktemp("clip")
    text = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 77}
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(tmp / "clip")
    settings = model_config(tmp, {"attention_kernel": "sdpa"})
    store = tmp / "store"
    args = ["--weights", str(tmp / "clip"), "--name", NAME, "--tokenizer", str(OPEN_CLIP_DIR), "--export-path", str(store)]
    assert archive.main([*args, "--config", str(settings)]) == 0
    names = zipfile.ZipFile(store / f"{NAME}.mar").namelist()
    assert "tokenizer/bpe_simple_vocab_16e6.txt.gz" in names and not any(n.endswith(("towers.py", "sources.py")) for n in names)
    with torchserve(store, NAME) as server:
        yield server.url(NAME), server.props["management_address"], model


def test_zero_shot_over_the_wire_equals_transformers(clip_served: tuple[str, str, object]) -> None:
    url, management, model = clip_served
    described = AttentionClient(url, management=management).describe()["model"]
    image = encode(random_rgb(40, 56, seed=3), "PNG")
    reply = requests.post(url, files={"data": ("x.png", image)}, data={"labels": "|".join(LABELS), "short_side": "32"}, timeout=60)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert np.asarray(doc["attention"]).shape == (2, 32, 40) and len(doc["predictions"]) == 3
    processed = prepare_image(image, patch_size=8, max_pixels=10**7, max_tokens=10**4, short_side=32)  # the server's own steps
    x = to_tensor(processed.image, described["mean"], described["std"])[None]  # (1, 3, 32, 40)
    ids = ClipTokenizer.from_bpe_file(OPEN_CLIP_DIR / "bpe_simple_vocab_16e6.txt.gz").encode(LABELS)
    with torch.inference_mode():
        out = model(input_ids=ids, pixel_values=x, interpolate_pos_encoding=True)  # transformers' own forward
    expected = out.logits_per_image.softmax(-1)[0].numpy()
    got = {p["index"]: p["probability"] for p in doc["predictions"]}
    assert np.allclose([got[i] for i in range(3)], expected, atol=1e-5)
    assert [p["label"] for p in doc["predictions"]] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]


def test_the_description_and_the_client_see_the_text_tower(clip_served: tuple[str, str, object]) -> None:
    url, management, _ = clip_served
    client = AttentionClient(url, management=management)
    model = client.describe()["model"]
    assert (model["text_tower"], model["queries"], model["classes"]) == (True, ["cls"], 0)
    response = client.explain(encode(random_rgb(32, 32, seed=1), "PNG"), labels=LABELS, top_k=2, short_side=32)
    assert len(response.predictions) == 2 and response.predictions[0]["label"] in response.title
    bad = requests.post(url, files={"data": ("x.png", encode(random_rgb(32, 32), "PNG"))}, data={"top_k": "2"}, timeout=60)
    assert bad.status_code == 400 and "give labels=" in bad.json()["error"]
