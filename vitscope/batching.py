"""A batch's flow around its forward passes: grouping its images by size, and encoding its answers
in a thread pool while the next forward pass computes.

``group_by_size``: a batch's prepared tensors grouped by (H, W), each group with the indices of its
images, so that a group is one forward pass (or one batched resize) and ``in_order`` puts the answers
back where the requests were. Nothing is padded: a group only holds images of one size.

``EncodePool``: encoders (callables) run in a few threads, answers taken in submission order; an
encoder that raises is that request's answer (the exception), and the others are unaffected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .errors import RequestError

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

Size = tuple[int, int]  # (height, width), as image.Size


# ----------------------------------------------------------------------------- grouping by size
@dataclass(frozen=True)
class Group(Generic[K]):
    """The indices (ascending) of a batch's items that share ``key``."""

    key: K
    indices: tuple[int, ...]


def group_indices(keys: Sequence[K]) -> list[Group[K]]:
    """The positions of equal keys, grouped: groups in order of their key's first appearance, each
    group's indices ascending. Every index 0..len(keys)-1 is in exactly one group."""
    found: dict[K, list[int]] = {}
    for i, key in enumerate(keys):
        found.setdefault(key, []).append(i)
    return [Group(key, tuple(indices)) for key, indices in found.items()]


def group_by_size(tensors: Sequence[torch.Tensor]) -> list[Group[Size]]:
    """``(..., H, W)`` tensors grouped by their (H, W): one group per size, nothing padded."""
    return group_indices([(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])


def stack_group(tensors: Sequence[torch.Tensor], group: Group[Size]) -> torch.Tensor:
    """The group's tensors, each (C, H, W), as one batch (B, C, H, W)."""
    return torch.stack([tensors[i] for i in group.indices])  # (B, C, H, W)


def in_order(groups: Sequence[Group[K]], outputs: Sequence[Sequence[T]], count: int) -> list[T]:
    """Answers back in the batch's order: ``outputs[g][k]`` is the answer of ``groups[g].indices[k]``.

    ``count`` is the batch's size; every index must be answered exactly once."""
    answers: list[T | None] = [None] * count
    seen = [False] * count
    if len(outputs) != len(groups):
        raise ValueError(f"{len(outputs)} lists of outputs for {len(groups)} groups: give one list per group")
    for group, answered in zip(groups, outputs, strict=True):
        if len(answered) != len(group.indices):
            raise ValueError(f"group {group.key!r} has {len(group.indices)} images but {len(answered)} outputs")
        for i, answer in zip(group.indices, answered, strict=True):
            if not 0 <= i < count or seen[i]:
                raise ValueError(f"index {i} is out of the batch of {count} or in two groups: group with group_indices")
            answers[i], seen[i] = answer, True
    missing = [i for i, done in enumerate(seen) if not done]
    if missing:
        raise ValueError(f"no group holds the images {missing} of the batch of {count}: group with group_indices")
    return answers  # type: ignore[return-value]  # every slot was filled (checked above)


# ----------------------------------------------------------------------------- the encode pool
def _answer(encode: Callable[[], T], ticket: int) -> T | Exception:
    try:
        return encode()
    except RequestError as e:  # a client's error (e.g. a response over a limit): its 4xx, as is
        return e
    except Exception as e:  # an encoder's bug: that request's 500, never the batch's
        logger.warning("encoding answer %d failed: %s: %s", ticket, type(e).__name__, e, exc_info=True)
        return e


class EncodePool(Generic[T]):
    """Runs encoders in ``workers`` threads; ``take``/``drain`` return answers in submission order.

    Meant to overlap a batch's encoding (JSON/npz of its maps, GIL released in orjson/numpy/zlib for
    much of it) with the next forward pass::

        with EncodePool[bytes](workers=2) as pool:
            for item in computed:
                pool.submit(partial(encode_attention, item))
            ... the next batch computes ...
            answers = pool.drain()  # one per submit, in order: bytes, or the exception raised

    An encoder's exception (``Exception``, not ``BaseException``) becomes its own answer; the
    other answers are unaffected. Thread-safe: ``submit`` and ``take`` may be called from different threads (takes one at a time).
    """

    def __init__(self, workers: int = 2, name: str = "vitscope-encode") -> None:
        if workers < 1:
            raise ValueError(f"EncodePool needs at least one worker thread, got workers={workers}")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()  # guards the queue
        self._taking = threading.Lock()  # one taker at a time: each answer is taken once
        self._pending: list[Future[T | Exception]] = []  # submitted, not yet taken, in order
        self._submitted = 0
        self._closed = False

    def submit(self, encode: Callable[[], T]) -> int:
        """Queue one encoder; its ticket (0, 1, ...: the order ``take`` answers in)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("EncodePool is closed: submit before close(), or make a new pool")
            ticket = self._submitted
            self._pending.append(self._executor.submit(_answer, encode, ticket))
            self._submitted += 1
        return ticket

    def submit_all(self, encodes: Iterable[Callable[[], T]]) -> list[int]:
        return [self.submit(encode) for encode in encodes]

    @property
    def pending(self) -> int:
        """Submitted answers not taken yet."""
        with self._lock:
            return len(self._pending)

    def take(self, wait: bool = True, timeout: float | None = None) -> list[T | Exception]:
        """Answers in submission order. ``wait``: every pending one (``timeout`` seconds at most per
        answer; ``TimeoutError`` then, nothing taken); else only those ready in an unbroken run from
        the oldest, without blocking (a later answer waits for the ones before it)."""
        with self._taking:
            with self._lock:
                pending = list(self._pending)
            if wait:
                answers = [future.result(timeout=timeout) for future in pending]
            else:
                answers = []
                for future in pending:
                    if not future.done():
                        break
                    answers.append(future.result())
            with self._lock:
                del self._pending[: len(answers)]
            return answers

    def drain(self, timeout: float | None = None) -> list[T | Exception]:
        """Every pending answer, in submission order (waits for them)."""
        return self.take(wait=True, timeout=timeout)

    def close(self, wait: bool = True) -> None:
        """No more submits; ``wait``: until the running encoders finish (their answers stay takeable)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> EncodePool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
