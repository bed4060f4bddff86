"""Predictions served beside the maps, and the maps of the query a model pools by, on constructed
supervised ViT/DeiT, CLIP and SigLIP models (``Variant`` flags; the libraries' own checkpoints are
test_towers.py's): the head's softmax and the zero-shot scores from the method's own forward pass,
DeiT's distillation query and SigLIP's probe for every map method, and the 400s of each option."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.services import tiny_service
from vitscope.cost import CostModel
from vitscope.errors import RequestError
from vitscope.methods import METHODS
from vitscope.methods.explain import ExplainMethod
from vitscope.model.checkpoint import CheckpointError, build_model
from vitscope.model.rollout import cls_rollout, rollout_reference
from vitscope.model.sources import load_checkpoint
from vitscope.model.tokenizer import ClipTokenizer
from vitscope.model.variants import VARIANTS, TextVariant, Variant
from vitscope.predictions import TEXT_CACHE_SIZE, Predictor
from vitscope.protocols import KSERVE_V1, KSERVE_V2
from vitscope.protocols.base import ServerInfo
from vitscope.protocols.plain import encode_attention
from vitscope.schema import AttentionResult, ImageRequest

open_clip = pytest.importorskip("open_clip")
BPE = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"

CLASSIFIER = Variant("tiny_vit_cls", "vit", "custom", 8, 32, 3, 4, eps=1e-12, num_classes=7)
DISTILLED = replace(CLASSIFIER, name="tiny_deit_distilled", distill_token=True)
TEXT = TextVariant(vocab_size=49408, context_length=16, embed_dim=32, depth=2, num_heads=2, proj_dim=24, act="quick_gelu")
CLIP = Variant(
    "tiny_clip", "clip", "custom", 8, 32, 3, 4, eps=1e-5, pre_norm=True, patch_bias=False, act="quick_gelu", proj_dim=24, text=TEXT
)
SIGLIP_TEXT = replace(TEXT, causal=False, pool="last", proj_bias=True, proj_dim=32, act="gelu_tanh", tokenizer="clip")
SIGLIP = Variant(
    "tiny_siglip", "siglip", "custom", 8, 32, 3, 4, class_token=False, pool="map", act="gelu_tanh", text=SIGLIP_TEXT, logit_bias=True
)
LABELS = tuple(f"kind {i}" for i in range(7))


def png(height: int = 40, width: int = 56, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def service_of(variant: Variant, labels: tuple[str, ...] = (), **settings: object):
    torch.manual_seed(0)
    model = build_model(variant, None)
    with torch.no_grad():  # a head and a text tower whose outputs differ from class to class
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokenizer = ClipTokenizer.from_bpe_file(BPE, variant.text.context_length) if variant.text else None
    return tiny_service(variant, model=model, predictor=Predictor(model, labels, tokenizer), short_side=40, **settings)


def explain(service, options: dict, image: bytes | None = None) -> AttentionResult:
    (result,) = service.explain([ImageRequest(image or png(), options)])
    if isinstance(result, RequestError):
        raise result
    return result


def tensor_of(service, image: bytes) -> torch.Tensor:
    return service.prepare(ImageRequest(image, {})).tensor[None]  # (1, 3, H, W)


@pytest.mark.parametrize(
    "options",
    [{}, {"layer": 0}, {"layers": "0,1"}, {"method": "rollout", "layer": 1}, {"method": "pca"}, {"method": "similarity", "point": "3,3"}],
    ids=["attention", "layer0", "layers", "rollout", "pca", "similarity"],
)
def test_a_heads_predictions_are_its_softmax_from_the_methods_own_pass(options: dict) -> None:
    service = service_of(CLASSIFIER, LABELS)
    image = png()
    result = explain(service, {**options, "top_k": 3})
    with torch.inference_mode():
        expected = service.model.logits(service.model.final_tokens(tensor_of(service, image))).softmax(-1)[0]  # (7,)
    order = torch.argsort(expected, descending=True)[:3].tolist()
    assert [p["index"] for p in result.predictions] == order
    assert [p["label"] for p in result.predictions] == [LABELS[i] for i in order]
    assert np.allclose([p["probability"] for p in result.predictions], expected[order].numpy(), atol=1e-6)


def test_predictions_default_to_five_and_top_k_zero_turns_them_off() -> None:
    service = service_of(CLASSIFIER)
    assert len(explain(service, {}).predictions) == 5
    assert [p["label"] for p in explain(service, {"top_k": 7}).predictions][:1][0].startswith("class ")
    assert explain(service, {"top_k": 0}).predictions is None
    assert explain(tiny_service(short_side=32), {}).predictions is None  # DINO: no head, no predictions


def test_a_distilled_deit_averages_its_two_heads_and_maps_either_token() -> None:
    service = service_of(DISTILLED)
    model, x = service.model, tensor_of(service, png())
    with torch.inference_mode():
        normed = model.final_tokens(x)
        assert model.head_dist is not None and model.head is not None
        expected = ((model.head(normed[:, 0]) + model.head_dist(normed[:, 1])) / 2).softmax(-1)[0]
        for query, row in (("cls", 0), ("distillation", 1)):
            weights, _ = model.blocks[1].attn.explicit_weights(model.blocks[1].norm1(layer_input(model, x, 1)))  # (1, heads, N, N)
            reference = weights[:, :, row]  # the query token's row of block 1's full softmax
            result = explain(service, {"layer": 1, "query": query, "upsample": "false"})
            assert result.query == query
            assert np.allclose(result.arrays["attention"], reference[0, :, 2:].reshape(4, 5, 7).numpy(), atol=1e-6)
            for fusion, discard in (("mean", 0.0), ("max", 0.5), ("min", 0.3)):
                fast = cls_rollout(model, x, 2, fusion, discard, query=query)
                assert torch.allclose(fast, rollout_reference(model, x, 2, fusion, discard, query=query), atol=1e-6)
    assert np.allclose([p["probability"] for p in explain(service, {"top_k": 7}).predictions], np.sort(expected.numpy())[::-1], atol=1e-6)


def layer_input(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    tokens, rope = model.prepare_tokens(x)
    for blk in model.blocks[:layer]:
        tokens = blk(tokens, rope, explicit=True)
    return tokens


def test_siglip_maps_are_its_probe_over_each_blocks_tokens() -> None:
    service = service_of(SIGLIP)
    model, x = service.model, tensor_of(service, png())
    with torch.inference_mode():
        for layer in (0, 2):
            after = model.blocks[layer](layer_input(model, x, layer), explicit=True)
            probe = model.attn_pool.weights(model.norm(after))  # (1, heads, N): no prefix tokens
            assert torch.allclose(model.get_cls_attention(x, layer, explicit=True), probe, atol=1e-6)
            result = explain(service, {"layer": layer, "upsample": "false"})
            assert np.allclose(result.arrays["attention"], probe[0].reshape(4, 5, 7).numpy(), atol=1e-6)
        assert torch.allclose(model.attn_pool(model.final_tokens(x)), model(x))
        for fusion, discard in (("mean", 0.0), ("max", 0.0), ("mean", 0.5)):
            fast, reference = cls_rollout(model, x, 1, fusion, discard), rollout_reference(model, x, 1, fusion, discard)
            assert torch.allclose(fast, reference, atol=1e-6)
    result = explain(service, {"method": "rollout", "layer": 2, "upsample": "false"})
    assert result.arrays["attention"].shape == (1, 5, 7) and abs(float(result.arrays["attention"].sum()) - 1) < 1e-5  # no class token


@pytest.mark.parametrize("variant", [CLIP, SIGLIP], ids=["clip", "siglip"])
def test_zero_shot_scores_are_the_scaled_cosines_softmax_or_sigmoid(variant: Variant) -> None:
    service = service_of(variant)
    model, image = service.model, png()
    labels = ["a photo of a cat", "a dog", "a red car"]
    result = explain(service, {"labels": labels})
    tokenizer = service.predictor.tokenizer
    with torch.inference_mode():
        img = model.embed_image(model(tensor_of(service, image)))  # (1, D)
        txt = model.text(tokenizer.encode(labels))  # (3, D)
        cos = torch.nn.functional.cosine_similarity(img, txt)  # (3,)
        scores = cos * model.logit_scale.exp() + (model.logit_bias if variant.logit_bias else 0)
        expected = scores.sigmoid() if variant.logit_bias else scores.softmax(-1)
    got = {p["index"]: p["probability"] for p in result.predictions}
    assert [p["label"] for p in result.predictions] == [labels[i] for i in got]
    assert np.allclose([got[i] for i in range(3)], expected.numpy(), atol=1e-6)
    assert explain(service, {"labels": json.dumps(labels)}).predictions == result.predictions  # a JSON list in a form field
    form = explain(service, {"labels": "a photo of a cat | a dog|a red car", "top_k": "2"})
    assert [(p["index"], p["label"]) for p in form.predictions] == [(p["index"], p["label"]) for p in result.predictions][:2]


def test_text_embeddings_are_computed_once_per_prompt_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    service = service_of(CLIP)
    calls: list[int] = []
    forward = service.model.text.forward
    monkeypatch.setattr(service.model.text, "forward", lambda ids: calls.append(ids.shape[0]) or forward(ids))
    explain(service, {"labels": ["a", "b"]})
    explain(service, {"labels": ["b", "c", "a"]})
    assert calls == [2, 1]  # only "c" was new
    predictor = service.predictor
    predictor._texts.clear()
    predictor.text_embeddings([f"p{i}" for i in range(TEXT_CACHE_SIZE + 3)])
    assert len(predictor._texts) == TEXT_CACHE_SIZE and "p0" not in predictor._texts


@pytest.mark.parametrize(
    ("variant", "options", "message"),
    [
        (CLASSIFIER, {"labels": ["a cat"]}, "labels= scores texts with a text tower"),
        (CLASSIFIER, {"top_k": 8}, r"top_k=8 is out of range: 0..7"),
        (CLASSIFIER, {"top_k": -1}, "top_k=-1"),
        (CLASSIFIER, {"query": "distillation"}, "pools by cls"),
        (CLIP, {"top_k": 3}, "give labels= to score texts"),
        (CLIP, {"labels": ["a", ""]}, "non-empty UTF-8 texts"),
        (CLIP, {"labels": ["a", "b"], "top_k": 3}, r"0..2 \(the labels given\)"),
        (SIGLIP, {"query": "cls"}, "pools by probe"),
        (CLIP, {"labels": ["a", "\ud800"]}, "UTF-8 texts"),
        (CLIP, {"labels": ["a cat", "a dog", "a cat"]}, "each text once"),
        (CLIP, {"labels": '["a", '}, "read as a JSON list"),
        (CLIP, {"labels": ["a"], "method": "similarity", "point": "1,1", "query": "cls"}, "query does not apply to method=similarity"),
    ],
)
def test_each_bad_option_is_a_400_naming_it(variant: Variant, options: dict, message: str) -> None:
    service = service_of(variant)
    (result,) = service.explain([ImageRequest(png(), options)])
    assert isinstance(result, RequestError) and result.status == 400
    assert re.search(message, str(result)), str(result)


def test_a_dino_model_refuses_top_k_and_labels() -> None:
    service = tiny_service(short_side=32)
    for options, message in (({"top_k": 1}, "no classifier head and no text tower"), ({"labels": "a|b"}, "has none")):
        (result,) = service.explain([ImageRequest(png(), options)])
        assert isinstance(result, RequestError) and message in str(result)


def test_every_format_and_protocol_carries_the_predictions() -> None:
    service = service_of(CLASSIFIER, LABELS)
    expected = explain(service, {}).predictions
    for fmt in ("json", "npz", "npy"):
        body, _, headers = encode_attention(explain(service, {"format": fmt}))
        if fmt == "json":
            meta = json.loads(body)
        elif fmt == "npz":
            meta = json.loads(str(np.load(io.BytesIO(body), allow_pickle=False)["meta"]))
        else:
            meta = json.loads(next(v for k, v in headers.items() if k.lower() == "x-attention-meta"))
        assert meta["predictions"] == expected, fmt
    server = ServerInfo("tiny_vit_cls", "1")
    result = explain(service, {})
    v1 = json.loads(KSERVE_V1.encode(KSERVE_V1.decode_document({"instances": []}), [result], server).body)
    assert v1["predictions"][0]["predictions"] == expected
    v2 = json.loads(KSERVE_V2.encode(KSERVE_V2.decode_document({"inputs": []}), [result], server).body)
    assert json.loads(v2["outputs"][0]["parameters"]["predictions"]) == expected


def test_the_description_names_the_queries_classes_and_text_tower() -> None:
    described = service_of(DISTILLED).description()["model"]
    assert (described["queries"], described["classes"], described["text_tower"]) == (["cls", "distillation"], 7, False)
    assert service_of(SIGLIP).description()["model"]["queries"] == ["probe"]
    names = {o["name"] for o in service_of(CLIP).description()["methods"][0]["options"]}
    assert {"query", "top_k", "labels"} <= names


TINY_V2 = replace(VARIANTS["dinov2_vits14"], name="tiny_dinov2", embed_dim=32, depth=5, num_heads=2)


@pytest.mark.parametrize("layers", [1, 4])
def test_dinov2s_official_linear_heads_read_the_last_blocks_cls_and_the_patch_mean(layers: int, tmp_path: Path) -> None:
    """The hub's dinov2_vit*14_lc: a {weight, bias} head over [CLS] (of the last 1 or 4 blocks) and the
    patches' mean, joined to the backbone at archive time; every method's pass records what it reads."""
    torch.manual_seed(0)
    backbone = build_model(TINY_V2, None).state_dict()
    head = {"weight": torch.randn(1000, (1 + layers) * 32), "bias": torch.randn(1000)}
    torch.save(backbone, tmp_path / "backbone.pth")
    torch.save(head, tmp_path / "head.pth")
    loaded = load_checkpoint(tmp_path / "backbone.pth", TINY_V2, head=tmp_path / "head.pth")
    assert (loaded.variant.num_classes, loaded.variant.head_input) == (1000, "token_mean" if layers == 1 else "cls4_mean")
    model = build_model(loaded.variant, loaded.state)
    service = tiny_service(loaded.variant, model=model, short_side=42)
    image = png(42, 56)
    x = tensor_of(service, image)
    with torch.inference_mode():  # the official wrapper's input, from the reference (explicit) path
        tokens, rope = model.prepare_tokens(x)
        outputs = []
        for blk in model.blocks:
            tokens = blk(tokens, rope, explicit=True)
            outputs.append(model.norm(tokens))
        classes = [o[:, 0] for o in outputs[-layers:]]
        linear_input = torch.cat([*classes, outputs[-1][:, 1:].mean(dim=1)], dim=-1)
        expected = (linear_input @ head["weight"].T + head["bias"]).softmax(-1)[0]
    top = torch.argsort(expected, descending=True)[:5].tolist()
    for options in ({}, {"layer": 0}, {"layer": 3}, {"layers": "1,4"}, {"method": "rollout"}, {"method": "pca"}):
        predictions = explain(service, options, image).predictions
        assert [p["index"] for p in predictions] == top, options
        assert np.allclose([p["probability"] for p in predictions], expected[top].numpy(), atol=1e-6), options


def test_a_linear_head_must_fit_a_dinov2_backbone(tmp_path: Path) -> None:
    torch.save(build_model(TINY_V2, None).state_dict(), tmp_path / "backbone.pth")
    for head, message in (
        ({"weight": torch.randn(1000, 3 * 32), "bias": torch.randn(1000)}, "2C \\(layers=1\\) or 5C"),
        ({"weight": torch.randn(1000, 64)}, "holds weight and bias"),
    ):
        torch.save(head, tmp_path / "head.pth")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "backbone.pth", TINY_V2, head=tmp_path / "head.pth")


@pytest.mark.parametrize("variant", [CLASSIFIER, DISTILLED, CLIP, SIGLIP], ids=lambda v: v.name)
def test_every_method_answers_for_every_family(variant: Variant) -> None:
    """docs/models.md's families x methods table: each registered method serves each family, its maps
    over the patch grid (the class tokens and registers left out)."""
    service = service_of(variant)
    needs = {"similarity": {"point": "3,3"}}
    for name in METHODS:
        if isinstance(METHODS[name], ExplainMethod) and variant.text is not None:  # no head: a prompt to explain
            needs[name] = {"target": "text:a photo"}
        result = explain(service, {"method": name, "upsample": "false", **needs.get(name, {})})
        main = result.arrays[result.outputs[0].name]
        assert main.shape[-2:] == (5, 7), (name, main.shape)
        assert np.isfinite(main).all(), name
    model, x = service.model, tensor_of(service, png())
    with torch.inference_mode():
        rows = model.get_cls_attention(x, None, explicit=True)[0, :, variant.num_prefix_tokens :]  # (heads, patches)
    served = explain(service, {"upsample": "false"}).arrays["attention"]  # the pooling query's maps, the reference's
    assert np.allclose(served, rows.reshape(4, 5, 7).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        (CLASSIFIER, {}),
        (CLASSIFIER, {"layer": 0}),
        (CLASSIFIER, {"layers": "0,1"}),
        (CLASSIFIER, {"method": "rollout", "layer": 1}),
        (CLASSIFIER, {"method": "pca"}),
        (CLASSIFIER, {"method": "similarity", "point": "3,3"}),
        (DISTILLED, {"method": "rollout", "query": "distillation"}),
        (SIGLIP, {"labels": ["a"], "layer": 1}),
        (SIGLIP, {"labels": ["a"], "method": "rollout"}),
    ],
)
def test_predictions_come_from_the_methods_own_pass_each_block_once(variant: Variant, options: dict) -> None:
    """With predictions asked for, every block runs once per request: the head reads the method's own
    pass, no second one (``VisionTransformer.recording_final``)."""
    service = service_of(variant)
    calls: list[int] = []
    hooks = [blk.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, blk in enumerate(service.model.blocks)]
    try:
        result = explain(service, {"top_k": 1, **options})
    finally:
        for hook in hooks:
            hook.remove()
    assert result.predictions and sorted(calls) == list(range(variant.depth)), calls


def test_the_cost_counts_the_heads_blocks_and_the_uncached_texts() -> None:
    service = service_of(CLIP)
    service.cost, service.learned = CostModel(per_token=1e-6, per_pair=1e-9), None  # the declared factors only
    request = ImageRequest(png(), {"layer": 0, "labels": ["a cat", "a dog"]})
    without = service.prepare(ImageRequest(png(), {"layer": 0})).cost_s
    first = service.prepare(request).cost_s
    assert first > without > 0
    assert service.prepare(request).blocks == 3  # block 0, then the 2 after it for the head
    explain(service, {"labels": ["a cat", "a dog"]})  # now cached
    assert service.prepare(request).cost_s < first
