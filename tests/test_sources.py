"""Fine-tuned checkpoints in the layouts people share them (vitscope/model/sources.py):
Hugging Face model directories, timm and hub state dicts as .safetensors or .pth, training
checkpoints with prefixes and heads. Small random models are made by transformers and timm
themselves (pinned test dependencies; nothing is downloaded), saved as those libraries save them,
archived, and served: the [CLS] attention of every layer equals the library's own forward pass to
1e-5 (fp32), on square and non-square images, off the checkpoint's position grid.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import torch
import yaml

from bench.timing import hugging_face_twin
from scripts import archive
from testkit.checkpoints import encode, random_rgb, tiny_replica
from testkit.torchserve import ModelApiServer
from tests.support.references import timm_attention
from vitscope import layout
from vitscope.model.checkpoint import CheckpointError, build_model, filter_state_dict
from vitscope.model.sources import default_name, detect_layout, load_checkpoint, variant_from_hf_config
from vitscope.model.variants import VARIANTS, variant_from_mapping, variant_to_mapping
from vitscope.schema import ImageRequest
from vitscope.service import ServiceConfig, create_service

transformers = pytest.importorskip("transformers", reason="transformers is pinned in requirements.txt: make install")
timm = pytest.importorskip("timm", reason="timm is pinned in requirements.txt: make install")
from safetensors.torch import save_file  # noqa: E402 (after the importorskip)

TOL = {"atol": 1e-5, "rtol": 1e-5}
TINY_HF = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 3, "patch_size": 8, "image_size": 48}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its init (LayerScale, zero biases): every tensor counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


# ----------------------------------------------------------------------------- Hugging Face models
def hf_dinov2(registers: bool = False, **config: object) -> torch.nn.Module:
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(**TINY_HF, num_register_tokens=4, mlp_ratio=2, **config)
        return perturbed(transformers.Dinov2WithRegistersModel(cfg))
    return perturbed(transformers.Dinov2Model(transformers.Dinov2Config(**TINY_HF, mlp_ratio=2, **config)))


def hf_dinov3(gated: bool = False) -> torch.nn.Module:
    config = transformers.DINOv3ViTConfig(
        **TINY_HF, intermediate_size=80, num_register_tokens=4, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu"
    )
    return perturbed(transformers.DINOv3ViTModel(config))


HF_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "dinov2": hf_dinov2,
    "dinov2_registers": lambda: hf_dinov2(registers=True),
    "dinov2_swiglu": lambda: hf_dinov2(use_swiglu_ffn=True),
    "dinov3": hf_dinov3,
    "dinov3_gated": lambda: hf_dinov3(gated=True),
}


def hf_attention(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] rows of every layer's attention, (B, layers, heads, N), from transformers' own eager
    forward pass of the model saved in ``folder`` (loaded back as users load it)."""
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.inference_mode():
        attentions = model(pixel_values=x, output_attentions=True).attentions
    return torch.stack([a[:, :, 0] for a in attentions], dim=1)


def ours(loaded_state: dict[str, torch.Tensor], variant, x: torch.Tensor) -> torch.Tensor:
    model = build_model(variant, loaded_state)
    with torch.inference_mode():
        return model.get_cls_attention_layers(x, list(range(variant.depth)))  # (B, layers, heads, N)


@pytest.mark.parametrize("kind", list(HF_MODELS))
@pytest.mark.parametrize("size", [(48, 48), (40, 72), (64, 56)])  # the config's grid (6x6), non-square, larger
def test_a_hugging_face_directory_gives_transformers_attention(tmp_path: Path, kind: str, size: tuple[int, int]) -> None:
    HF_MODELS[kind]().save_pretrained(tmp_path)  # config.json + model.safetensors
    loaded = load_checkpoint(tmp_path, None, name="fine_tuned")
    assert loaded.variant.name == "fine_tuned" and loaded.file.name == "model.safetensors"
    assert loaded.variant.pretrain_img_size == 48 and loaded.variant.patch_size == 8  # from config.json
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(loaded.state, loaded.variant, x), hf_attention(tmp_path, x), **TOL)


def test_a_hugging_face_directory_with_pytorch_model_bin(tmp_path: Path) -> None:
    """The older save_pretrained layout: pytorch_model.bin (read with weights_only) instead of safetensors."""
    model = hf_dinov2(registers=True)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_checkpoint(tmp_path, None, name="from_bin")
    assert loaded.file.name == "pytorch_model.bin" and loaded.source == "huggingface dinov2_with_registers (pytorch_model.bin)"
    x = torch.randn(1, 3, 40, 56)
    torch.testing.assert_close(ours(loaded.state, loaded.variant, x), hf_attention(tmp_path, x), **TOL)


def test_a_classification_fine_tune_keeps_its_head(tmp_path: Path) -> None:
    """Dinov2ForImageClassification: the backbone's attention as before, and its classifier as our head
    (logits against transformers': test_towers.py)."""
    config = transformers.Dinov2Config(**TINY_HF, mlp_ratio=2, num_labels=5)
    classifier = perturbed(transformers.Dinov2ForImageClassification(config))
    classifier.save_pretrained(tmp_path)  # keys "dinov2.*" and "classifier.*"
    loaded = load_checkpoint(tmp_path, None)
    assert (loaded.variant.num_classes, loaded.variant.head_input) == (5, "token_mean")
    torch.testing.assert_close(loaded.state["head.weight"], classifier.classifier.weight.detach())
    x = torch.randn(1, 3, 48, 48)
    backbone = tmp_path / "backbone"
    classifier.dinov2.save_pretrained(backbone)
    torch.testing.assert_close(ours(loaded.state, loaded.variant, x), hf_attention(backbone, x), **TOL)
    assert loaded.variant.name == default_name(tmp_path)


def test_the_config_and_preprocessor_define_the_model() -> None:
    config = {**TINY_HF, "model_type": "dinov2_with_registers", "num_register_tokens": 4, "layer_norm_eps": 1e-5, "use_swiglu_ffn": True}
    variant = variant_from_hf_config(config, "rad", {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    assert (variant.family, variant.embed_dim, variant.depth, variant.num_heads) == ("dinov2", 48, 3, 3)
    assert (variant.num_registers, variant.eps, variant.ffn, variant.pretrain_grid) == (4, 1e-5, "swiglu_fused", 6)
    assert variant.mean == (0.5, 0.5, 0.5) and variant.std == (0.25, 0.25, 0.25)
    assert (variant.interpolate_offset, variant.interpolate_antialias) == (0.0, True)  # transformers' resize
    plain = variant_from_hf_config({**TINY_HF, "model_type": "dinov2"}, "plain")
    assert (plain.interpolate_offset, plain.interpolate_antialias, plain.mean) == (0.0, False, VARIANTS["dinov2_vits14"].mean)
    v3 = variant_from_hf_config({**TINY_HF, "model_type": "dinov3_vit", "intermediate_size": 80, "rope_theta": 50.0}, "v3")
    assert (v3.rope_base, v3.ffn_hidden, v3.eps, v3.mask_k_bias) == (50.0, 80, 1e-5, True)
    assert variant_from_mapping(variant_to_mapping(variant)) == variant  # what the archive records, read back


def test_a_hugging_face_model_is_the_hub_model_it_was_made_from(tmp_path: Path) -> None:
    """The same network (so the same speed: the families benchmark's hf: row measures it): a
    transformers DINOv2-with-registers of ViT-S/14's shape loads as dinov2_vits14_reg with only the
    name and transformers' position resize differing."""
    hub = VARIANTS["dinov2_vits14_reg"]
    hugging_face_twin(hub).save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path, None, name=hub.name)
    assert loaded.variant == replace(hub, arch="vit_small", layerscale_init=1.0)  # transformers resizes as the hub's register models do
    assert loaded.state.keys() == build_model(hub, None).state_dict().keys()


# ----------------------------------------------------------------------------- timm and hub state dicts
TIMM_MODELS = {  # our hub name -> timm's model (random weights made by timm)
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov3_vits16": "vit_small_patch16_dinov3_qkvb",
}


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_a_timm_file_gives_timms_attention(tmp_path: Path, name: str) -> None:
    base = tiny_replica(name)
    p = base.patch_size
    shape = {"embed_dim": base.embed_dim, "depth": base.depth, "num_heads": base.num_heads, "img_size": 6 * p}  # a 6x6 grid
    reference = perturbed(timm.create_model(TIMM_MODELS[name], pretrained=False, num_classes=0, dynamic_img_size=True, **shape))
    path = tmp_path / "fine_tuned.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    loaded = load_checkpoint(path, base)
    assert loaded.source == "timm (fine_tuned.safetensors)"
    assert loaded.variant.pretrain_img_size == 6 * p or base.rope_base  # the grid read from the tensors (RoPE: none)
    for h, w in ((6 * p, 6 * p), (5 * p, 9 * p)):
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        torch.testing.assert_close(ours(loaded.state, loaded.variant, x), timm_attention(reference, x)[..., 0, :], **TOL)


def test_a_training_checkpoint_with_prefixes_and_heads(tmp_path: Path) -> None:
    base = tiny_replica("dinov2_vits14_reg")
    torch.manual_seed(0)
    state = build_model(base, None).state_dict()
    wrapped = {f"module.backbone.{k}": v for k, v in state.items()}
    wrapped["module.dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    wrapped["module.ibot_head.last_layer.weight"] = torch.zeros(4, 4)
    torch.save({"teacher": wrapped, "student": {}}, tmp_path / "train.pth")
    loaded = load_checkpoint(tmp_path / "train.pth", base)
    assert loaded.source == "hub (train.pth)" and loaded.state.keys() == state.keys()
    flat = filter_state_dict({f"teacher.model.{k}": v for k, v in state.items()} | {"head.weight": torch.zeros(2)}, heads=False)
    assert flat.keys() == state.keys()  # a backbone's: the head dropped (kept for a model with one: heads=True)
    assert detect_layout(state, base) == "hub"


def test_a_bare_state_dict_at_another_resolution_reads_its_grid(tmp_path: Path) -> None:
    """A hub-layout fine-tune at 448 px (a 32x32 grid instead of the table's 37x37) is served, not rejected."""
    base = tiny_replica("dinov2_vits14")
    resized = build_model(replace(base, pretrain_img_size=448), None)
    path = tmp_path / "fine_tuned_448.pth"
    torch.save(resized.state_dict(), path)
    loaded = load_checkpoint(path, base, name="at_448")
    assert (loaded.variant.pretrain_grid, loaded.variant.name, loaded.variant.interpolate_offset) == (32, "at_448", 0.1)  # the hub's resize


# ----------------------------------------------------------------------------- archive and serve
def unpack(mar: Path, folder: Path) -> tuple[dict, Path | None]:
    """An archive's handler settings and weights file, as both engines read them."""
    with zipfile.ZipFile(mar) as z:
        z.extractall(folder)
    config = yaml.safe_load((folder / layout.MODEL_CONFIG).read_text())
    manifest = json.loads((folder / layout.MANIFEST).read_text())
    return config["handler"], layout.weights_in(folder, manifest)


def test_an_archived_hugging_face_model_serves_transformers_attention(tmp_path: Path) -> None:
    """make archive WEIGHTS=<hf dir> NAME=<name>: the .mar records the source, the hash and the
    architecture; the service built from it answers every layer's attention as transformers does."""
    folder = tmp_path / "hf"
    hf_dinov2(registers=True).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2]}))
    store = tmp_path / "store"
    assert archive.main(["--weights", str(folder), "--name", "my_dino", "--export-path", str(store)]) == 0
    assert [p.name for p in store.iterdir()] == ["my_dino.mar"]
    settings, weights = unpack(store / "my_dino.mar", tmp_path / "unpacked")
    assert settings["model"] == "my_dino" and settings["weights"].startswith("model.safetensors@sha256:")
    assert settings["source"] == "huggingface dinov2_with_registers (model.safetensors)"
    assert settings["architecture"]["num_registers"] == 4 and settings["architecture"]["image_mean"] == [0.5, 0.4, 0.3]
    assert not (tmp_path / "unpacked" / "vitscope" / "model" / "sources.py").exists()  # archive-time code stays out
    service = create_service(settings, weights)
    data = encode(random_rgb(40, 64, seed=2))
    x = service.prepare(ImageRequest(data, {"short_side": "40"})).tensor[None]  # the pixels the service computes on
    (result,) = service.explain([ImageRequest(data, {"short_side": "40", "layers": "all", "upsample": "false"})])
    expected = hf_attention(folder, x)[0, :, :, 5:]  # (layers, heads, patches): after [CLS] and 4 registers
    served = torch.from_numpy(np.asarray(result.arrays["attention"])).reshape(expected.shape)
    torch.testing.assert_close(served, expected, **TOL)
    description = service.description()["model"]
    assert description["name"] == "my_dino" and description["source"] == settings["source"] and description["mean"] == [0.5, 0.4, 0.3]


def test_a_hugging_face_archive_is_served_under_its_name(tmp_path: Path, model_api: ModelApiServer) -> None:
    """Through TorchServe (the session's model-API one): /predictions/<NAME> answers, naming the model NAME."""
    folder = tmp_path / "rad-dino-like"
    hf_dinov2().save_pretrained(folder)
    store = tmp_path / "store"
    assert archive.main(["--weights", str(folder), "--export-path", str(store)]) == 0  # NAME from the directory
    with model_api.register(store / "rad-dino-like.mar") as name:
        reply = requests.put(model_api.url(name), data=encode(random_rgb(64, 96)), timeout=60)
    assert reply.status_code == 200, reply.text
    body = orjson.loads(reply.content)
    assert body["model"] == "rad-dino-like" and body["weights"].startswith("model.safetensors@sha256:") and body["patch_size"] == 8


# ----------------------------------------------------------------------------- bad input
def safetensors_dir(folder: Path, edit: Callable[[dict[str, torch.Tensor], dict], None] | None = None) -> Path:
    """A saved tiny HF DINOv2 directory, its tensors and config passed through ``edit``."""
    hf_dinov2().save_pretrained(folder)
    if edit:
        from safetensors.torch import load_file

        tensors = load_file(folder / "model.safetensors")
        config = json.loads((folder / "config.json").read_text())
        edit(tensors, config)
        save_file(tensors, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def clip_config(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]}))
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def resnet_config(folder: Path) -> Path:
    transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1])).save_pretrained(folder)
    return folder


def corrupt_header(folder: Path) -> Path:
    safetensors_dir(folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    return folder


def truncated(folder: Path) -> Path:
    safetensors_dir(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def no_weights(folder: Path) -> Path:
    safetensors_dir(folder)
    (folder / "model.safetensors").unlink()
    return folder


BAD = {  # what is wrong -> (how to make it, a phrase the error must contain)
    "a CLIP config over foreign tensors": (clip_config, "unexpected keys (1): ['x']"),  # CLIP is read (towers.py); its tensors are not
    "a ResNet config": (resnet_config, "model_type='resnet'"),
    "a missing tensor": (lambda f: safetensors_dir(f, lambda t, _c: t.pop("layernorm.weight")), "missing keys (1): ['norm.weight']"),
    "an extra tensor": (lambda f: safetensors_dir(f, lambda t, _c: t.update(extra=torch.zeros(2))), "unexpected keys (1): ['extra']"),
    "shapes against the config": (lambda f: safetensors_dir(f, lambda _t, c: c.update(image_size=64)), "shape mismatches (1): ['pos_embed"),
    "a corrupt safetensors header": (corrupt_header, "not a readable safetensors file"),
    "a truncated safetensors file": (truncated, "not a readable safetensors file"),
    "a directory with neither weights file": (no_weights, "is not a Hugging Face model directory"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_fail_the_archive_and_write_nothing(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    make, phrase = BAD[case]
    folder = make(tmp_path / "model")
    store = tmp_path / "store"
    with caplog.at_level("ERROR"):
        assert archive.main(["--weights", str(folder), "--name", "bad", "--export-path", str(store)]) == 2
    assert not store.exists() or not any(store.iterdir())
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and phrase in errors[0], errors


def test_served_config_refuses_a_broken_architecture() -> None:
    good = variant_to_mapping(tiny_replica("dinov2_vits14"))
    with pytest.raises(ValueError, match="embed_dim 96 is not divisible by num_heads 5"):
        variant_from_mapping({**good, "num_heads": 5})
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        variant_from_mapping({**good, "colour": "red"})
    config = ServiceConfig.from_mapping({"model": good["name"], "architecture": good})
    assert config.variant == tiny_replica("dinov2_vits14")
    with pytest.raises(ValueError, match="differs from its architecture's name"):
        _ = ServiceConfig.from_mapping({"model": "other", "architecture": good}).variant
    with pytest.raises(CheckpointError, match="carries no config: name its family and size with MODEL="):
        load_checkpoint(Path(__file__), None)
