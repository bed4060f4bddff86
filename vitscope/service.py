"""The serving core, independent of any model server and of any protocol.

``AttentionService.explain_together(groups)`` takes a batch of HTTP requests, each a group of
``ImageRequest`` (image bytes + raw options, from any protocol codec), and returns, per image, an
``AttentionResult`` or the ``RequestError`` it ended in (``explain(requests)``: each image alone). A bad
image does not affect the others; images alike in size, forward pass and precision share one forward
pass, across requests. The pipeline, in order:

    prepare: options -> decoded, resized, cropped image -> normalised tensor   (options.py, image.py)
    check:   the method checks a request's images together (e.g. a point)    (methods/)
    predict: tensors -> the method's tensors, batched                          (methods/ -> model/)
    describe: a request's tensors -> the method's arrays -> AttentionResults   (methods/, schema.py)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .attention import map_agreement, to_tensor
from .cost import CostModel
from .errors import DeadlineExceeded, PayloadTooLarge, RequestError
from .image import PreparedImage, prepare_image
from .methods import DEFAULT_METHOD, METHODS, ModelFacts
from .methods.base import ForwardSpec
from .model.checkpoint import RANDOM_WEIGHTS, build_model, filter_state_dict, read_checkpoint, weights_tag
from .model.kernels import ATTENTION_KERNELS, plan_kernels
from .model.variants import DEFAULT_MODEL, FAMILIES, Variant, get_variant, variant_from_mapping
from .model.vit import VisionTransformer
from .options import DEFAULTS, FORMATS, RESPONSE_DTYPES, Defaults, Options, describe_options, format_from_accept, parse_options
from .precision import AUTOCAST_DTYPES, PRECISIONS, PrecisionPlan, autocast, plan_precisions
from .schema import AttentionResult, ImageRequest

logger = logging.getLogger(__name__)

RANDOM_SEED = 0  # random-weight models are reproducible across workers and restarts
ADMISSION_SHARE = 0.5  # cost_budget_s = this share of the responseTimeout: the estimate's margin of error


class ConfigError(ValueError):
    """Invalid handler settings (model-config.yaml ``handler:`` section)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Handler settings; every field can be set in model-config.yaml under ``handler:``."""

    model: str = DEFAULT_MODEL  # torch.hub name, a key of model/variants.py's VARIANTS
    weights: str = ""  # tag written by the archiver: "file.pth@sha256:<prefix>" or "random"
    # Request defaults (options.Defaults is their one home; model-config.yaml may override them):
    short_side: int = DEFAULTS.short_side  # resize when a request gives none of short_side/scale/size
    upsample: bool = DEFAULTS.upsample
    precision: str = DEFAULTS.precision  # fp32 (exact), bf16, fp16 or auto (see precision.py)
    format: str = DEFAULTS.format  # response format when neither the format option nor Accept names one
    max_tokens: int = 16384  # patch tokens per image (1024x1024 at patch 8); over it -> 413
    max_pixels: int = 40_000_000  # decoded pixels per image; over it -> 413 (decompression bombs)
    # Seconds one request may be estimated to take (cost.py, measured at load); over it -> 413.
    # 0: ADMISSION_SHARE of the model's responseTimeout, past which TorchServe kills the worker.
    cost_budget_s: float = 0.0
    # Seconds from a request's arrival after which its answer is of no use, when it names no timeout
    # itself (KServe v2 ``timeout``, the X-Request-Timeout header); 0: none. Not computed past it: 504.
    deadline_s: float = 0.0
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default
    # The attention kernel: measured at load per device, dtype and token range (auto), or fused SDPA
    # everywhere (sdpa): replicas then agree to the last bit, and loading skips the measurement.
    attention_kernel: str = "auto"
    # Written by the archiver for a model built from its checkpoint's own config (a Hugging Face or timm
    # fine-tune, a renamed or resized hub model): the Variant's fields, and what the weights came from.
    architecture: Variant | None = None
    source: str = ""  # e.g. "huggingface dinov2 (model.safetensors)", "timm (x.safetensors)", "hub (x.pth)"

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> ServiceConfig:
        """Build from a dict, rejecting unknown keys and ill-typed values with a clear message."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown handler setting(s) {unknown}; known: {sorted(known)}")
        checked: dict[str, Any] = {}
        for name, value in settings.items():
            if name == "architecture":
                checked[name] = parse_architecture(value)
                continue
            expected = type(getattr(cls, name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # YAML writes 60 for 60.0
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"handler setting {name}={value!r} must be {expected.__name__}")
            checked[name] = value
        config = cls(**checked)
        for name in ("short_side", "max_tokens", "max_pixels"):
            if getattr(config, name) < 1:
                raise ConfigError(f"handler setting {name} must be positive")
        if config.cost_budget_s < 0:
            raise ConfigError("handler setting cost_budget_s must be positive, or 0 for half the responseTimeout")
        if config.deadline_s < 0:
            raise ConfigError("handler setting deadline_s must be positive, or 0 for no default deadline")
        for name, choices in (("precision", PRECISIONS), ("format", FORMATS), ("attention_kernel", ATTENTION_KERNELS)):
            if getattr(config, name) not in choices:
                raise ConfigError(f"handler setting {name}={getattr(config, name)!r} must be one of {list(choices)}")
        return config

    @property
    def variant(self) -> Variant:
        """The model: the archived ``architecture``, else the hub variant named ``model``."""
        if self.architecture is not None:
            if self.architecture.name != self.model:
                raise ConfigError(f"handler setting model={self.model!r} differs from its architecture's name {self.architecture.name!r}")
            return self.architecture
        try:
            return get_variant(self.model)
        except ValueError as e:
            raise ConfigError(f"{e}; a model built from its own checkpoint needs its archived `architecture:` (make archive)") from e

    def defaults(self, accept: str | None = None) -> Defaults:
        """Option defaults for one request; an Accept header may pick the format."""
        return Defaults(self.short_side, self.upsample, self.precision, format_from_accept(accept, self.format))


@dataclass(frozen=True)
class Prepared:
    """One validated request, ready for the network."""

    tensor: torch.Tensor  # (3, H, W), normalised
    image: PreparedImage
    options: Options
    precision: str  # what runs: options.precision resolved by the service's PrecisionPlan
    preprocess_ms: float
    cost_s: float = 0.0  # the estimated seconds of its forward pass (0: no cost model)
    deadline: float | None = None  # unix time; see ImageRequest


class AttentionService:
    """Image requests in, attention results out, for one model on one device.

    ``precisions``: what each requested precision runs as; by default decided here, once, by
    probing the device and the model (``precision.plan_precisions``). ``cost_budget_s``: the seconds
    a request may be estimated to take (None: no admission control); the estimates come from
    ``cost``, by default measured here on the model's first block (``cost.CostModel.measure``).
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
    ) -> None:
        self.variant = variant
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.facts = ModelFacts.of(self.model)  # what option parsing and the description read of it
        self.precisions = precisions or plan_precisions(self.device, lambda precision: map_agreement(self.model, self.device, precision))
        self.cost_budget_s = cost_budget_s
        if cost is None and cost_budget_s is not None:
            cost = CostModel.measure(self.model.blocks[0], variant.embed_dim, variant.num_heads, self.device)
        self.cost = cost

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
            self._admit(items)
            self._drop_late(items)
        good = [p for items in prepared for p in items if isinstance(p, Prepared)]
        computed = dict(zip(map(id, good), self.predict(good), strict=True))
        return [self._describe_together(items, computed) for items in prepared]

    def _prepare(self, request: ImageRequest) -> Prepared | RequestError:
        try:
            return self.prepare(request)
        except RequestError as e:
            logger.info("request rejected (%d): %s", e.status, e)
            return e

    @staticmethod
    def _by_method(items: Sequence[Prepared | RequestError]) -> dict[str, list[int]]:
        """The indices of a group's prepared images, by method, in order."""
        methods: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, Prepared):
                methods.setdefault(item.options.method, []).append(i)
        return methods

    def _check_together(self, items: list[Prepared | RequestError]) -> None:
        """Replace the images of one group that its method rejects, seen together, by their errors."""
        for name, indices in self._by_method(items).items():
            together = [(items[i].options, items[i].image.image_size) for i in indices]  # type: ignore[union-attr]
            for i, error in zip(indices, METHODS[name].check_together(together), strict=True):
                if error is not None:
                    logger.info("request rejected (%d): %s", error.status, error)
                    items[i] = error

    def deadline(self, received: float, timeout_s: float | None = None, deadline: float | None = None) -> float | None:
        """A request's deadline (unix time) from when it was received, the timeout it names (else this
        model's ``deadline_s``, if any) and an absolute deadline it names; None: none."""
        timeout_s = timeout_s if timeout_s is not None else (self.config.deadline_s or None)
        candidates = [t for t in (received + timeout_s if timeout_s is not None else None, deadline) if t is not None]
        return min(candidates) if candidates else None

    def _drop_late(self, items: list[Prepared | RequestError]) -> None:
        """Images whose deadline has passed, or would pass before their estimated forward pass ends, get
        504 and are not computed."""
        now = time.time()
        for i, item in enumerate(items):
            if not isinstance(item, Prepared) or item.deadline is None:
                continue
            if now >= item.deadline:
                why = f"its deadline passed {now - item.deadline:.1f} s before its forward pass could start (it waited in the queue)"
            elif now + item.cost_s > item.deadline:
                why = f"its forward pass would take ~{seconds(item.cost_s)} s and end after its deadline, {item.deadline - now:.1f} s away"
            else:
                continue
            error = DeadlineExceeded(f"not computed: {why}; retry with a longer timeout, or when the server is less busy")
            logger.info("request dropped (%d): %s", error.status, error)
            items[i] = error

    def _admit(self, items: list[Prepared | RequestError]) -> None:
        """Refuse (413) the images of a request whose estimated cost, together, exceeds the budget."""
        good = [item for item in items if isinstance(item, Prepared)]
        total = sum(item.cost_s for item in good)
        if self.cost is None or self.cost_budget_s is None or total <= self.cost_budget_s:
            return
        error = PayloadTooLarge(self.over_budget(good, total))
        logger.info("request rejected (%d): %s", error.status, error)
        for i, item in enumerate(items):
            if isinstance(item, Prepared):
                items[i] = error

    def over_budget(self, items: Sequence[Prepared], total: float) -> str:
        """The 413 message: the estimate, the budget, and how to come within it."""
        assert self.cost is not None and self.cost_budget_s is not None
        largest = max(items, key=lambda item: item.cost_s)
        method = METHODS[largest.options.method]
        blocks = method.cost_blocks(largest.options)
        h, w = largest.image.image_size
        p, prefix = self.variant.patch_size, self.variant.num_prefix_tokens
        fits = max(self.cost.tokens_within(self.cost_budget_s / len(items), blocks) - prefix, 1)  # patch tokens
        side = int(p * (fits * min(h, w) / max(h, w)) ** 0.5)  # the short side, at this image's aspect, that fits
        several = f" ({len(items)} images together)" if len(items) > 1 else ""
        ways = [f"lower short_side (about {side} px fits this image)"]
        if p < 16:
            ways.append(f"use a patch-16 model ({(16 / p) ** 2:.0f}x fewer tokens)")
        if method.name != DEFAULT_METHOD:
            ways.append(f"use method={DEFAULT_METHOD}")
        return (
            f"this request{several} would take ~{seconds(total)} s on this server ({(h // p) * (w // p)} patch tokens through "
            f"{blocks:g} block-equivalents of {self.variant.name}, {method.name}), over its budget of {seconds(self.cost_budget_s)} s "
            f"per request (cost_budget_s; by default half the responseTimeout): {', or '.join(ways)}"
        )

    def _describe_together(
        self, items: Sequence[Prepared | RequestError], computed: Mapping[int, tuple[dict[str, np.ndarray], float]]
    ) -> list[AttentionResult | RequestError]:
        described: dict[int, AttentionResult] = {}
        for name, indices in self._by_method(items).items():
            shares = [(items[i].options, computed[id(items[i])][0]) for i in indices]  # type: ignore[union-attr]
            arrays = METHODS[name].arrays_together(shares, self.variant.patch_size)
            for i, own in zip(indices, arrays, strict=True):
                item = items[i]
                assert isinstance(item, Prepared)
                described[i] = self.describe(item, own, computed[id(item)][1])
        return [item if isinstance(item, RequestError) else described[i] for i, item in enumerate(items)]

    def prepare(self, request: ImageRequest) -> Prepared:
        """Parse the options, decode, resize and crop the image; ``RequestError`` if anything is wrong
        (what the method checks of the processed image comes after, with the request's other images)."""
        start = time.perf_counter()
        options = parse_options(request.options, self.facts, self.config.defaults(request.accept))
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
        cost_s = 0.0
        if self.cost is not None:
            tokens = self.variant.num_prefix_tokens + tensor.shape[1] * tensor.shape[2] // self.variant.patch_size**2
            cost_s = self.cost.estimate(tokens, METHODS[options.method].cost_blocks(options))
        return Prepared(tensor, image, options, self.precisions.resolve(options.precision), elapsed_ms, cost_s, request.deadline)

    def predict(self, items: Sequence[Prepared]) -> list[tuple[dict[str, np.ndarray], float]]:
        """Each item's share of its method's tensors, with the milliseconds of the forward pass it was
        part of; items alike in size, forward pass (``ForwardSpec``) and precision share one."""
        groups: dict[tuple[tuple[int, ...], ForwardSpec, str], list[int]] = {}
        for i, item in enumerate(items):
            spec = METHODS[item.options.method].forward_spec(item.options)
            groups.setdefault((tuple(item.tensor.shape), spec, item.precision), []).append(i)
        if len(items) > 1:
            logger.info("batch of %d images in %d forward pass(es)", len(items), len(groups))
        results: list[tuple[dict[str, np.ndarray], float]] = [({}, 0.0)] * len(items)
        for (_, spec, precision), indices in groups.items():
            start = time.perf_counter()
            batch = torch.stack([items[i].tensor for i in indices]).to(self.device)  # (B, 3, H, W)
            with torch.inference_mode(), autocast(self.device, precision):
                computed = METHODS[spec.method].compute(self.model, batch, spec)  # name -> (B, ...)
            arrays = {name: tensor.cpu().numpy() for name, tensor in computed.items()}  # the method chose the dtypes
            elapsed_ms = (time.perf_counter() - start) * 1000
            for n, i in enumerate(indices):
                results[i] = ({name: array[n] for name, array in arrays.items()}, elapsed_ms)
        return results

    def describe(self, item: Prepared, arrays: dict[str, np.ndarray], forward_ms: float) -> AttentionResult:
        """The result of one item from the method's arrays for it (``Method.arrays``) and the metadata."""
        p = self.variant.patch_size
        options = item.options
        method = METHODS[options.method]
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
        family = FAMILIES[self.variant.family]
        return {
            "model": {
                **self.facts.describe(),
                "weights": self.config.weights,
                **({"source": self.config.source} if self.config.source else {}),
                "mean": list(self.variant.mean),
                "std": list(self.variant.std),
                "licence": family.licence,
                "licence_url": family.licence_url,
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
        }


def parse_architecture(value: object) -> Variant:
    """The ``architecture:`` handler setting (``variants.variant_to_mapping``'s output) as a Variant."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"handler setting architecture must be a mapping of the model's facts, not {type(value).__name__}")
    try:
        return variant_from_mapping(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"handler setting {e}") from e


def seconds(value: float) -> str:
    """Seconds for a message: two significant digits below 10 s, whole seconds above."""
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def select_device(gpu_id: int | str | None) -> torch.device:
    """The GPU the caller assigned (e.g. TorchServe's ``gpu_id``) when CUDA is available, else the CPU."""
    if gpu_id is not None and str(gpu_id) != "" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def create_service(
    settings: Mapping[str, object],
    weights_path: str | Path | None,
    device: torch.device | str = "cpu",
    response_timeout_s: float | None = None,
) -> AttentionService:
    """Build the service from handler settings and the archived weights (``None`` for random weights).
    ``response_timeout_s``: the model server's per-request timeout; requests estimated over
    ``cost_budget_s`` (by default ``ADMISSION_SHARE`` of it) are refused with 413."""
    config = ServiceConfig.from_mapping(settings)
    variant = config.variant
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    # PIL's own decompression-bomb guard, set explicitly to our limit (it errors above twice this);
    # decode_image also checks every image's header against max_pixels before decoding it.
    Image.MAX_IMAGE_PIXELS = config.max_pixels
    if weights_path is None:
        if config.weights != RANDOM_WEIGHTS:
            raise ConfigError(
                "the archive carries no weights file; archive with WEIGHTS=path/to/dino.pth (or WEIGHTS=random for an untrained model)"
            )
        logger.warning("%s has RANDOM weights: attention maps are noise (archived with WEIGHTS=random)", variant.name)
        torch.manual_seed(RANDOM_SEED)
        model = build_model(variant, None)
    else:
        model = build_model(variant, filter_state_dict(read_checkpoint(weights_path)))
        if not config.weights:
            config = replace(config, weights=weights_tag(weights_path))
    logger.info("loaded %s (%s) on %s", variant.name, config.weights, device)
    budget = config.cost_budget_s or (ADMISSION_SHARE * response_timeout_s if response_timeout_s else None)
    service = AttentionService(model, variant, config, device, cost_budget_s=budget)
    dtypes = dict.fromkeys(AUTOCAST_DTYPES[service.precisions.resolve(name)] for name in PRECISIONS)  # what runs here
    if config.attention_kernel == "auto":
        service.model.use_kernels(plan_kernels(service.device, list(dtypes), variant.num_heads, variant.embed_dim // variant.num_heads))
    return service
