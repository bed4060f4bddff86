"""What the libraries' own forward passes compute, read through hooks: the references the exactness
tests compare with (nothing of ours is used here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def hooked(handles: Iterable[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Forward hooks registered for the duration of a block, removed after it."""
    registered = list(handles)
    try:
        yield
    finally:
        for handle in registered:
            handle.remove()


def captured(run: Callable[[], object], modules: Iterable[nn.Module], keep: Callable[[nn.Module, object], torch.Tensor]) -> torch.Tensor:
    """``run()`` (a library's forward pass) under inference mode, keeping ``keep(module, output)`` of each
    of ``modules`` as it runs; stacked along a new axis 1 (one entry per module, in run order)."""
    found: list[torch.Tensor] = []
    handles = (m.register_forward_hook(lambda module, _inputs, out: found.append(keep(module, out))) for m in modules)
    with hooked(handles), torch.inference_mode():
        run()
    return torch.stack(found, dim=1)


def timm_attention(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Every block's full softmax attention (B, blocks, heads, N, N) from timm's own forward pass: its
    explicit path (fused attention off), whose dropout (identity at inference) receives the weights."""
    for block in model.blocks:
        block.attn.fused_attn = False
    return captured(lambda: model.forward_features(x), (block.attn.attn_drop for block in model.blocks), lambda _m, out: out)
