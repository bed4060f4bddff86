"""Checkpoint layouts, strict loading and the archive-time key check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scripts import archive
from testkit.checkpoints import TINY, backbone_state, full_checkpoint, save
from vitscope.model.checkpoint import (
    CheckpointError,
    build_model,
    filter_state_dict,
    read_checkpoint,
    weights_tag,
)
from vitscope.model.variants import get_variant


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return backbone_state(seed=1)


def _layouts(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    full = full_checkpoint(state)
    return {
        "plain": dict(state),
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "backbone_prefix_with_head": {**{f"backbone.{k}": v for k, v in state.items()}, "head.last_layer.weight_v": torch.ones(2)},
        "full_checkpoint": full,
        "full_student_only": {"student": full["student"], "epoch": 3},
    }


@pytest.mark.parametrize("layout", ["plain", "module_prefix", "backbone_prefix_with_head", "full_checkpoint", "full_student_only"])
def test_every_layout_loads_strictly(tmp_path: Path, state, layout: str) -> None:
    path = save(_layouts(state)[layout], tmp_path / f"{layout}.pth")
    filtered = filter_state_dict(read_checkpoint(path))
    assert sorted(filtered) == sorted(state)
    model = build_model(TINY, filtered)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_a_checkpoint_is_loaded_without_a_random_initialisation(state, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network is made on the meta device and filled from the checkpoint alone (a ViT-g's random
    init costs seconds of a cold start); every tensor is the checkpoint's, in float32 on the CPU."""

    def only_on_meta(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def guarded(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            assert tensor.device.type == "meta", "a random initialisation the checkpoint overwrites"
            return init(tensor, *args, **kwargs)

        return guarded

    for name in ("trunc_normal_", "kaiming_uniform_", "normal_", "uniform_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, only_on_meta(getattr(torch.nn.init, name)))
    half = {key: value.half() for key, value in state.items()}  # a checkpoint stored in fp16
    model = build_model(TINY, half)
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu" and value.dtype == torch.float32, key
        torch.testing.assert_close(value, half[key].float())
    with pytest.raises(CheckpointError, match="missing keys \\(1\\)"):
        build_model(TINY, {key: value for key, value in state.items() if key != "cls_token"})


def test_filter_is_pure_and_picks_teacher_by_default(state) -> None:
    full = full_checkpoint(state)
    full["student"] = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}
    before = {k: dict(v) if isinstance(v, dict) else v for k, v in full.items()}
    teacher = filter_state_dict(full)
    student = filter_state_dict(full, "student")
    assert torch.equal(teacher["cls_token"], state["cls_token"])
    assert torch.count_nonzero(student["cls_token"]) == 0
    assert full.keys() == before.keys() and full["teacher"].keys() == before["teacher"].keys()
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        filter_state_dict(full, "ema")


def test_missing_and_unexpected_keys_are_listed(state) -> None:
    broken = dict(state)
    del broken["blocks.3.attn.qkv.bias"]
    broken["blocks.12.norm1.weight"] = torch.ones(192)
    with pytest.raises(CheckpointError) as err:
        build_model(TINY, broken)
    message = str(err.value)
    assert "missing keys (1): ['blocks.3.attn.qkv.bias']" in message
    assert "unexpected keys (1): ['blocks.12.norm1.weight']" in message


def test_wrong_variant_reports_shapes_and_what_the_checkpoint_is(state) -> None:
    with pytest.raises(CheckpointError) as err:
        build_model(get_variant("vit_small", 16), state)
    assert "embed_dim=192, patch=16" in str(err.value)
    assert "cls_token: checkpoint (1, 1, 192) vs model (1, 1, 384)" in str(err.value)


class Payload:
    """Stands for arbitrary code in a pickle: a global that weights_only=True must not load."""

    def __reduce__(self):
        return (str, ("unpickled!",))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = save({"cls_token": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(path)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        read_checkpoint(save(torch.zeros(3), tmp_path / "tensor.pth"))


def test_weights_tag(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    # sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
    assert weights_tag(path) == "w.pth@sha256:ba7816bf8f01"


def test_archive_fails_on_mismatched_checkpoint(tmp_path: Path, state, caplog) -> None:
    ckpt = save(full_checkpoint(state), tmp_path / "tiny16.pth")
    rc = archive.main(["--model", "vit_small", "--patch", "16", "--weights", str(ckpt), "--export-path", str(tmp_path)])
    assert rc == 2
    assert "missing keys" in caplog.text and "shape mismatches" in caplog.text
    assert not list(tmp_path.glob("*.mar"))


def test_archive_without_weights_or_cache_says_what_to_do(tmp_path: Path, caplog) -> None:
    assert archive.main(["--export-path", str(tmp_path), "--cache-dir", str(tmp_path / "empty")]) == 2
    assert "make weights MODEL=dino_vits8" in caplog.text and "WEIGHTS=random" in caplog.text
