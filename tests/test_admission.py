"""Cost-based admission (vitscope/cost.py): a request's time is estimated before it runs, from
constants measured on the model's own block at load; one over the budget gets 413 with how to come
within it, instead of running past TorchServe's responseTimeout (which kills the worker)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest
import requests
import torch

from scripts import archive
from testkit.checkpoints import TINY, encode, random_rgb
from testkit.handler import answer
from testkit.torchserve import ModelApiServer
from tests.support.archives import model_config
from tests.support.services import tiny_service
from vitscope.cost import CORRECTION_BOUNDS, LEARNING_RATE, PAIR_TOKENS, PROBE_TOKENS, CostModel, Learned
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import get_variant
from vitscope.schema import AttentionResult, ImageRequest
from vitscope.service import ADMISSION_SHARE, AttentionService, create_service

PNG = encode(random_rgb(64, 96, seed=1))


def test_the_cost_model_is_measured_on_the_block_and_inverts() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, None).eval()
    cost = CostModel.measure(model.blocks[0], TINY.embed_dim, TINY.num_heads, torch.device("cpu"))
    assert cost.per_pair > 0  # the attention kernel, measured alone: the quadratic term is never lost in noise
    assert 0 < cost.block_seconds(PROBE_TOKENS) < cost.block_seconds(PAIR_TOKENS) < cost.block_seconds(4 * PAIR_TOKENS)
    assert cost.estimate(1000, 6) == pytest.approx(6 * cost.block_seconds(1000))
    for seconds in (0.01, 1.0, 100.0):
        fits = cost.tokens_within(seconds, 12)
        assert cost.estimate(fits, 12) <= seconds < cost.estimate(fits + 1, 12)


def test_each_methods_correction_is_learned_from_the_passes_served() -> None:
    """The correction starts at 1, jumps to the first observed ratio, then moves by LEARNING_RATE of
    each new log-ratio; it stays within its bounds, ignores timer noise, and keeps methods apart."""
    learned = Learned()
    assert learned.correction("legrad") == 1.0
    learned.observe("legrad", estimated_s=1.0, measured_s=2.0)
    assert learned.correction("legrad") == pytest.approx(2.0) and learned.correction("chefer") == 1.0
    learned.observe("legrad", estimated_s=1.0, measured_s=0.5)
    assert learned.correction("legrad") == pytest.approx(2.0 ** (1 - LEARNING_RATE) * 0.5**LEARNING_RATE)
    for _ in range(100):
        learned.observe("chefer", estimated_s=0.1, measured_s=100.0)
    assert learned.correction("chefer") == pytest.approx(CORRECTION_BOUNDS[1])
    before = learned.correction("legrad")
    learned.observe("legrad", estimated_s=1.0, measured_s=1e-4)  # under MIN_OBSERVED_S: noise
    learned.observe("legrad", estimated_s=0.0, measured_s=1.0)  # nothing estimated: no ratio
    assert learned.correction("legrad") == before and set(learned.summary()) == {"legrad", "chefer"}


def test_the_service_scales_a_methods_estimates_by_what_its_passes_took() -> None:
    """With ``cost_learning`` on, each forward pass teaches the method's correction: a cost model that
    is 1000x too slow for this machine is corrected down (to its bound), for that method only, and the
    describe API shows the factor."""
    slow = CostModel(per_token=1.0, per_pair=0.0)  # 25 tokens x 12 blocks: 300 s estimated, milliseconds measured
    service = tiny_service(short_side=64, cost=slow, cost_learning=True)
    request = ImageRequest(PNG, {"upsample": "false", "method": "rollout"})
    before = service.prepare(request).cost_s
    for _ in range(3):  # a pass may fall under MIN_OBSERVED_S on a fast machine: slow it down
        (result,) = service.explain([request])
        assert isinstance(result, AttentionResult)
    assert service.learned is not None
    low = CORRECTION_BOUNDS[0]
    if service.learned.summary():  # passes of >= 5 ms were observed
        assert service.prepare(request).cost_s == pytest.approx(before * low)
        assert service.description()["cost_corrections"] == {"rollout": low}
        assert service.prepare(ImageRequest(PNG, {"upsample": "false"})).cost_s == pytest.approx(before / 2)  # attention: untouched
    else:
        pytest.fail("no pass of 3 took 5 ms: the test model is too small to observe on this machine")


def service_with_budget(budget: float) -> AttentionService:
    cost = CostModel(per_token=1e-4, per_pair=1e-6)  # fixed constants: the test is about the rule, not this machine
    return tiny_service(short_side=64, cost_budget_s=budget, cost=cost)


def test_a_request_over_the_budget_gets_413_saying_how_to_come_within() -> None:
    # 64x96 at patch 16: 24 patches + [CLS] = 25 tokens; one block ~ 25e-4 + 625e-6 = 3.1 ms; 12 blocks ~ 37.5 ms
    service = service_with_budget(0.05)
    ok, rollout, big = answer(
        service,
        [
            {"data": PNG, "upsample": "false"},
            {"data": PNG, "method": "rollout", "upsample": "false"},  # x2: 75 ms
            {"data": PNG, "short_side": "128", "upsample": "false"},  # 96 tokens + 1: ~0.25 s
        ],
    )
    assert ok.status == 200 and orjson.loads(ok.body)["image_size"] == [64, 96]
    (result,) = service.explain([ImageRequest(PNG, {"upsample": "false"})])
    assert isinstance(result, AttentionResult) and result.stats["cost_s"] == pytest.approx(12 * (25e-4 + 625e-6))
    for reply in (rollout, big):
        error = orjson.loads(reply.body)["error"]
        assert reply.status == 413, error
        assert "over its budget of 0.05 s per request (cost_budget_s; by default half the responseTimeout)" in error
        assert "lower short_side (about " in error
    rollout_error = orjson.loads(rollout.body)["error"]
    assert rollout_error.startswith("this request would take ~0.075 s on this server (24 patch tokens through 24 block-equivalents")
    assert rollout_error.endswith(", or use method=attention") and "patch-16" not in rollout_error  # TINY has patch 16
    side = int(orjson.loads(big.body)["error"].split("lower short_side (about ")[1].split(" px")[0])
    (fits,) = answer(service, [{"data": PNG, "short_side": str(side), "upsample": "false"}])
    assert fits.status == 200  # the size the message suggests is admitted


def test_images_sent_together_are_admitted_together() -> None:
    service = service_with_budget(0.06)  # one image (37.5 ms) fits, two (75 ms) do not
    b64 = base64.b64encode(PNG).decode()
    (one,) = answer(service, [{"body": {"images": [b64], "upsample": False}}])
    (two,) = answer(service, [{"body": {"images": [b64, b64], "upsample": False}}])
    assert one.status == 200 and two.status == 413
    assert "this request (2 images together) would take ~0.075 s" in orjson.loads(two.body)["error"]


def test_the_budget_defaults_to_half_the_response_timeout() -> None:
    service = create_service({"model": TINY.name, "weights": "random"}, None, response_timeout_s=30)
    assert service.cost_budget_s == ADMISSION_SHARE * 30 and service.cost is not None
    assert service.description()["limits"]["cost_budget_s"] == 15.0
    settings = {"model": TINY.name, "weights": "random", "cost_budget_s": 4}  # YAML's integer works
    assert create_service(settings, None, response_timeout_s=30).cost_budget_s == 4.0
    assert create_service({"model": TINY.name, "weights": "random"}, None).cost is None  # a library user: no admission


def test_a_huge_valid_request_is_refused_and_the_worker_lives(tmp_path: Path, model_api: ModelApiServer) -> None:
    """dino_vitb8 (random weights), a 1024x1024 rollout: 16,384 tokens, at max_tokens, valid. With a
    responseTimeout of 20 s TorchServe would kill the worker after 20 s of computing; the estimate
    refuses it at once, the worker keeps its pid, and the next request is answered."""
    variant = get_variant("dino_vitb8")
    settings = model_config(tmp_path, {"attention_kernel": "sdpa"}, responseTimeout=20)  # the admission is the test, not the kernel
    store = tmp_path / "store"
    args = ["--model", variant.name, "--weights", "random", "--export-path", str(store), "--config", str(settings)]
    assert archive.main(args) == 0
    image = encode(random_rgb(1024, 1024, seed=2), "JPEG")
    with model_api.register(store / f"{variant.name}.mar"):  # its model-config.yaml (responseTimeout 20) applies
        management = model_api.props["management_address"]

        def pid() -> int:
            return requests.get(f"{management}/models/{variant.name}", timeout=30).json()[0]["workers"][0]["pid"]

        before = pid()
        start = time.monotonic()
        huge = {"short_side": "1024", "method": "rollout"}
        reply = requests.post(model_api.url(variant.name), files={"data": image}, data=huge, timeout=120)
        elapsed = time.monotonic() - start
        assert reply.status_code == 413, reply.text
        error = reply.json()["error"]
        assert "over its budget of 10 s per request" in error and "use a patch-16 model (4x fewer tokens)" in error and elapsed < 10
        small_request = {"short_side": "224", "upsample": "false"}
        small = requests.post(model_api.url(variant.name), files={"data": image}, data=small_request, timeout=120)
        assert small.status_code == 200, small.text
        assert pid() == before
