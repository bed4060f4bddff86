"""Checkpoints saved by timm, renamed to the hub's layout (vitscope/model/keymaps.py): every
family's timm model, random weights made by timm itself, loads strictly into ours and gives the same
features as timm's own forward pass."""

from __future__ import annotations

import pytest
import torch

from testkit.checkpoints import tiny_replica
from vitscope.model.checkpoint import build_model
from vitscope.model.keymaps import from_timm

timm = pytest.importorskip("timm", reason="timm is pinned in requirements.txt: make install")

MODELS = {  # our hub name -> timm's model
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov3_vits16": "vit_small_patch16_dinov3_qkvb",
    "dinov3_vits16_plain": "vit_small_patch16_dinov3",  # timm's plain DINOv3: no q/v biases
    "dinov2_vitg14": "vit_giant_patch14_dinov2",  # SwiGLU: timm packs w1, w2 as fc1
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_timm_checkpoint_loads_strictly_and_computes_the_same_features(name: str) -> None:
    variant = tiny_replica(name.removesuffix("_plain"))
    torch.manual_seed(0)
    size = variant.pretrain_img_size
    shape = {"embed_dim": variant.embed_dim, "depth": variant.depth, "num_heads": variant.num_heads, "img_size": size}
    reference = timm.create_model(MODELS[name], pretrained=False, num_classes=0, **shape).eval()
    with torch.no_grad():  # timm's init leaves some at constants: make every tensor count
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    ours = build_model(variant, from_timm(state, variant, build_model(variant, None).state_dict())).eval()  # strict
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        expected = reference.forward_features(x)[:, reference.num_prefix_tokens :]
        torch.testing.assert_close(ours.get_patch_features(x), expected, atol=1e-5, rtol=1e-4)
    assert state.keys() == reference.state_dict().keys()  # pure: the input is as it was
