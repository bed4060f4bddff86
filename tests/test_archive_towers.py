"""``make archive`` for the new sources, end to end in process: the CLI archives timm and open_clip
specs and transformers directories with their heads, labels and tokenizers, the archive serves
predictions, and every bad input exits non-zero with nothing in the export path."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from scripts import archive
from testkit.checkpoints import encode, random_rgb
from tests.support.tokenizers import write_hf_clip_tokenizer
from vitscope.errors import RequestError
from vitscope.schema import ImageRequest
from vitscope.service import create_service

transformers = pytest.importorskip("transformers")
pytest.importorskip("open_clip")
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}


def archived(tmp_path: Path, *args: str) -> tuple[int, Path]:
    store = tmp_path / "store"
    return archive.main([*args, "--export-path", str(store)]), store


def serve_from(mar: Path, tmp_path: Path):
    """The archive unpacked as the KServe engine unpacks it, and its service."""
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(folder)
    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    weights = folder / "dino_backbone.pth"
    return create_service(config["handler"], weights if weights.is_file() else None, model_dir=folder), config["handler"]


def explain(service, **options: object):
    (result,) = service.explain([ImageRequest(encode(random_rgb(48, 64, seed=2), "PNG"), {"short_side": 48, **options})])
    if isinstance(result, RequestError):
        raise result
    return result


def test_a_timm_spec_archives_with_imagenets_names(tmp_path: Path) -> None:
    rc, store = archived(tmp_path, "--model", "timm:vit_small_patch16_224", "--weights", "random")
    assert rc == 0
    service, handler = serve_from(store / "vit_small_patch16_224.mar", tmp_path)
    assert len(handler["labels"]) == 1000 and handler["labels"][281] == "tabby, tabby cat"
    predictions = explain(service, top_k=3).predictions
    assert [p["label"] for p in predictions] == [handler["labels"][p["index"]] for p in predictions]


def test_an_open_clip_spec_archives_its_towers_and_bpe(tmp_path: Path) -> None:
    rc, store = archived(tmp_path, "--model", "open_clip:ViT-B-32", "--weights", "random", "--name", "clip_b32")
    assert rc == 0
    assert "tokenizer/bpe_simple_vocab_16e6.txt.gz" in zipfile.ZipFile(store / "clip_b32.mar").namelist()
    service, handler = serve_from(store / "clip_b32.mar", tmp_path)
    assert handler["tokenizer"] == "tokenizer" and service.variant.text is not None
    predictions = explain(service, labels=["a cat", "a dog"]).predictions
    assert sorted(p["label"] for p in predictions) == ["a cat", "a dog"]
    assert abs(sum(p["probability"] for p in predictions) - 1) < 1e-6  # CLIP: softmax over the labels


def test_a_dinov2_classifier_fine_tune_answers_with_its_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "car"}
    config = transformers.Dinov2Config(**SMALL, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = transformers.Dinov2ForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "dinov2_cls")
    rc, store = archived(tmp_path, "--weights", str(tmp_path / "dinov2_cls"), "--name", "pets")
    assert rc == 0
    service, handler = serve_from(store / "pets.mar", tmp_path)
    assert handler["labels"] == ["cat", "dog", "car"]
    result = explain(service, short_side=32)
    x = service.prepare(ImageRequest(encode(random_rgb(48, 64, seed=2), "PNG"), {"short_side": 32})).tensor[None]
    with torch.inference_mode():
        expected = model(pixel_values=x).logits.softmax(-1)[0]
    assert {p["label"]: round(p["probability"], 5) for p in result.predictions} == {
        labels[i]: round(float(expected[i]), 5) for i in range(3)
    }


def test_a_clip_directorys_own_tokenizer_files_are_archived(tmp_path: Path) -> None:
    folder = write_hf_clip_tokenizer(write_clip_dir(tmp_path / "clip"))
    rc, store = archived(tmp_path, "--weights", str(folder), "--name", "clip_dir")
    assert rc == 0
    names = zipfile.ZipFile(store / "clip_dir.mar").namelist()
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(names)
    service, _ = serve_from(store / "clip_dir.mar", tmp_path)
    assert [p["label"] for p in explain(service, labels=["x"], short_side=32).predictions] == ["x"]


def write_clip_dir(folder: Path) -> Path:
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 77}
    config = transformers.CLIPConfig(text_config=text, vision_config=SMALL, projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def vit_dir(folder: Path, **config: object) -> Path:
    transformers.ViTForImageClassification(transformers.ViTConfig(**{**SMALL, **config})).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unsupported", "supported"),
        ("no_tokenizer", "tokenizer"),
        ("contradicting", "config.json"),
        ("label_count", "2 labels for a head of 3 classes"),
        ("labels_without_head", "has no classifier head"),
        ("tokenizer_without_text", "has no text tower"),
        ("head_on_a_directory", "HEAD= joins DINOv2's official linear head to a DINOv2 backbone file"),
    ],
)
def test_bad_input_exits_non_zero_with_nothing_written(case: str, message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args: list[str]
    if case == "unsupported":
        folder = tmp_path / "resnet"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
        (folder / "model.safetensors").write_bytes(b"")
        args = ["--weights", str(folder)]
    elif case == "no_tokenizer":
        args = ["--weights", str(write_clip_dir(tmp_path / "clip"))]
    elif case == "contradicting":
        folder = vit_dir(tmp_path / "vit", num_labels=3)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
        args = ["--weights", str(folder)]
    elif case == "label_count":
        (tmp_path / "labels.txt").write_text("a\nb\n")
        args = ["--weights", str(vit_dir(tmp_path / "vit", num_labels=3)), "--labels", str(tmp_path / "labels.txt")]
    elif case == "labels_without_head":
        (tmp_path / "labels.txt").write_text("a\nb\n")
        args = ["--model", "dinov2_vits14", "--weights", "random", "--labels", str(tmp_path / "labels.txt")]
    elif case == "tokenizer_without_text":
        args = ["--model", "timm:vit_small_patch16_224", "--weights", "random", "--tokenizer", str(tmp_path)]
    else:
        torch.save({"weight": torch.zeros(1000, 64), "bias": torch.zeros(1000)}, tmp_path / "head.pth")
        args = ["--weights", str(vit_dir(tmp_path / "vit", num_labels=3)), "--head", str(tmp_path / "head.pth")]
    with caplog.at_level(logging.ERROR):
        rc, store = archived(tmp_path, *args)
    assert rc != 0
    assert not store.exists() or not any(store.iterdir())
    assert any(message in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
    shutil.rmtree(tmp_path, ignore_errors=True)
