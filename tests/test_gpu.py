"""GPU: the service on TorchServe's gpu_id gives the CPU's maps (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from testkit.checkpoints import TINY, backbone_state, encode, random_rgb
from testkit.handler import answer
from vitscope.model.checkpoint import build_model
from vitscope.service import AttentionService, ServiceConfig, select_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def maps(service: AttentionService, data: bytes, precision: str) -> np.ndarray:
    (reply,) = answer(service, [{"data": data, "scale": "1", "upsample": "false", "precision": precision}])
    return np.asarray(orjson.loads(reply.body)["attention"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_matches_cpu(precision: str) -> None:
    config = ServiceConfig(model="dino_vitt16", weights="test")
    state = backbone_state(seed=2)
    cpu = AttentionService(build_model(TINY, state), TINY, config, "cpu")
    gpu = AttentionService(build_model(TINY, state), TINY, config, select_device(0))
    assert next(gpu.model.parameters()).device.type == "cuda"
    data = encode(random_rgb(160, 224))
    reference, got = maps(cpu, data, "fp32"), maps(gpu, data, precision)
    if precision == "fp32":
        np.testing.assert_allclose(got, reference, atol=1e-4)
    for a, b in zip(reference, got, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
