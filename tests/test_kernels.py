"""The attention kernel chosen by measurement (vitscope/model/kernels.py): every candidate
computes the same attention, the plan covers every token count, and a model answers alike whichever
kernel its plan picked."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from testkit.checkpoints import TINY
from vitscope.model.checkpoint import build_model
from vitscope.model.kernels import CHUNKED, SDPA, SDPA_ONLY, KernelChoice, KernelPlan, chunked, plan_kernels, sdpa
from vitscope.service import create_service


@pytest.mark.parametrize("tokens", [1, 63, 64, 65, 301])
@pytest.mark.parametrize("chunk", [1, 64, 256])
def test_chunked_attention_is_sdpa(tokens: int, chunk: int) -> None:
    generator = torch.Generator().manual_seed(tokens)
    q, k, v = (torch.randn(2, 3, tokens, 16, generator=generator) for _ in range(3))
    torch.testing.assert_close(chunked(q, k, v, chunk), sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    low = [t.bfloat16() for t in (q, k, v)]
    a, b = chunked(*low, chunk).float(), sdpa(*low).float()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999  # bf16: the precision gate's bar


def test_a_plan_covers_every_token_count_and_defaults_to_sdpa() -> None:
    plan = KernelPlan({torch.float32: (KernelChoice(CHUNKED, 1000.0, 64), KernelChoice(SDPA, math.inf))})
    assert plan.choice(torch.float32, 10).kernel == CHUNKED and plan.choice(torch.float32, 1000).kernel == CHUNKED
    assert plan.choice(torch.float32, 1001).kernel == SDPA and plan.choice(torch.bfloat16, 10).kernel == SDPA
    assert plan.summary() == "attention kernel: float32: chunked(64) up to 1000 tokens, sdpa beyond"
    assert SDPA_ONLY.summary() == "attention kernel: sdpa (not measured)"


def test_plan_kernels_measures_each_dtype_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vitscope.model.kernels"):
        plan = plan_kernels(torch.device("cpu"), [torch.float32], heads=2, head_dim=16, tokens=(65, 257))
    (choices,) = plan.choices.values()
    assert [c.up_to for c in choices] == [pytest.approx(math.sqrt(65 * 257)), math.inf]
    assert all(c.kernel in (SDPA, CHUNKED) and (c.kernel == SDPA) == (c.chunk == 0) for c in choices)
    assert [line.split(":")[0] for line in plan.measured] == ["float32 at 65 tokens", "float32 at 257 tokens"]
    assert "sdpa " in plan.measured[0] and "chunked(64) " in plan.measured[0] and plan.summary() in caplog.text


def test_a_shape_is_measured_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second model of the same shape on the same device runs the plan measured for the first."""
    from vitscope.model import kernels

    first = plan_kernels(torch.device("cpu"), [torch.float32], heads=2, head_dim=8, tokens=(33, 65))

    def no_measuring(*_args: object, **_kwargs: object) -> float:
        raise AssertionError("measured twice")

    monkeypatch.setattr(kernels, "probe_seconds", no_measuring)
    assert plan_kernels(torch.device("cpu"), (torch.float32,), 2, 8, [33, 65]) is first
    with pytest.raises(AssertionError, match="measured twice"):  # another shape is measured
        plan_kernels(torch.device("cpu"), [torch.float32], heads=2, head_dim=8, tokens=(33, 129))


def test_a_model_answers_alike_with_either_kernel() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, None).eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.inference_mode():
        reference = model.get_cls_attention(x, 5), model.get_patch_features(x)
        model.use_kernels(KernelPlan({torch.float32: (KernelChoice(CHUNKED, math.inf, 4),)}))
        assert model.kernels.choice(torch.float32, 16).kernel == CHUNKED
        torch.testing.assert_close((model.get_cls_attention(x, 5), model.get_patch_features(x)), reference, atol=1e-5, rtol=1e-5)


def test_the_served_model_runs_the_plan_measured_at_load() -> None:
    service = create_service({"model": TINY.name, "weights": "random"}, None)
    assert torch.float32 in service.model.kernels.choices
    assert service.description()["attention_kernel"] == service.model.kernels.summary()


def test_the_attention_kernel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """attention_kernel: sdpa loads without measuring (replicas agree to the last bit); anything else
    but auto is refused by name."""
    from vitscope.service import loading as service_module

    def no_measuring(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("attention_kernel: sdpa must not measure")

    monkeypatch.setattr(service_module, "plan_kernels", no_measuring)
    built = service_module.create_service({"model": "dino_vitt16", "weights": "random", "attention_kernel": "sdpa"}, None)
    assert built.model.kernels.summary() == "attention kernel: sdpa (not measured)"
    with pytest.raises(service_module.ConfigError, match="attention_kernel='fast' must be one of \\['auto', 'sdpa'\\]"):
        service_module.ServiceConfig.from_mapping({"attention_kernel": "fast"})
