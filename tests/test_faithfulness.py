"""How faithful is a map (``faithfulness=``, vitscope/faithfulness.py): the protocol on hand-computed
curves, the batched perturbed passes against one-by-one, a constructed model whose class is driven by
one region only (the true region's map beats a random order and the inverted map), the cost model, the
400s, and the field in every protocol that carries the metadata."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from bench import faithfulness as harness
from bench.faithfulness import REGION_HEAD_SCALE
from testkit.checkpoints import encode
from testkit.constructed import REGION_CLASSIFIER, region_classifier, region_image, region_mask
from testkit.handler import MODEL_NAME as NAME
from testkit.handler import answer
from tests.support.services import tiny_service
from tests.test_explain import FAMILIES, family_service, served
from tests.test_predictions import png
from vitscope import faithfulness
from vitscope.cost import CostModel
from vitscope.errors import RequestError
from vitscope.faithfulness import DELETION, INSERTION, METRICS, auc, curves, kept, ranking, step_counts
from vitscope.model import relevance
from vitscope.schema import AttentionResult, ImageRequest, response_fields
from vitscope.service import Prepared

TOL = {"atol": 1e-5, "rtol": 0.0}
MARGIN_RANDOM = 0.1  # the true region's AUC beats the random order's by at least this (observed: 0.13..0.28)
MARGIN_INVERTED = 0.4  # ... and the inverted map's by at least this (observed: 0.5)


def joint_dim(model) -> int:
    return model.variant.proj_dim or model.variant.embed_dim


def counting_scorer(image: torch.Tensor):
    """A scorer reading the perturbed copies themselves: the share of pixels still the image's (the
    ``mean`` baseline is 0 and the image is not), one column."""

    def score(batch: torch.Tensor) -> torch.Tensor:
        return (batch == image[None]).all(dim=1).float().mean(dim=(1, 2))[:, None]  # (M, 1)

    return score


# ----------------------------------------------------------------------------- the protocol
def test_auc_is_the_trapezoid_over_the_fractions() -> None:
    assert auc([0.0, 1.0, 0.5]) == pytest.approx((0 + 1) / 2 * 0.5 + (1 + 0.5) / 2 * 0.5)  # 0.625
    assert auc([1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.0) and auc([0.2, 0.2]) == pytest.approx(0.2)
    assert auc([1.0, 0.5, 0.25, 0.0]) == pytest.approx((1.5 + 0.75 + 0.25) / 2 / 3)


def test_order_ties_steps_and_the_random_order() -> None:
    values = np.array([[1.0, 3.0, 3.0], [0.0, 3.0, 1.0]], np.float32)
    assert ranking(values).tolist() == [1, 2, 4, 0, 5, 3]  # descending, ties by row-major index
    assert step_counts(6, 4).tolist() == [0, 2, 3, 5, 6]  # round(k * 6 / 4), 1.5 and 4.5 rounded up
    assert step_counts(35, 16).tolist() == [int(np.floor(k * 35 / 16 + 0.5)) for k in range(17)]
    order = ranking(values)
    deletion, insertion = kept(order, step_counts(6, 4), DELETION, (2, 3)), kept(order, step_counts(6, 4), INSERTION, (2, 3))
    assert deletion.shape == (5, 2, 3) and np.array_equal(deletion, ~insertion)
    assert sorted(np.flatnonzero(~deletion[1]).tolist()) == [1, 2]  # the first step removes the two highest patches
    assert deletion[0].all() and not deletion[-1].any()  # from the image to the baseline
    assert np.array_equal(faithfulness.random_ranking(35), np.random.default_rng(0).permutation(35))  # seed 0, every request


def test_the_curves_on_a_scorer_that_counts_the_kept_patches() -> None:
    """With a score that is the share of the image left, deletion is 1 - n_k/P and insertion n_k/P for
    every order (the random one too): P = 6 patches of 4 pixels, S = 4 steps, AUCs by hand."""
    image = torch.rand(3, 4, 6) + 0.5  # (3, H, W), no zero: the mean baseline differs everywhere
    values = np.array([[[0.5, 0.2, 0.9], [0.1, 0.3, 0.4]]], np.float32)  # (1, 2, 3)
    baseline = faithfulness.baseline_of(image, "mean", 2)
    (entry,) = curves(values, image, baseline, counting_scorer(image), METRICS, 4, 2)
    gone = np.array([0, 2, 3, 5, 6]) / 6
    for curve in (entry["deletion"], entry["random"]["deletion"]):
        assert np.allclose(curve["curve"], 1 - gone) and curve["auc"] == pytest.approx(22 / 48)
    for curve in (entry["insertion"], entry["random"]["insertion"]):
        assert np.allclose(curve["curve"], gone) and curve["auc"] == pytest.approx(26 / 48)


def test_the_blur_baseline_is_a_gaussian_of_one_patch() -> None:
    """sigma = the patch size in pixels, radius 3 sigma, edges replicated: scipy's gaussian_filter(mode='nearest')."""
    ndimage = pytest.importorskip("scipy.ndimage")
    image = torch.randn(3, 24, 40)
    blurred = faithfulness.baseline_of(image, "blur", 8).numpy()
    expected = np.stack([ndimage.gaussian_filter(c, 8.0, mode="nearest", truncate=3.0) for c in image.numpy().astype(np.float64)])
    assert np.allclose(blurred, expected, atol=1e-5)
    assert faithfulness.baseline_of(image, "mean", 8).abs().sum() == 0  # the normalisation's mean colour


# ----------------------------------------------------------------------------- batched passes
@pytest.mark.parametrize("family", ["vit", "clip", "registers"])
def test_batched_perturbations_equal_one_by_one(family: str) -> None:
    """fp32: the copies scored in batches (of 32, of 5) equal each scored alone to 1e-5; the served curves'
    unperturbed ends are the scores the response's targets report."""
    service = family_service(family)
    target = "text:a photo of a cat" if service.variant.text is not None else "2"
    (result,) = served(service, {"method": "legrad", "target": target, "faithfulness": "deletion,insertion", "upsample": "false"})
    (entry,) = result.faithfulness or []
    score = result.targets[0]["score"]  # type: ignore[index]
    assert entry["deletion"]["curve"][0] == pytest.approx(score, abs=1e-5) and entry["insertion"]["curve"][-1] == pytest.approx(
        score, abs=1e-5
    )
    image = service.prepare(ImageRequest(png(), {})).tensor
    model = service.model
    vector = service.predictor.text_embeddings(["a photo of a cat"]) if service.variant.text is not None else None
    kind = relevance.TEXT if vector is not None else relevance.CLASS
    goals = relevance.make_goals([[kind]], [[2]], [[vector[0] if vector is not None else None]], joint_dim(model), image.device)
    scorer = faithfulness.goal_scorer(model, goals, "fp32")
    values = result.arrays["relevance"]
    baseline = faithfulness.baseline_of(image, "blur", model.patch_size)
    alone = curves(values, image, baseline, scorer, METRICS, 8, model.patch_size, copies=1)
    for copies in (32, 5):
        together = curves(values, image, baseline, scorer, METRICS, 8, model.patch_size, copies=copies)
        for a, b in zip(alone, together, strict=True):
            for metric in METRICS:
                assert np.allclose(a[metric]["curve"], b[metric]["curve"], **TOL), (family, copies, metric)
                assert np.allclose(a["random"][metric]["curve"], b["random"][metric]["curve"], **TOL)


# ----------------------------------------------------------------------------- a constructed model
def region_service():
    """The region classifier (testkit/constructed.py), its head 20 times steeper: class k reads region
    k's colour only, and its probability moves by tenths (not hundredths) as the region goes."""
    return tiny_service(REGION_CLASSIFIER, model=region_classifier(head_scale=REGION_HEAD_SCALE), short_side=32)


def test_the_true_region_beats_the_random_order_and_the_inverted_map() -> None:
    """Class k is driven by region k's patches only: ordering by region k's mask gives a deletion AUC
    lower, and an insertion AUC higher, than the random order's (by MARGIN_RANDOM) and the inverted
    mask's (by MARGIN_INVERTED), on both regions and two images. The mean baseline: this model reads
    colour, which a blur (sigma = one patch) keeps."""
    service = region_service()
    model = service.model
    for seed in (0, 1):
        image = service.prepare(ImageRequest(encode(region_image(seed)), {})).tensor
        baseline = faithfulness.baseline_of(image, "mean", model.patch_size)
        for k in (0, 1):
            goals = relevance.make_goals([[relevance.CLASS]], [[k]], [[None]], joint_dim(model), image.device)
            scorer = faithfulness.goal_scorer(model, goals, "fp32")
            true = region_mask(k).float().numpy()[None]  # (1, 4, 4)
            (right,) = curves(true, image, baseline, scorer, METRICS, 16, model.patch_size)
            (wrong,) = curves(1 - true, image, baseline, scorer, METRICS, 16, model.patch_size)
            deletion, insertion = right["deletion"]["auc"], right["insertion"]["auc"]
            random = right["random"]
            assert deletion + MARGIN_RANDOM < random["deletion"]["auc"] and deletion + MARGIN_INVERTED < wrong["deletion"]["auc"], (seed, k)
            assert insertion > random["insertion"]["auc"] + MARGIN_RANDOM and insertion > wrong["insertion"]["auc"] + MARGIN_INVERTED
            assert wrong["random"] == random  # the random order does not depend on the map


def test_each_target_gets_its_own_curves_aligned_with_targets() -> None:
    """LeGrad on the region classifier, two targets in one request: one entry per target, in the order of
    ``targets``, each target's map beating the random order, whose copies both targets share."""
    service = region_service()
    (result,) = served(
        service,
        {"method": "legrad", "target": "1|0", "faithfulness": "deletion,insertion", "faithfulness_baseline": "mean"},
        [encode(region_image(0))],
    )
    entries, targets = result.faithfulness or [], result.targets or []
    assert [e["target"] for e in entries] == [t["target"] for t in targets] == ["class 1", "class 0"]
    for entry, target in zip(entries, targets, strict=True):
        assert entry["score"] == "probability" and set(entry) == {"target", "score", "deletion", "insertion", "random"}
        assert entry["deletion"]["curve"][0] == pytest.approx(target["score"], abs=1e-5)
        assert entry["deletion"]["auc"] + MARGIN_RANDOM < entry["random"]["deletion"]["auc"]
        assert entry["insertion"]["auc"] > entry["random"]["insertion"]["auc"] + MARGIN_RANDOM
        assert len(entry["deletion"]["curve"]) == 17


def test_maps_without_a_target_score_the_cosine_to_the_unperturbed_embedding() -> None:
    """On a backbone (DINOv2 with registers, no head), attention (the mean of the heads asked, the
    deepest of layers), rollout, similarity: one entry, target "image", whose deletion starts and whose
    insertion ends at cosine 1."""
    backbone = replace(FAMILIES["registers"][0], num_classes=0, head_input="token")
    torch.manual_seed(0)
    service = tiny_service(backbone, short_side=40)
    for options in (
        {"heads": "0,2", "layers": "0,1", "dtype": "float16"},
        {"method": "rollout", "faithfulness_steps": "4"},
        {"method": "similarity", "point": "3,3", "faithfulness_baseline": "mean"},
    ):
        (result,) = served(service, {**options, "faithfulness": ["insertion", "deletion"]})
        (entry,) = result.faithfulness or []
        assert (entry["target"], entry["score"], list(entry)[2:]) == ("image", "cosine", ["deletion", "insertion", "random"]), options
        assert entry["deletion"]["curve"][0] == pytest.approx(1.0, abs=1e-5) and entry["insertion"]["curve"][-1] == pytest.approx(
            1.0, abs=1e-5
        )
    last = service.model.depth - 1
    (deepest,) = served(service, {"heads": "0,2", "layer": str(last), "faithfulness": "deletion"})
    (layered,) = served(service, {"heads": "0,2", "layers": f"0,{last}", "faithfulness": "deletion"})
    assert deepest.faithfulness == layered.faithfulness  # with layers=, the deepest block's head mean orders the patches


def test_maps_without_a_target_on_a_classifier_score_its_top_class() -> None:
    """On a classifier, attention and rollout score the unperturbed image's top class (as a relevance
    map's target=top would): target "class <k>", a probability, the deletion curve starting at the
    top prediction's probability, so that every method's AUCs on one model are comparable."""
    service = region_service()
    for options in ({}, {"method": "rollout"}):
        (result,) = served(service, {**options, "faithfulness": "deletion", "top_k": "1"}, [encode(region_image(0))])
        (entry,) = result.faithfulness or []
        (top,) = result.predictions or []
        assert (entry["target"], entry["score"]) == (f"class {top['index']}", "probability"), options
        assert entry["deletion"]["curve"][0] == pytest.approx(top["probability"], abs=1e-5)


# ----------------------------------------------------------------------------- cost and errors
def test_the_cost_model_counts_the_extra_passes_and_admission_refuses() -> None:
    """Each curve is S + 1 whole forward passes: per metric, one set per target and one for the random
    order (a map without a target: one more pass for its own embedding). Over the budget: 413."""
    cost = CostModel(per_token=1e-4, per_pair=0.0)
    service = tiny_service(REGION_CLASSIFIER, model=region_classifier(), short_side=32, cost=cost, cost_budget_s=10.0)
    image = encode(region_image(0))
    tokens = 1 + 16  # [CLS] and 4 x 4 patches
    plain = service.prepare(ImageRequest(image, {"method": "legrad", "target": "0|1"}))
    both = service.prepare(ImageRequest(image, {"method": "legrad", "target": "0|1", "faithfulness": "deletion,insertion"}))
    assert isinstance(plain, Prepared) and isinstance(both, Prepared)
    passes = 2 * 17 * (2 + 1)  # metrics x (S + 1) x (targets + the random order)
    assert both.cost_s - plain.cost_s == pytest.approx(cost.estimate(tokens, passes * service.variant.depth))
    attention = service.prepare(ImageRequest(image, {"faithfulness": "deletion", "faithfulness_steps": "8"}))
    bare = service.prepare(ImageRequest(image, {}))
    assert isinstance(attention, Prepared) and isinstance(bare, Prepared)
    assert attention.cost_s - bare.cost_s == pytest.approx(cost.estimate(tokens, (9 * 2 + 1) * service.variant.depth))
    tight = tiny_service(REGION_CLASSIFIER, model=region_classifier(), short_side=32, cost=cost, cost_budget_s=plain.cost_s * 1.5)
    (fine,) = tight.explain([ImageRequest(image, {"method": "legrad", "target": "0|1"})])
    (refused,) = tight.explain([ImageRequest(image, {"method": "legrad", "target": "0|1", "faithfulness": "deletion"})])
    assert isinstance(fine, AttentionResult) and isinstance(refused, RequestError) and refused.status == 413
    assert "lower faithfulness_steps (now 16" in str(refused)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"faithfulness": "deletion,blur"}, r"faithfulness='deletion,blur': unknown metric\(s\) \['blur'\]; give deletion or insertion"),
        ({"faithfulness": "[]"}, "faithfulness='\\[\\]': no metric"),
        ({"faithfulness": 3}, "faithfulness=3: give deletion or insertion"),
        ({"faithfulness": "deletion", "faithfulness_steps": "1"}, r"faithfulness_steps=1 is out of range: give 2\.\.64"),
        ({"faithfulness": "deletion", "faithfulness_steps": 65}, r"faithfulness_steps=65 is out of range"),
        ({"faithfulness": "deletion", "faithfulness_steps": "many"}, "faithfulness_steps='many' is not an integer"),
        ({"faithfulness": "deletion", "faithfulness_baseline": "noise"}, r"faithfulness_baseline='noise' is not one of \['blur', 'mean'\]"),
        ({"faithfulness": "deletion", "format": "npy"}, "faithfulness: format=npy carries one array"),
        ({"faithfulness_steps": "8"}, "faithfulness_steps applies with faithfulness="),
        ({"faithfulness": "insertion", "method": "pca"}, "faithfulness does not apply to method=pca"),
    ],
)
def test_each_bad_input_is_a_400_naming_the_option(options: dict, message: str) -> None:
    service = family_service("vit")
    (result,) = service.explain([ImageRequest(png(), options)])
    assert isinstance(result, RequestError) and result.status == 400, result
    assert re.search(message, str(result)), str(result)


def test_an_accept_header_asking_for_npy_is_refused_too() -> None:
    (reply,) = answer(family_service("vit"), [{"data": png(), "faithfulness": "deletion"}], accepts=["application/x-npy"])
    assert reply.status == 400 and "format=npy" in orjson.loads(reply.body)["error"]


# ----------------------------------------------------------------------------- every protocol
def test_the_field_is_in_every_protocol_that_carries_the_metadata() -> None:
    """Plain JSON, npz's meta, KServe v1's prediction and v2's parameters (a JSON string), and the schema."""
    from vitscope_client import response

    assert "faithfulness" in response_fields()
    service = family_service("vit")
    image, b64 = png(), base64.b64encode(png()).decode()
    fields = {"method": "legrad", "target": "1", "faithfulness": "deletion", "faithfulness_steps": "4", "upsample": "false"}
    (expected,) = served(service, fields)
    wanted = expected.faithfulness
    assert wanted and len(wanted[0]["deletion"]["curve"]) == 5

    def same(got: object) -> None:
        assert isinstance(got, list) and len(got) == 1
        assert got[0]["target"] == "class 1" and np.allclose(got[0]["deletion"]["curve"], wanted[0]["deletion"]["curve"], atol=1e-6)

    json_reply, npz_reply = answer(service, [{"data": image, **fields}, {"data": image, **fields, "format": "npz"}])
    doc = orjson.loads(json_reply.body)
    same(doc["faithfulness"])
    assert response.parse_response(doc, None).meta["faithfulness"] == doc["faithfulness"]  # the client keeps it as metadata
    with np.load(io.BytesIO(npz_reply.body), allow_pickle=False) as npz:
        same(orjson.loads(str(npz["meta"]))["faithfulness"])
    (v1,) = answer(service, [{"body": {"instances": [{"data": b64, **fields}]}}])
    same(orjson.loads(v1.body)["predictions"][0]["faithfulness"])
    v2_body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}], "parameters": fields}
    (v2,) = answer(service, [{"body": v2_body}])
    outputs = orjson.loads(v2.body)["outputs"]
    same(orjson.loads(outputs[0]["parameters"]["faithfulness"]))
    listed = {"images": [b64, b64], **fields}
    (several,) = answer(service, [{"body": listed}])
    for item in orjson.loads(several.body)["images"]:
        same(item["faithfulness"])


# ----------------------------------------------------------------------------- the harness (bench/faithfulness.py)
def test_the_harness_statistics() -> None:
    """Spearman with ties equals scipy's; the bootstrap interval holds the mean and is seeded."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    assert harness.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert harness.spearman(a, np.ones(30)) == 0.0  # a constant map has no order
    values = rng.normal(size=12)
    mean, low, high = harness.bootstrap(values, 500)
    assert mean == pytest.approx(values.mean()) and low < mean < high
    assert harness.bootstrap(values, 500) == (mean, low, high)
    assert harness.bootstrap([0.25], 100) == (0.25, 0.25, 0.25)


def test_the_harness_ranks_the_methods_and_the_randomisation_check_flags_the_edge_detector() -> None:
    """On the region classifier: the explanation maps (legrad, Captum's Integrated Gradients) beat the
    random order on both metrics, by MARGIN_RANDOM; re-initialising its one block moves attention's,
    legrad's and ig's maps, while the edge detector (image gradients) stays put: "ignores the weights"."""
    subject = harness.region_subject()
    images = harness.read_images(None, 2)
    options = harness.Options(steps=8, baseline="mean", ig_steps=16)
    run = harness.Run(["attention", "legrad", "ig", "edge"], [name for name, _ in images])
    run.measured, tops = harness.measure_all(subject, images, run.methods, options)
    assert tops == [0, 0]  # region 0 is brighter in these images: the top class
    for method in ("legrad", "ig"):
        assert np.mean(run.aucs(method, DELETION)) + MARGIN_RANDOM < np.mean(run.aucs(method, DELETION, random=True)), method
        assert np.mean(run.aucs(method, INSERTION)) > np.mean(run.aucs(method, INSERTION, random=True)) + MARGIN_RANDOM, method
    harness.randomisation(subject, images, run, tops, 1, options)
    size = {method: float(np.mean(np.abs(values))) for method, values in run.correlations.items()}
    assert size["edge"] == pytest.approx(1.0) and size["edge"] >= harness.IGNORES
    assert max(size["attention"], size["legrad"], size["ig"]) < harness.IGNORES, size
    check = harness.tables(run, 100, 1)[2]
    verdicts = {row[0]: row[-1] for row in check.rows}
    assert verdicts == {"attention": harness.CHANGED, "legrad": harness.CHANGED, "ig": harness.CHANGED, "edge": harness.IGNORED}


def test_the_harness_writes_its_report(tmp_path: Path) -> None:
    """``python -m bench.faithfulness``: Markdown, JSON in bench/report's format (docs generate from it)
    and a plot; the ranking tables list every method once, ranked; bad arguments say what to give."""
    args = ["--model", "region", "--baseline", "mean", "--methods", "rollout,gradcam", "--steps", "4", "--limit", "2"]
    assert harness.main([*args, "--bootstrap", "50", "--out", str(tmp_path), "--name", "region"]) == 0
    report = orjson.loads((tmp_path / "region.json").read_bytes())
    deletion, insertion, check = report["tables"]
    assert [row[0] for row in deletion["rows"]] == [1, 2] and {row[1] for row in insertion["rows"]} == {"rollout", "gradcam"}
    assert deletion["rows"][0][1] == "gradcam"  # the class's map removes the class first; rollout's does not
    assert "Spearman" in check["title"] and "Machine: " in report["machine"][0]
    assert (tmp_path / "region.png").stat().st_size > 0 and "# Faithfulness: region_classifier" in (tmp_path / "region.md").read_text()
    with pytest.raises(SystemExit, match="unknown \\['blur'\\]"):
        harness.main(["--model", "region", "--methods", "legrad,blur"])
    with pytest.raises(SystemExit, match="need the model in process"):
        harness.main(["--model", "x", "--images", str(tmp_path), "--methods", "ig", "--url", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit, match="--images DIR"):
        harness.main(["--model", "dino_vitt16"])


def test_the_randomisation_check_changes_the_last_blocks_only() -> None:
    """The re-initialised copy differs from a random-weight model in its last k blocks (a fresh seed,
    not the model's own, which would give the same blocks back) and equals it elsewhere."""
    subject = harness.load_subject("dino_vitt16", "random", torch.device("cpu"))
    changed = harness.reinitialised(subject, 2).model.state_dict()
    for key, value in subject.model.state_dict().items():
        last = key.startswith(("blocks.10.", "blocks.11.")) and key.endswith("weight") and "norm" not in key
        assert torch.equal(value, changed[key]) != last, key


def test_the_harness_against_a_served_model_equals_the_service_in_process(served, tmp_path: Path) -> None:
    """``--url``: TorchServe's answers give the same curves as the same checkpoint served in process;
    the report ranks what was served, without a randomisation check (the model is not here)."""
    base = served.url.rsplit("/predictions/", 1)[0]
    image = encode(region_image(0))
    options = harness.Options(steps=4, baseline="mean", short_side=64)
    over_http = harness.http_map(base, NAME, image, "rollout", options).curves
    (local,) = served.in_process.explain([ImageRequest(image, harness.request_options("rollout", options, "top"))])
    assert not isinstance(local, RequestError)
    (entry,) = local.faithfulness or []
    for metric in METRICS:
        assert np.allclose(over_http[metric]["curve"], entry[metric]["curve"], **TOL)
        assert np.allclose(over_http["random"][metric]["curve"], entry["random"][metric]["curve"], **TOL)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "region.png").write_bytes(image)
    args = [
        "--images",
        str(tmp_path / "images"),
        "--model",
        NAME,
        "--url",
        base,
        "--methods",
        "attention,rollout",
        "--steps",
        "4",
        "--short-side",
        "64",
    ]
    assert harness.main([*args, "--bootstrap", "20", "--out", str(tmp_path), "--name", "served"]) == 0
    report = orjson.loads((tmp_path / "served.json").read_bytes())
    assert [t["title"].split(" ")[0] for t in report["tables"]] == ["Faithfulness", "Faithfulness"]  # no randomisation check
    assert f"{NAME} served at {base}" in report["title"]
