"""Predictions: what a model with a head decides about an image, served beside every map.

* a classifier head (supervised ViT/DeiT, DINOv2's linear classifiers, fine-tunes): the softmax of
  its logits over its classes, named by the archived labels (``id2label``, ``LABELS=``, ImageNet's);
* a text tower (CLIP, SigLIP), with the request's ``labels``: zero-shot scores of the image against
  each text: CLIP's softmax over the texts of the scaled cosines, SigLIP's sigmoid of the scaled
  cosines plus its bias (each text on its own).

The last block's tokens come from the method's own forward pass (``VisionTransformer.recording_final``);
text embeddings are cached per prompt in the worker (a bounded LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .vocab import Options

if TYPE_CHECKING:
    from .cost import CostModel
    from .model.tokenizer import Tokenizer
    from .model.vit import VisionTransformer

TEXT_CACHE_SIZE = 4096  # prompts whose embeddings a worker keeps (a ViT-B/16 CLIP's are 2 KiB each)
TEXT_CHUNK = 64  # prompts through the text tower at a time


@dataclass(frozen=True)
class Prediction:
    index: int  # the class's index in the head, or the text's in ``labels``
    label: str
    probability: float

    def describe(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "probability": self.probability}


class Predictor:
    """A model's predictions from the last block's normed tokens, per image."""

    def __init__(self, model: VisionTransformer, labels: Sequence[str] = (), tokenizer: Tokenizer | None = None) -> None:
        self.model = model
        classes = model.variant.num_classes
        if labels and len(labels) != classes:
            raise ValueError(f"{len(labels)} labels for a head of {classes} classes: give one label per class")
        self.labels = tuple(labels) or tuple(f"class {i}" for i in range(classes))
        self.tokenizer = tokenizer
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> embedding (D,), float32

    @staticmethod
    def wanted(options: Options) -> bool:
        return options.top_k > 0

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """The text tower's embeddings of ``texts`` (T, D), float32, each computed once per worker (LRU)."""
        text = self.model.text
        if text is None or self.tokenizer is None:
            raise ValueError(f"{self.model.variant.name} has no text tower or no tokenizer")
        missing = self.uncached(texts)
        device = self.model.patch_embed.proj.weight.device
        for start in range(0, len(missing), TEXT_CHUNK):
            chunk = missing[start : start + TEXT_CHUNK]
            with torch.autocast(device.type, enabled=False):
                embedded = text(self.tokenizer.encode(chunk).to(device)).float()  # (chunk, D)
            for prompt, row in zip(chunk, embedded, strict=True):
                self._texts[prompt] = row
        embeddings = torch.stack([self._texts[t] for t in texts])  # (T, D)
        for prompt in texts:
            self._texts.move_to_end(prompt)
        while len(self._texts) > TEXT_CACHE_SIZE:
            self._texts.popitem(last=False)
        return embeddings

    def uncached(self, texts: Sequence[str]) -> list[str]:
        """The texts whose embeddings this worker has not kept, in order, once each."""
        return list(dict.fromkeys(t for t in texts if t not in self._texts))

    def text_cost_s(self, options: Options, cost: CostModel) -> float:
        """The estimated seconds of the text tower for a request's uncached ``labels``: each text costs
        its tower's blocks over its context (priced as image blocks: errs high, the text towers are narrower)."""
        text = self.model.variant.text
        if not options.labels or text is None:
            return 0.0
        return len(self.uncached(options.labels)) * cost.estimate(text.context_length, text.depth)

    def probabilities(self, head: Sequence[torch.Tensor], options: Options) -> tuple[torch.Tensor, tuple[str, ...]]:
        """One image's ``head_tokens`` (its last block's normed tokens (1, N, C), and what else its head
        reads) -> its probabilities over the classes (K,) and their names."""
        model, normed = self.model, head[0]
        if options.labels:
            image = model.embed_image(model.pool(normed))  # (1, D)
            scores = model.zero_shot(image, self.text_embeddings(options.labels))[0]  # (T,)
            return (scores.sigmoid() if model.variant.logit_bias else scores.softmax(dim=-1)), options.labels
        return model.logits(*head).float().softmax(dim=-1)[0], self.labels

    def predict(self, head: Sequence[torch.Tensor], options: Options) -> list[dict[str, object]]:
        """The ``top_k`` classes of one image (its ``head_tokens``), most probable first; ties by index."""
        with torch.inference_mode(), torch.autocast(head[0].device.type, enabled=False):
            probabilities, names = self.probabilities([t.float() for t in head], options)
        p = probabilities.cpu().numpy()  # (K,)
        order = np.lexsort((np.arange(p.shape[0]), -p))[: options.top_k]  # by probability, then index
        return [Prediction(int(i), names[i], float(p[i])).describe() for i in order]
