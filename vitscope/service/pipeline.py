"""The pipeline: a batch of image requests -> one result or error per image.

``AttentionService.explain_together(groups)`` takes a batch of HTTP requests, each a group of
``ImageRequest`` (image bytes + raw options, from any protocol codec), and returns, per image, an
``AttentionResult`` or the ``RequestError`` it ended in (``explain(requests)``: each image alone). A bad
image does not affect the others; images alike in size, forward pass and precision share one forward
pass, across requests. In order:

    prepare: options (with their method) -> decoded, resized, cropped image -> tensor   (options.py, image.py)
    check:   the method checks a request's images together (e.g. a point)           (methods/)
    admit:   over the cost budget -> 413; past the deadline -> 504                   (admission.py)
    predict: tensors -> the method's tensors, batched                                 (methods/ -> model/)
    describe: a request's tensors -> the method's arrays -> AttentionResults          (methods/, schema.py)
              (with faithfulness=: each map's deletion/insertion curves, batched)     (faithfulness.py)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from .. import faithfulness
from ..attention import map_agreement, to_tensor
from ..cost import CostModel, Learned
from ..errors import RequestError
from ..image import prepare_image
from ..methods import METHODS, Method
from ..methods.base import ForwardSpec
from ..methods.explain import ExplainMethod, targets_of
from ..model import relevance
from ..model.catalogue import licence_of
from ..model.variants import Variant
from ..model.vit import VisionTransformer
from ..options import FORMATS, RESPONSE_DTYPES, describe_options, parse
from ..precision import PRECISIONS, PrecisionPlan, autocast, plan_precisions
from ..predictions import Predictor
from ..protocols.base import Decoded
from ..schema import AttentionResult, ImageRequest
from ..targets import EMBEDDING, offered
from ..vocab import DEFAULT_EXPLAIN_METHOD, DEFAULT_METHOD, ModelFacts
from . import admission
from .admission import Prepared
from .config import ServiceConfig

logger = logging.getLogger(__name__)


class Computed(NamedTuple):
    """One image's share of a forward pass: the method's tensors, the pass's milliseconds, its predictions."""

    arrays: dict[str, np.ndarray]
    forward_ms: float
    predictions: list[dict[str, object]] | None = None
    targets: list[dict[str, object]] | None = None  # what each relevance map explains (the explanation methods)
    goals: relevance.Goals | None = None  # with faithfulness=: the image's goals as the explanation resolved them


class AttentionService:
    """Image requests in, attention results out, for one model on one device.

    ``precisions``: what each requested precision runs as; by default decided here, once, by
    probing the device and the model (``precision.plan_precisions``). ``cost_budget_s``: the seconds
    a request may be estimated to take (None: no admission control); the estimates come from
    ``cost``, by default measured here on the model's first block (``cost.CostModel.measure``), and
    corrected per method by what its passes take here (``cost.Learned``; handler ``cost_learning``).
    """

    def __init__(
        self,
        model: VisionTransformer,
        variant: Variant,
        config: ServiceConfig,
        device: torch.device | str = "cpu",
        precisions: PrecisionPlan | None = None,
        cost_budget_s: float | None = None,
        cost: CostModel | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        self.variant = variant
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.predictor = predictor or Predictor(self.model)  # its head's classes, its text tower's tokenizer
        # what option parsing and the description read of it
        self.facts = replace(ModelFacts.of(self.model), labels=self.predictor.labels, max_targets=config.max_targets)
        self.precisions = precisions or plan_precisions(self.device, lambda precision: map_agreement(self.model, self.device, precision))
        self.cost_budget_s = cost_budget_s
        if cost is None and cost_budget_s is not None:
            cost = CostModel.measure(self.model.blocks[0], variant.embed_dim, variant.num_heads, self.device)
        self.cost = cost
        self.learned = Learned() if config.cost_learning else None

    def ingest(self, decoded: Decoded, received: float) -> Decoded:
        """A request decoded by its codec, as it enters the service: its images with their deadline
        (``admission.ingest``; the model's ``deadline_s`` when the request names none). Both engines call it."""
        return admission.ingest(decoded, received, self.config.deadline_s or None)

    @staticmethod
    def explaining(decoded: Decoded) -> Decoded:
        """A request that came by an explanation route (TorchServe's ``/explanations``, KServe's
        ``:explain``): its images get ``method=legrad`` (``DEFAULT_EXPLAIN_METHOD``) unless they name one."""
        requests = [replace(r, options={"method": DEFAULT_EXPLAIN_METHOD, **r.options}) for r in decoded.requests]
        return replace(decoded, requests=requests)

    def deadline(self, received: float, timeout_s: float | None = None, deadline: float | None = None) -> float | None:
        """``admission.deadline`` with this model's ``deadline_s`` (if any) as the default timeout."""
        return admission.deadline(received, timeout_s, deadline, self.config.deadline_s or None)

    def explain(self, requests: Sequence[ImageRequest]) -> list[AttentionResult | RequestError]:
        """One result (or the request's own error) per image, each image on its own."""
        return [result for (result,) in self.explain_together([[request] for request in requests])]

    def explain_together(self, groups: Sequence[Sequence[ImageRequest]]) -> list[list[AttentionResult | RequestError]]:
        """Per group (the images one HTTP request sent together), one result or error per image, in order.

        Every image of every group shares the forward passes; a method may then treat a group's images
        together (``Method.check_together``, ``arrays_together``: one PCA basis for several images,
        similarity against a patch of the first image)."""
        prepared: list[list[Prepared | RequestError]] = [[self._prepare(request) for request in group] for group in groups]
        for items in prepared:
            self._check_together(items)
            admission.admit(items, self.cost, self.cost_budget_s, self.variant)
            admission.drop_late(items)
        good = [p for items in prepared for p in items if isinstance(p, Prepared)]
        references = {key: value for items in prepared for key, value in self.references(items).items()}
        computed = dict(zip(map(id, good), self.predict(good, references), strict=True))
        return [self._describe_together(items, computed) for items in prepared]

    def _prepare(self, request: ImageRequest) -> Prepared | RequestError:
        try:
            return self.prepare(request)
        except RequestError as e:
            logger.info("request rejected (%d): %s", e.status, e)
            return e

    @staticmethod
    def _by_method(items: Sequence[Prepared | RequestError]) -> dict[Method, list[int]]:
        """The indices of a group's prepared images, by method, in order."""
        methods: dict[Method, list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, Prepared):
                methods.setdefault(item.method, []).append(i)
        return methods

    def _check_together(self, items: list[Prepared | RequestError]) -> None:
        """Replace the images of one group that its method rejects, seen together, by their errors."""
        for method, indices in self._by_method(items).items():
            together = [(items[i].options, items[i].image.image_size) for i in indices]  # type: ignore[union-attr]
            for i, error in zip(indices, method.check_together(together), strict=True):
                if error is not None:
                    logger.info("request rejected (%d): %s", error.status, error)
                    items[i] = error

    def _describe_together(
        self, items: Sequence[Prepared | RequestError], computed: Mapping[int, Computed]
    ) -> list[AttentionResult | RequestError]:
        described: dict[int, AttentionResult] = {}
        for method, indices in self._by_method(items).items():
            shares = [(items[i].options, computed[id(items[i])].arrays) for i in indices]  # type: ignore[union-attr]
            arrays = method.arrays_together(shares, self.variant.patch_size)
            for i, own in zip(indices, arrays, strict=True):
                item = items[i]
                assert isinstance(item, Prepared)
                faithful = self.faithfulness(item, own, computed[id(item)]) if item.options.faithfulness else None
                described[i] = self.describe(item, own, computed[id(item)], faithful)
        return [item if isinstance(item, RequestError) else described[i] for i, item in enumerate(items)]

    def prepare(self, request: ImageRequest) -> Prepared:
        """Parse the options, decode, resize and crop the image; ``RequestError`` if anything is wrong
        (what the method checks of the processed image comes after, with the request's other images)."""
        start = time.perf_counter()
        method, options = parse(request.options, self.facts, self.config.defaults(request.accept_format))
        image = prepare_image(
            request.image,
            patch_size=self.variant.patch_size,
            max_pixels=self.config.max_pixels,
            max_tokens=self.config.max_tokens,
            short_side=options.short_side,
            scale=options.scale,
            size=options.size,
        )
        tensor = to_tensor(image.image, self.variant.mean, self.variant.std)  # (3, H, W)
        elapsed_ms = (time.perf_counter() - start) * 1000
        cost_s, blocks = 0.0, method.cost_blocks(options)
        if self.predictor.wanted(options):  # the head reads the last block: the blocks after the method's run too
            blocks += self.variant.depth - 1 - options.layer
        targeted = isinstance(method, ExplainMethod)
        perturbed = faithfulness.forwards(options, method.scored_maps(options), targeted) * self.variant.depth  # whole passes
        if self.cost is not None:  # the learned correction is the method's: the perturbed passes are plain forwards
            tokens = self.tokens(tensor)
            correction = self.learned.correction(method.name) if self.learned is not None else 1.0
            cost_s = self.cost.estimate(tokens, blocks) * correction + self.cost.estimate(tokens, perturbed)
            cost_s += self.predictor.text_cost_s(options, self.cost)
        blocks += perturbed
        precision = self.precisions.resolve(options.precision)
        return Prepared(tensor, image, options, method, precision, elapsed_ms, cost_s, request.deadline, blocks)

    def references(self, items: Sequence[Prepared | RequestError]) -> dict[int, torch.Tensor]:
        """For a group whose images explain ``target=embedding``: each image's reference embedding (D,), by
        ``id``: the first image's embedding for the others, the mean of the others' for the first."""
        group = [item for item in items if isinstance(item, Prepared)]
        if len(group) < 2 or not any(
            isinstance(p.method, ExplainMethod) and any(t.kind == EMBEDDING for t in targets_of(p.options)) for p in group
        ):
            return {}
        embeddings = []
        for item in group:
            with torch.inference_mode(), autocast(self.device, item.precision):
                embeddings.append(self.model.embed_image(self.model(item.tensor[None].to(self.device)))[0].float())  # (D,)
        first, others = embeddings[0], torch.stack(embeddings[1:]).mean(dim=0)
        return {id(item): (others if n == 0 else first) for n, item in enumerate(group)}

    def predict(self, items: Sequence[Prepared], references: Mapping[int, torch.Tensor] | None = None) -> list[Computed]:
        """Each item's share of its method's tensors, with the milliseconds of the forward pass it was
        part of and its predictions (None: not asked); items alike in size, forward pass (``ForwardSpec``)
        and precision share one, which also gives the predictions (``VisionTransformer.recording_final``)."""
        groups: dict[tuple[tuple[int, ...], Method, ForwardSpec, str], list[int]] = {}
        for i, item in enumerate(items):
            spec = item.method.forward_spec(item.options)
            groups.setdefault((tuple(item.tensor.shape), item.method, spec, item.precision), []).append(i)
        if len(items) > 1:
            logger.info("batch of %d images in %d forward pass(es)", len(items), len(groups))
        results: list[Computed] = [Computed({}, 0.0)] * len(items)
        for (_, method, spec, precision), indices in groups.items():
            start = time.perf_counter()
            batch = torch.stack([items[i].tensor for i in indices]).to(self.device)  # (B, 3, H, W)
            wanted = [self.predictor.wanted(items[i].options) for i in indices]
            goals = None
            if isinstance(method, ExplainMethod):  # each image's targets, its texts embedded (outside inference mode: autograd reads them)
                options = [items[i].options for i in indices]
                refs = [(references or {}).get(id(items[i])) for i in indices]
                goals = method.goals(self.model, options, self.predictor.text_embeddings, refs, self.device)
            passed = time.perf_counter()  # the texts are embedded: what the estimate's blocks price starts here
            with torch.inference_mode(), autocast(self.device, precision), self.model.recording_final(any(wanted)) as final:
                if isinstance(method, ExplainMethod) and goals is not None:
                    computed = method.explain(self.model, batch, spec, goals)  # name -> (B, ...)
                else:
                    computed = method.compute(self.model, batch, spec)  # name -> (B, ...)
                if any(wanted) and not final:  # a method whose pass does not record what the head reads
                    final.extend(self.model.head_tokens(batch))
            arrays = {name: tensor.cpu().numpy() for name, tensor in computed.items()}  # the method chose the dtypes
            done = time.perf_counter()
            elapsed_ms = (done - start) * 1000
            self._learn(method, [items[i] for i in indices], done - passed)
            for n, i in enumerate(indices):
                predictions = self.predictor.predict([t[n : n + 1] for t in final], items[i].options) if wanted[n] else None
                own = {name: array[n] for name, array in arrays.items()}
                targets = (
                    method.describe_targets(items[i].options, own, self.predictor.labels) if isinstance(method, ExplainMethod) else None
                )
                faithful = bool(items[i].options.faithfulness)  # its goals, as resolved, score its perturbed copies
                resolved = goals.image(n, len(targets_of(items[i].options))) if goals is not None and faithful else None
                results[i] = Computed(own, elapsed_ms, predictions, targets, resolved)
        return results

    def tokens(self, tensor: torch.Tensor) -> int:
        """The tokens a (3, H, W) input makes: its patches and the prefix tokens ([CLS], registers)."""
        return self.variant.num_prefix_tokens + tensor.shape[1] * tensor.shape[2] // self.variant.patch_size**2

    def _learn(self, method: Method, items: Sequence[Prepared], seconds: float) -> None:
        """Tell the learned correction what one pass of ``method`` over ``items`` took (``seconds``, the
        texts' embedding not included), against their uncorrected estimates."""
        if self.learned is None or self.cost is None or any(item.options.faithfulness for item in items):
            return  # (faithfulness= prices its perturbed passes too, which run after this pass)
        estimated = sum(self.cost.estimate(self.tokens(item.tensor), item.blocks) for item in items)
        self.learned.observe(method.name, estimated, seconds)

    def faithfulness(self, item: Prepared, arrays: dict[str, np.ndarray], computed: Computed) -> list[dict[str, object]]:
        """The ``faithfulness`` field of one item: its maps' values per patch (``Method.patch_values``) ordered,
        perturbed and scored (``faithfulness.measure``), against its targets' goals, or (no target) its top class or own embedding."""
        values = item.method.patch_values(item.options, arrays, self.variant.patch_size)  # (C, h, w)
        names = [t.name for t in targets_of(item.options)] if computed.goals is not None else None
        image = item.tensor.to(self.device)  # (3, H, W)
        return faithfulness.measure(self.model, image, values, item.options, item.precision, computed.goals, names)

    def describe(
        self, item: Prepared, arrays: dict[str, np.ndarray], computed: Computed, faithful: list[dict[str, object]] | None = None
    ) -> AttentionResult:
        """The result of one item from the method's arrays for it (``Method.arrays``), the metadata and
        its ``faithfulness`` (None: not asked)."""
        forward_ms = computed.forward_ms
        p = self.variant.patch_size
        options = item.options
        method = item.method
        h, w = (size // p for size in item.image.image_size)
        return AttentionResult(
            model=self.variant.name,
            patch_size=p,
            layer=options.layer,
            num_heads=self.variant.num_heads,
            heads=list(options.heads),
            weights=self.config.weights,
            input_size=list(item.image.input_size),
            resized_size=list(item.image.resized_size),
            image_size=list(item.image.image_size),
            grid=[h, w],
            upsampled=options.upsample,
            precision=item.precision,
            precision_requested=options.precision,
            dtype=options.dtype,
            layers=list(options.layers) if options.layers else None,
            method=method.name if method.name != DEFAULT_METHOD else None,
            method_fields=method.metadata(options, p),
            mask=options.mask,
            query=options.query,
            targets=computed.targets,
            predictions=computed.predictions,
            faithfulness=faithful,
            arrays=arrays,
            outputs=method.outputs,
            format=options.format,
            stats={"preprocess_ms": item.preprocess_ms, "forward_ms": forward_ms, "tokens": float(h * w), "cost_s": item.cost_s},
        )

    def description(self) -> dict[str, object]:
        """What this model serves, for the describe APIs (TorchServe's ``?customized=true``, KServe's
        model metadata): the model's facts, the methods with the options each takes (the model's
        defaults filled in) and their outputs, the formats and precisions."""
        defaults = self.config.defaults()
        return {
            "model": {
                **self.facts.describe(),
                "weights": self.config.weights,
                **({"source": self.config.source} if self.config.source else {}),
                "mean": list(self.variant.mean),
                "std": list(self.variant.std),
                **licence_of(self.variant.family),
                "targets": offered(self.facts),  # what target= may name (the explanation methods)
            },
            "default_method": DEFAULT_METHOD,
            "methods": [
                {**method.describe(), "options": describe_options(method, defaults)} for method in METHODS.values()
            ],  # all it takes
            "formats": list(FORMATS),
            "dtypes": list(RESPONSE_DTYPES),
            "precisions": {name: self.precisions.resolve(name) for name in PRECISIONS},
            "attention_kernel": self.model.kernels.summary(),
            "limits": {"max_tokens": self.config.max_tokens, "max_pixels": self.config.max_pixels, "cost_budget_s": self.cost_budget_s},
            "cost_corrections": self.learned.summary() if self.learned is not None else {},  # each method's learned factor
        }
