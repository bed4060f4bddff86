"""What the methods that explain a decision share (``legrad``, ``chefer``, ``gradcam``): the ``target``
option, the ``relevance`` output, the goals a request's targets become, and how the response names
each map (``targets``). The maths is ``model/relevance.py``; the targets' vocabulary ``targets.py``."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..attention import on_patch_grid, upsample_nearest
from ..errors import OptionError
from ..model import relevance
from ..targets import CLASS, EMBEDDING, TARGET_OPTION, TEXT, TOP, Target, offered
from ..vocab import ModelFacts, Options, OutputSpec
from .base import ForwardSpec, Method

if TYPE_CHECKING:
    from ..model.vit import VisionTransformer

RELEVANCE = OutputSpec(
    "relevance",
    "float",
    "[targets, H, W]",
    "one map per target, in the order of `targets`; per patch (`H/p`, `W/p`) with `upsample=false`",
    npy=True,
)
# The names of the explain pass's tensors between compute and arrays (not sent as such).
GRID, CHOSEN, SCORES = "relevance_grid", "target_chosen", "target_scores"
TextEmbedder = Callable[[Sequence[str]], torch.Tensor]  # texts -> their embeddings (T, D) (Predictor.text_embeddings)
SHARED_EXCLUDES: dict[str, str] = {
    "heads": "heads does not apply to the explanation methods: each target's map fuses the heads",
    "layers": "the explanation methods return one map per target: give target=..., not layers",
    "mask": "mask applies to the attention maps (method=attention or rollout), not to relevance",
    "boxes": "boxes applies to the attention maps' masks (method=attention or rollout), not to relevance",
    "registers": "registers applies to the attention maps (method=attention or rollout), not to relevance",
}


def targets_of(options: Options) -> tuple[Target, ...]:
    """A request's targets (``top`` when it names none)."""
    return options.param("target") or (Target(TOP),)


class ExplainMethod(Method):
    """A method whose answer is one map per target (``relevance``), from gradients of the target's score."""

    outputs = (RELEVANCE,)
    fields = ()
    excludes: ClassVar[Mapping[str, str]] = SHARED_EXCLUDES

    def forward_spec(self, options: Options) -> ForwardSpec:
        # the targets are each image's own (``goals``): images with different targets share the pass
        params = tuple((name, value) for name, value in options.params if name != TARGET_OPTION.name)
        return ForwardSpec(self.name, (options.layer,), params, options.query)

    def compute(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec) -> dict[str, torch.Tensor]:
        raise TypeError(f"method={self.name} explains targets: call explain(model, batch, spec, goals)")

    def explain(self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec, goals: relevance.Goals) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) and each image's goals -> the maps (B, T, H/p, W/p), the class or label index each
        ``top`` became (B, T) and the goals' scores (B, T). Runs with autograd whatever the caller's mode."""
        with torch.inference_mode(False), torch.enable_grad():
            maps, reported = self.run(model, batch.clone(), spec, goals)
        chosen = goals.chosen if goals.chosen is not None else torch.full_like(goals.classes, -1)
        return {GRID: maps.detach(), CHOSEN: chosen, SCORES: reported.detach()}

    @abstractmethod
    def run(
        self, model: VisionTransformer, batch: torch.Tensor, spec: ForwardSpec, goals: relevance.Goals
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's pass (with autograd): maps (B, T, H/p, W/p) and reported scores (B, T)."""

    def cost_blocks(self, options: Options) -> float:
        """Block-equivalents: the forward through every block, and per target ``cost_factor`` block-
        equivalents for each block its gradients run back through (factors measured: bench ``methods``)."""
        return options.layer + 1 + self.cost_factor * len(targets_of(options)) * self.backward_blocks(options)

    def backward_blocks(self, options: Options) -> int:
        """The blocks a target's gradient runs back through (every block by default)."""
        return options.layer + 1

    def validate(self, options: Options, facts: ModelFacts) -> None:
        targets = targets_of(options)
        has = "; this model offers: " + "; ".join(offered(facts))
        if any(t.kind == TOP for t in targets) and not facts.num_classes:
            if not facts.text:
                raise OptionError(f"target=top: {facts.name} has no classifier head and no text tower, so it predicts nothing{has}")
            if not options.labels:
                raise OptionError(
                    "target=top on a model without a classifier is the most probable of the labels= texts: give labels=..., or "
                    "target=text:<prompt>"
                )

    def check_together(self, images: Sequence[tuple[Options, tuple[int, int]]]) -> list[OptionError | None]:
        if len(images) < 2 and any(t.kind == EMBEDDING for options, _ in images for t in targets_of(options)):
            error = OptionError(
                "target=embedding compares the images sent together with the first one: send two images or more in one request"
            )
            return [error] * len(images)
        return super().check_together(images)

    def goals(
        self,
        model: VisionTransformer,
        images: Sequence[Options],
        embed_texts: TextEmbedder,
        references: Sequence[torch.Tensor | None],
        device: torch.device,
    ) -> relevance.Goals:
        """The goals of a batch's images: their targets, with the texts embedded and each image's
        reference embedding (for ``embedding`` targets)."""
        kinds, classes, vectors, candidates = [], [], [], []
        for options, reference in zip(images, references, strict=True):
            targets = targets_of(options)
            prompts = [t.text for t in targets if t.kind == TEXT and t.text is not None]
            embedded = dict(zip(prompts, embed_texts(prompts), strict=True)) if prompts else {}
            kinds.append([t.kind for t in targets])
            classes.append([t.index if t.kind == CLASS and t.index is not None else 0 for t in targets])
            vectors.append([embedded[t.text] if t.kind == TEXT and t.text else reference if t.kind == EMBEDDING else None for t in targets])
            zero_shot = options.labels if model.head is None and any(t.kind == TOP for t in targets) else None
            candidates.append(embed_texts(zero_shot) if zero_shot else None)
        dim = model.variant.proj_dim or model.variant.embed_dim
        return relevance.make_goals(kinds, classes, vectors, dim, device, candidates, self.empty_prompt(model, images, embed_texts))

    def empty_prompt(self, model: VisionTransformer, images: Sequence[Options], embed_texts: TextEmbedder) -> torch.Tensor | None:
        """The embedding of LeGrad's empty prompt where the method corrects by it (None: no correction)."""
        return None

    def arrays(self, options: Options, computed: Mapping[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
        grid = computed[GRID][: len(targets_of(options))]  # (T, H/p, W/p)
        return {RELEVANCE.name: upsample_nearest(grid, patch_size) if options.upsample else np.ascontiguousarray(grid)}

    def patch_values(self, options: Options, arrays: Mapping[str, np.ndarray], patch_size: int) -> np.ndarray:
        """Each target's own map (T, H/p, W/p): one curve set per target, in the order of ``targets``."""
        grid = arrays[RELEVANCE.name]
        return on_patch_grid(grid, patch_size) if options.upsample else grid

    def scored_maps(self, options: Options) -> int:
        return len(targets_of(options))

    def describe_targets(self, options: Options, computed: Mapping[str, np.ndarray], labels: Sequence[str]) -> list[dict[str, object]]:
        """What each map of one image explains, in order: the target as asked, the class or text it
        became, and its score (a class's probability; CLIP's cosine to a text, SigLIP's probability; an
        embedding's cosine)."""
        described: list[dict[str, object]] = []
        for t, target in enumerate(targets_of(options)):
            entry: dict[str, object] = {"target": target.name}
            chosen = int(computed[CHOSEN][t])
            if target.kind == CLASS or (target.kind == TOP and options.labels is None):
                index = target.index if target.kind == CLASS else chosen
                entry.update(index=index, label=labels[index] if index is not None and index < len(labels) else f"class {index}")
            elif target.kind == TOP and options.labels:
                entry.update(index=chosen, label=options.labels[chosen])
            elif target.kind == TEXT:
                entry.update(label=target.text)
            entry["score"] = float(computed[SCORES][t])
            described.append(entry)
        return described

    def metadata(self, options: Options, patch_size: int) -> dict[str, object]:
        return {}
