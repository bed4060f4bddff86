"""The explanation methods (legrad, chefer, gradcam) against references written from their repositories'
code, in the naive N x N form (every block's softmax attention explicit, its gradient read by autograd),
on random models of every family, with registers and non-square grids; Grad-CAM also against
pytorch-grad-cam itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from testkit.checkpoints import TINY, tiny_replica
from testkit.references import chefer_reference, gradcam_reference, legrad_reference
from tests.support.services import tiny_service
from tests.test_predictions import CLASSIFIER, CLIP, DISTILLED, SIGLIP, png, service_of
from vitscope.errors import RequestError
from vitscope.model import relevance
from vitscope.model.vit import VisionTransformer
from vitscope.schema import AttentionResult, ImageRequest

TOL = {"atol": 1e-5, "rtol": 1e-5}
REGISTERS = replace(tiny_replica("dinov2_vits14_reg"), num_classes=5)  # a classifier with registers (patch 14)
DINOV3 = replace(tiny_replica("dinov3_vits16"), num_classes=5)  # RoPE, storage tokens
METHODS = ("legrad", "chefer", "gradcam")


# ----------------------------------------------------------------------------- helpers
def text_vectors(service, prompts: list[str]) -> torch.Tensor:
    return service.predictor.text_embeddings(prompts).clone()


def served(service, options: dict, images: list[bytes] | None = None) -> list[AttentionResult]:
    results = service.explain_together([[ImageRequest(image, options) for image in images or [png()]]])[0]
    for result in results:
        if isinstance(result, RequestError):
            raise result
    return results


def tensor(service, image: bytes) -> torch.Tensor:
    return service.prepare(ImageRequest(image, {})).tensor[None]


FAMILIES = {
    "vit": (CLASSIFIER, ()),
    "deit_distilled": (DISTILLED, ()),
    "registers": (REGISTERS, ()),
    "dinov3": (DINOV3, ()),
    "clip": (CLIP, ()),
    "siglip": (SIGLIP, ()),
}


def family_service(name: str):
    variant, labels = FAMILIES[name]
    if variant.text is not None:
        return service_of(variant, labels)
    torch.manual_seed(0)
    model = VisionTransformer(variant).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return tiny_service(variant, model=model, short_side=40)


def targets_for(service, name: str) -> tuple[list[str], list[tuple[str, object]]]:
    """Two targets the family offers, as the request names them and as the references take them."""
    if service.variant.text is not None:
        prompts = ["a photo of a cat", "a red car"]
        return [f"text:{p}" for p in prompts], [("text", v) for v in text_vectors(service, prompts)]
    return ["1", "3"], [("class", 1), ("class", 3)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_method_equals_its_reference(family: str, method: str) -> None:
    """In fp32, every map equals the naive reference written from its repository's code to 1e-5, on a
    non-square grid (40x56: 5x7 patches at 8; registers' 14-px patches: 2x4), each target its own map
    from one request."""
    service = family_service(family)
    model = service.model
    names, targets = targets_for(service, family)
    (result,) = served(service, {"method": method, "target": names, "upsample": "false"})
    ours = torch.from_numpy(result.arrays["relevance"])
    assert ours.shape[0] == 2 and [t["target"] for t in result.targets] == [n if n.startswith("text:") else f"class {n}" for n in names]
    x = tensor(service, png())
    empty = text_vectors(service, [relevance.EMPTY_PROMPT])[0] if model.attn_pool is not None and method == "legrad" else None
    for t, target in enumerate(targets):
        if method == "legrad":
            reference = legrad_reference(model, x.clone(), target, model.depth - 2, empty)
        elif method == "chefer":
            reference = chefer_reference(model, x.clone(), target)
        else:
            reference = gradcam_reference(model, x.clone(), target, model.depth - 1)
        assert ours[t].shape == reference.shape
        assert torch.allclose(ours[t], reference, **TOL), (family, method, t, (ours[t] - reference).abs().max())
    assert not torch.allclose(ours[0], ours[1], atol=1e-3), "two targets, two different maps"


def test_embedding_targets_on_a_backbone_equal_the_reference() -> None:
    """DINO (no head): target=embedding explains each image's cosine to the first image's embedding (the
    first image's: to the mean of the others'), for each method."""
    service = tiny_service(TINY, short_side=32)
    model = service.model
    images = [png(32, 48, seed=s) for s in (1, 2, 3)]
    xs = [tensor(service, image) for image in images]
    with torch.no_grad():
        embeddings = [model.embed_image(model(x))[0] for x in xs]
    references = [torch.stack(embeddings[1:]).mean(0), embeddings[0], embeddings[0]]
    for method in METHODS:
        results = served(service, {"method": method, "target": "embedding", "upsample": "false"}, images)
        for x, reference, result in zip(xs, references, results, strict=True):
            target = ("embedding", reference)
            if method == "legrad":
                expected = legrad_reference(model, x.clone(), target, model.depth - 2)
            elif method == "chefer":
                expected = chefer_reference(model, x.clone(), target)
            else:
                expected = gradcam_reference(model, x.clone(), target, model.depth - 1)
            assert torch.allclose(torch.from_numpy(result.arrays["relevance"][0]), expected, **TOL), method
            cosine = F.cosine_similarity(model.embed_image(model(x))[0], reference, dim=0)
            assert result.targets == [{"target": "embedding", "score": pytest.approx(float(cosine), abs=1e-5)}]


class Logits(nn.Module):
    """Our model as pytorch-grad-cam calls a classifier: images -> logits."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.vit = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.logits(self.vit.final_tokens(images))


class TokensToGrid:
    """pytorch-grad-cam's reshape_transform for our token layout: the class and register tokens dropped,
    the patches (B, h*w, C) -> (B, C, h, w)."""

    def __init__(self, prefix: int, h: int, w: int) -> None:
        self.prefix, self.h, self.w = prefix, h, w

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.prefix :].reshape(tokens.shape[0], self.h, self.w, -1).permute(0, 3, 1, 2)


def test_gradcam_equals_pytorch_grad_cam_itself() -> None:
    """pytorch-grad-cam (pinned) on our model, target_layers=[blocks[-1].norm1] and a reshape_transform for
    our token layout (registers and any grid), equals gradcam once resized as it resizes (cv2, linear)."""
    cv2 = pytest.importorskip("cv2")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for variant in (CLASSIFIER, REGISTERS):
        service = family_service("vit" if variant is CLASSIFIER else "registers")
        model = service.model
        (result,) = served(service, {"method": "gradcam", "target": "2", "upsample": "false"})
        x = tensor(service, png())
        h, w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size

        wrapper = Logits(model).requires_grad_(True)
        reshape = TokensToGrid(model.num_prefix_tokens, h, w)
        with GradCAM(model=wrapper, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as cam:
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(2)])[0]  # (H, W), resized
        model.requires_grad_(False)
        ours = cv2.resize(np.float32(result.arrays["relevance"][0]), (x.shape[-1], x.shape[-2]))
        ours = ours - ours.min()
        ours = ours / (1e-7 + ours.max())
        assert np.allclose(ours, theirs, atol=1e-5), (variant.name, np.abs(ours - theirs).max())


def test_top_is_the_prediction_and_the_predictions_come_alongside() -> None:
    service = family_service("vit")
    (result,) = served(service, {"method": "legrad"})
    (top,) = result.targets
    assert result.predictions and top["index"] == result.predictions[0]["index"] and top["target"] == "top"
    assert top["score"] == pytest.approx(result.predictions[0]["probability"], abs=1e-6)
    assert result.arrays["relevance"].shape == (1, 40, 56)  # upsampled as attention is
    (explicit,) = served(service, {"method": "legrad", "target": str(top["index"])})
    assert np.array_equal(explicit.arrays["relevance"], result.arrays["relevance"])


def test_batched_images_with_different_targets_equal_each_alone() -> None:
    """Images of one size share the pass whatever their targets (padding to the most): each map equals
    the image's own request."""
    service = family_service("clip")
    images = [png(seed=s) for s in (4, 5)]
    options = [{"method": m, "target": t, "upsample": "false"} for m in ("chefer",) for t in (["text:a cat"], ["text:a dog", "text:a car"])]
    together = service.explain_together([[ImageRequest(images[0], options[0])], [ImageRequest(images[1], options[1])]])
    for image, option, (result,) in zip(images, options, together, strict=True):
        (alone,) = served(service, option, [image])
        assert np.allclose(result.arrays["relevance"], alone.arrays["relevance"], atol=1e-6)
        assert result.targets == [{**t, "score": pytest.approx(t["score"], abs=1e-6)} for t in alone.targets]


def test_linear_memory_path_equals_the_naive_one_at_every_chunk() -> None:
    """The row chunks (1, 7, all) give the same maps: nothing depends on how the rows are cut."""
    service = family_service("registers")
    model, x = service.model, tensor(service, png())
    for function in (relevance.chefer, relevance.legrad):
        maps = []
        for chunk in (1, 7, 1000):
            goals = relevance.make_goals([["class"]], [[2]], [[None]], model.variant.embed_dim, torch.device("cpu"))
            with torch.enable_grad():
                args = (0,) if function is relevance.chefer else (model.depth - 2,)
                maps.append(function(model, x.clone(), goals, *args, chunk=chunk)[0])
        assert all(torch.allclose(maps[0], m, atol=1e-6) for m in maps[1:])


def test_no_n_by_n_tensor_is_kept_for_autograd() -> None:
    """Linear memory: all that autograd saves while legrad or chefer runs, together, is less than one
    block's (heads, N, N) attention (the read-outs of dS/dA run without autograd, a chunk of rows at a
    time; SDPA's backward keeps q, k, v, o and a row statistic)."""
    from vitscope.model.checkpoint import build_model

    torch.manual_seed(0)
    model = build_model(CLASSIFIER, None).eval()
    x = torch.randn(1, 3, 256, 256)  # 32 x 32 patches of 8: N = 1025 tokens
    n = 1 + (256 // CLASSIFIER.patch_size) ** 2
    for function in (relevance.legrad, relevance.chefer):
        saved = [0]

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved[0] += t.numel()
            return t

        goals = relevance.make_goals([["class"]], [[1]], [[None]], model.variant.embed_dim, torch.device("cpu"))
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            function(model, x.clone(), goals, 0)
        assert 0 < saved[0] < CLASSIFIER.num_heads * n * n, (function.__name__, saved[0], CLASSIFIER.num_heads * n * n)


# ----------------------------------------------------------------------------- constructed models
def constructed_services():
    """The region classifier and the region CLIP (testkit/constructed.py), served."""
    from testkit.constructed import REGION_CLASSIFIER, REGION_CLIP, REGION_TEXT, region_classifier, region_clip
    from tests.test_predictions import BPE
    from vitscope.model.tokenizer import ClipTokenizer
    from vitscope.predictions import Predictor

    tokenizer = ClipTokenizer.from_bpe_file(BPE, REGION_TEXT.context_length)
    clip = region_clip(tokenizer)
    return (
        tiny_service(REGION_CLASSIFIER, model=region_classifier(), short_side=32),
        tiny_service(REGION_CLIP, model=clip, short_side=32, predictor=Predictor(clip, (), tokenizer)),
    )


@pytest.mark.parametrize("method", METHODS)
def test_each_map_peaks_in_the_region_that_drives_the_decision(method: str) -> None:
    """Class k (and prompt k) is driven by region k's patches only: for target k, the map's mass over
    region k is at least 20 times its mass elsewhere, for both regions, for a classifier and a text tower."""
    from testkit.checkpoints import encode
    from testkit.constructed import REGION_PROMPTS, region_image, region_mask

    classifier, clip = constructed_services()
    for seed in (0, 1):
        image = encode(region_image(seed))
        for service, targets in ((classifier, ["0", "1"]), (clip, [f"text:{p}" for p in REGION_PROMPTS])):
            (result,) = served(service, {"method": method, "target": targets, "upsample": "false"}, [image])
            maps = result.arrays["relevance"]  # (2, 4, 4)
            for k in (0, 1):
                inside, outside = maps[k][region_mask(k).numpy()].sum(), maps[k][~region_mask(k).numpy()].sum()
                assert inside > 20 * outside, (method, service.variant.name, k, inside, outside)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("family", "options", "message"),
    [
        ("vit", {"target": "7"}, r"target=7 is out of range: class indices are 0\.\.6"),
        ("vit", {"target": "kind 9"}, r"not one of the model's labels; the closest labels: \['kind \d'"),
        ("vit", {"target": "text:a dog"}, "target='text:a dog': text prompts need a text tower"),
        ("clip", {"target": "text:"}, "give a prompt of 1..300 characters after 'text:'"),
        ("clip", {"target": "text:  "}, "give a prompt"),
        ("clip", {}, "target=top on a model without a classifier is the most probable of the labels= texts"),
        ("clip", {"target": "3"}, "has no classifier head to take a class of; this model offers: top"),
        ("vit", {"target": "embedding"}, "target=embedding compares the images sent together"),
        ("vit", {"target": [str(i % 7) for i in range(17)]}, r"17 targets, more than this model's max_targets \(16\)"),
        ("vit", {"target": "1|1"}, "each target once"),
        ("vit", {"target": '["1", '}, "read as a JSON list of targets"),
        ("vit", {"target": "1", "layers": "0,1"}, "give target=..., not layers"),
        ("vit", {"target": "1", "method": "attention"}, "target applies to method=legrad or method=chefer or method=gradcam only"),
        ("vit", {"layer_index": "9"}, r"layer_index=9 is out of range"),
    ],
)
def test_each_bad_target_is_a_400_naming_the_option(family: str, options: dict, message: str) -> None:
    import re

    from tests.test_predictions import LABELS

    service = service_of(FAMILIES[family][0], LABELS if family == "vit" else ())
    (result,) = service.explain([ImageRequest(png(), {"method": "legrad", **options})])
    assert isinstance(result, RequestError) and result.status == 400, result
    assert re.search(message, str(result)), str(result)
    (fine,) = service.explain([ImageRequest(png(), {})])
    assert not isinstance(fine, RequestError)  # the service keeps serving


def test_max_targets_is_a_setting_and_the_description_lists_the_targets() -> None:
    service = tiny_service(CLASSIFIER, short_side=40, max_targets=2)
    (result,) = service.explain([ImageRequest(png(), {"method": "chefer", "target": "0|1|2"})])
    assert isinstance(result, RequestError) and "max_targets (2)" in str(result)
    assert service.description()["model"]["targets"] == [
        "top (the predicted class)",
        "a class index 0..6 or one of its 7 labels",
        "embedding (two images or more)",
    ]


def test_the_explanation_routes_default_to_legrad() -> None:
    """TorchServe's /explanations (its explain header) and KServe's :explain: method=legrad unless named."""
    from testkit.handler import handler_for, mock_context

    service = family_service("vit")
    handler = handler_for(service)
    context = mock_context(headers=[{"explain": "True"}])
    (body,) = handler.handle([{"data": png()}], context)
    import orjson

    doc = orjson.loads(body)
    assert doc["method"] == "legrad" and doc["targets"][0]["target"] == "top" and "relevance" in doc
    (body,) = handler.handle([{"data": png(), "method": "gradcam"}], mock_context(headers=[{"explain": "True"}]))
    assert orjson.loads(body)["method"] == "gradcam"
    (body,) = handler.handle([{"data": png()}], mock_context())
    assert "method" not in orjson.loads(body)  # /predictions: attention, the default


def test_the_client_titles_each_map_with_its_target_and_score(tmp_path) -> None:
    """The client (its `--target`, passed on as the option) parses `targets` and names them in the figure's title,
    and each map's panel by its target and score."""
    import orjson

    from testkit.handler import answer
    from vitscope_client import cli, response

    service = family_service("vit")
    (reply,) = answer(service, [{"data": png(), "method": "legrad", "target": "1|3", "upsample": "false"}])
    doc = orjson.loads(reply.body)
    drawn = response.parse_response(doc, None).with_image(png())
    scores = [t["score"] for t in doc["targets"]]
    assert drawn.targets == doc["targets"] and f"explains class 1 ({scores[0]:.3g}), class 3 ({scores[1]:.3g})" in drawn.title
    figure = drawn.figure()
    titles = [ax.get_title() for ax in figure.axes]
    assert f"class 1 ({scores[0]:.3g})" in titles and f"class 3 ({scores[1]:.3g})" in titles  # a panel per map, named by its target
    figure.savefig(tmp_path / "legrad.png")
    (reply,) = answer(service, [{"data": png(), "method": "chefer", "target": "2"}])
    one = response.parse_response(orjson.loads(reply.body), None).with_image(png())
    assert f"relevance: class 2 ({one.targets[0]['score']:.3g})" in [ax.get_title() for ax in one.figure().axes]
    args = cli.parse_args(["x.jpg", "--method", "legrad", "--target", "text:a dog|top"])
    assert cli.option_fields(args)["target"] == "text:a dog|top"
