"""Exactness of the feature methods against an independent implementation of each family: timm's
(pinned in requirements.txt), which loads the official hub checkpoints through its own key
conversion. Tiny replicas of the official layouts (random weights, LayerScale set far from its
1e-5 init so that every block matters, random biases where the init has zeros) are saved as the hub checkpoints are, converted by timm's
``checkpoint_filter_fn`` and loaded strictly into timm's model of the same shape.

Images are at the checkpoint's own position grid (518 px at patch 14 for DINOv2, any size for
DINOv3's RoPE): there timm and the hub agree by construction. Off that grid, timm resizes DINOv2's
positions without the hub's 0.1 offset (docs/models.md: the hub's own code is what we follow).
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from testkit.checkpoints import encode, random_rgb, tiny_replica
from testkit.handler import answer
from tests.support.services import tiny_service
from vitscope.model.checkpoint import build_model
from vitscope.model.variants import Variant
from vitscope.schema import ImageRequest
from vitscope.service import AttentionService

timm = pytest.importorskip("timm", reason="timm is pinned in requirements.txt: make install")
from timm.models import eva, vision_transformer  # noqa: E402 (after the importorskip)

# our hub name -> (timm's model name, the timm module whose checkpoint_filter_fn converts the hub's keys)
REFERENCES = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", vision_transformer),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", vision_transformer),
    "dinov3_vits16": ("vit_small_patch16_dinov3_qkvb", eva),  # with the q/v biases the hub's checkpoints carry
}


def replicas(name: str) -> tuple[AttentionService, torch.nn.Module, Variant]:
    """Our service and timm's model over one random hub-layout checkpoint."""
    variant = tiny_replica(name)
    torch.manual_seed(0)
    state = build_model(variant, None).state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith(("ls1.gamma", "ls2.gamma")):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)  # every block counts
        elif key.endswith(".bias") and value.is_floating_point():
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)  # biases matter too (zero at init)
    timm_name, module = REFERENCES[name]
    size = variant.pretrain_img_size
    shape = {"embed_dim": variant.embed_dim, "depth": variant.depth, "num_heads": variant.num_heads, "img_size": size}
    reference = timm.create_model(timm_name, pretrained=False, num_classes=0, **shape)
    converted = module.checkpoint_filter_fn(dict(state), reference)  # a copy: timm's filter edits the dict it is given
    reference.load_state_dict(converted, strict=True)
    service = tiny_service(variant, state, short_side=size)
    return service, reference.eval(), variant


def reference_features(service: AttentionService, reference: torch.nn.Module, data: bytes) -> torch.Tensor:
    """timm's normed patch tokens (n, D) of the image as our service prepares it (the same pixels)."""
    x = service.prepare(ImageRequest(data, {})).tensor[None]
    with torch.inference_mode():
        return reference.forward_features(x)[0, reference.num_prefix_tokens :].double()


@pytest.mark.parametrize("name", list(REFERENCES))
def test_similarity_and_pca_equal_the_reference_features(name: str) -> None:
    service, reference, variant = replicas(name)
    p, size = variant.patch_size, variant.pretrain_img_size
    data = encode(random_rgb(size, size, seed=3))
    features = reference_features(service, reference, data)  # (n, D)
    grid = size // p
    point = (5 * p + 3, 2 * p + 1)  # patch (2, 5)
    (similarity, pca) = answer(
        service,
        [
            {"data": data, "method": "similarity", "point": f"{point[0]},{point[1]}", "upsample": "false"},
            {"data": data, "method": "pca", "foreground": "none", "upsample": "false"},
        ],
    )
    expected = F.cosine_similarity(features, features[2 * grid + 5][None], dim=-1).reshape(grid, grid).numpy()
    np.testing.assert_allclose(np.asarray(orjson.loads(similarity.body)["similarity"])[0], expected, atol=1e-4)
    centred = (features - features.mean(dim=0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    colours = np.asarray(orjson.loads(pca.body)["pca"], np.float64).reshape(3, -1)
    for channel, component in zip(colours, vt[:3], strict=True):
        assert abs(np.corrcoef(channel, centred @ component)[0, 1]) >= 0.999
