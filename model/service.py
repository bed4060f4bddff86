"""The serving pipeline, independent of any model server.

``AttentionService.handle(payloads)`` takes a batch of request payloads (see ``request.py``) and
returns one ``Reply`` (HTTP status, body bytes, content type) per payload. A bad request gets its
own 4xx reply and does not affect the others; requests of the same size and layer share one
forward pass.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from http import HTTPStatus
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .attention import map_agreement, patch_attention, to_tensor, upsample_nearest
from .checkpoint import RANDOM_WEIGHTS, build_model, filter_state_dict, read_checkpoint, weights_tag
from .encoding import JSON_CONTENT_TYPE, Encoded, encode_attention, encode_error, format_from_accept
from .errors import RequestError
from .image import PreparedImage, prepare_image
from .options import FORMATS, PRECISIONS, Defaults, Options, parse_options
from .precision import PrecisionPlan, plan_precisions
from .request import split_payload
from .variants import Variant, get_variant
from .vit import VisionTransformer

logger = logging.getLogger(__name__)

RANDOM_SEED = 0  # random-weight models are reproducible across workers and restarts


class ConfigError(ValueError):
    """Invalid handler settings (model-config.yaml ``handler:`` section)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Handler settings; every field can be set in model-config.yaml under ``handler:``."""

    model: str = "vit_small"
    patch_size: int = 8
    weights: str = ""  # tag written by the archiver: "file.pth@sha256:<prefix>" or "random"
    short_side: int = 480  # default resize when a request gives none of short_side/scale/size
    upsample: bool = True
    precision: str = "fp32"  # default forward precision: fp32 (exact), bf16, fp16 or auto (see precision.py)
    format: str = "json"  # default response format when neither the format option nor Accept names one
    max_tokens: int = 16384  # patch tokens per image (1024x1024 at patch 8); over it -> 413
    max_pixels: int = 40_000_000  # decoded pixels per image; over it -> 413 (decompression bombs)
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> "ServiceConfig":
        """Build from a dict, rejecting unknown keys and ill-typed values with a clear message."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown handler setting(s) {unknown}; known: {sorted(known)}")
        for name, value in settings.items():
            expected = type(getattr(cls, name))
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"handler setting {name}={value!r} must be {expected.__name__}")
        config = cls(**settings)
        for name in ("short_side", "max_tokens", "max_pixels"):
            if getattr(config, name) < 1:
                raise ConfigError(f"handler setting {name} must be positive")
        for name, choices in (("precision", PRECISIONS), ("format", FORMATS)):
            if getattr(config, name) not in choices:
                raise ConfigError(f"handler setting {name}={getattr(config, name)!r} must be one of {list(choices)}")
        return config

    def defaults(self, accept: str | None = None) -> Defaults:
        """Option defaults for one request; an Accept header may pick the format."""
        return Defaults(self.short_side, self.upsample, self.precision, format_from_accept(accept, self.format))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    # For metrics: preprocess_ms, forward_ms (of the forward it shared), encode_ms, tokens,
    # response_bytes on success; the RequestError reason (e.g. "image", "too_large") on failure.
    stats: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Prepared:
    """One validated request, ready for the network."""

    tensor: torch.Tensor  # (3, H, W), normalised
    image: PreparedImage
    options: Options
    precision: str  # what runs: options.precision resolved by the service's PrecisionPlan


@dataclass
class Outcome:
    """What became of one payload: prepared and predicted, or rejected."""

    item: Prepared | None = None
    maps: np.ndarray | None = None  # (heads, H/p, W/p)
    error: RequestError | None = None
    preprocess_ms: float = 0.0
    forward_ms: float = 0.0  # of the (possibly shared) forward pass


class AttentionService:
    """Bytes + options in, attention JSON out, for one model on one device.

    ``precisions``: what each requested precision runs as; by default decided here, once, by
    probing the device and the model (``precision.plan_precisions``).
    """

    def __init__(
        self,
        model: VisionTransformer,
        variant: Variant,
        config: ServiceConfig,
        device: torch.device | str = "cpu",
        precisions: PrecisionPlan | None = None,
    ) -> None:
        self.variant = variant
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precisions = precisions or plan_precisions(
            self.device, lambda precision: map_agreement(self.model, self.device, precision)
        )

    def prepare(self, payload: Mapping[str, object], accept: str | None = None) -> Prepared:
        """Parse, decode, resize and crop one request; ``RequestError`` if anything is wrong."""
        data, raw_options = split_payload(payload)
        options = parse_options(
            raw_options, depth=self.model.depth, num_heads=self.variant.num_heads, defaults=self.config.defaults(accept)
        )
        image = prepare_image(
            data,
            patch_size=self.variant.patch_size,
            max_pixels=self.config.max_pixels,
            max_tokens=self.config.max_tokens,
            short_side=options.short_side,
            scale=options.scale,
            size=options.size,
        )
        tensor = to_tensor(image.image, self.variant.mean, self.variant.std)
        return Prepared(tensor, image, options, self.precisions.resolve(options.precision))

    def predict(self, items: Sequence[Prepared]) -> list[tuple[np.ndarray, float]]:
        """Patch-grid attention (heads, H/p, W/p) per item, with the milliseconds of the forward pass it
        was part of; items alike in size, layer and precision share one forward."""
        groups: dict[tuple[tuple[int, ...], int, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((tuple(item.tensor.shape), item.options.layer, item.precision), []).append(i)
        if len(items) > 1:
            logger.info("batch of %d images in %d forward pass(es)", len(items), len(groups))
        results: list[tuple[np.ndarray, float]] = [(np.empty(0), 0.0)] * len(items)
        for (_, layer, precision), indices in groups.items():
            start = time.perf_counter()
            batch = torch.stack([items[i].tensor for i in indices]).to(self.device)  # (B, 3, H, W)
            maps = patch_attention(self.model, batch, layer, precision).cpu().numpy()  # (B, heads, H/p, W/p)
            elapsed_ms = (time.perf_counter() - start) * 1000
            for i, m in zip(indices, maps):
                results[i] = (m, elapsed_ms)
        return results

    def describe(self, item: Prepared, maps: np.ndarray) -> tuple[dict[str, object], np.ndarray]:
        """Metadata and the attention array (requested heads, upsampled if asked) of one item."""
        p = self.variant.patch_size
        options = item.options
        maps = maps[list(options.heads)]  # (heads requested, H/p, W/p)
        attention = upsample_nearest(maps, p) if options.upsample else np.ascontiguousarray(maps)
        meta = {
            "model": self.variant.name,
            "patch_size": p,
            "layer": options.layer,
            "num_heads": self.variant.num_heads,
            "heads": list(options.heads),
            "weights": self.config.weights,
            "input_size": list(item.image.input_size),
            "resized_size": list(item.image.resized_size),
            "image_size": list(item.image.image_size),
            "grid": list(maps.shape[1:]),
            "upsampled": options.upsample,
            "precision": item.precision,
            "precision_requested": options.precision,
        }
        return meta, attention

    def encode(self, item: Prepared, maps: np.ndarray) -> Encoded:
        """The response for one item, given its (heads, H/p, W/p) maps."""
        meta, attention = self.describe(item, maps)
        return encode_attention(meta, attention, item.options.format, item.options.dtype)

    def run(self, payloads: Sequence[Mapping[str, object]], accepts: Sequence[str | None] | None = None) -> list[Outcome]:
        """Prepare and predict a batch; one ``Outcome`` per payload (its maps, or its error)."""
        accepts = accepts or [None] * len(payloads)
        outcomes: list[Outcome] = []
        for payload, accept in zip(payloads, accepts):
            start = time.perf_counter()
            try:
                outcomes.append(Outcome(item=self.prepare(payload, accept), preprocess_ms=(time.perf_counter() - start) * 1000))
            except RequestError as e:
                logger.info("request rejected (%d): %s", e.status, e)
                outcomes.append(Outcome(error=e))
        good = [o for o in outcomes if o.item is not None]
        for outcome, (maps, forward_ms) in zip(good, self.predict([o.item for o in good])):
            outcome.maps, outcome.forward_ms = maps, forward_ms
        return outcomes

    def handle(self, payloads: Sequence[Mapping[str, object]], accepts: Sequence[str | None] | None = None) -> list[Reply]:
        """One reply per payload: 200 with the attention, or the request's own 4xx error.

        ``accepts``: each request's HTTP Accept header, if the server passes them on.
        """
        replies = []
        for outcome in self.run(payloads, accepts):
            if outcome.error is not None:
                error = outcome.error
                replies.append(Reply(int(error.status), encode_error(str(error)), reason=error.reason))
                continue
            start = time.perf_counter()
            encoded = self.encode(outcome.item, outcome.maps)
            stats = {
                "preprocess_ms": outcome.preprocess_ms,
                "forward_ms": outcome.forward_ms,
                "encode_ms": (time.perf_counter() - start) * 1000,
                "tokens": float(outcome.maps.shape[1] * outcome.maps.shape[2]),
                "response_bytes": float(len(encoded.body)),
            }
            replies.append(Reply(int(HTTPStatus.OK), encoded.body, encoded.content_type, encoded.headers, stats))
        return replies


def select_device(gpu_id: int | str | None) -> torch.device:
    """The GPU the caller assigned (e.g. TorchServe's ``gpu_id``) when CUDA is available, else the CPU."""
    if gpu_id is not None and str(gpu_id) != "" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def create_service(
    settings: Mapping[str, object], weights_path: str | Path | None, device: torch.device | str = "cpu"
) -> AttentionService:
    """Build the service from handler settings and the archived weights (``None`` for random weights)."""
    config = ServiceConfig.from_mapping(settings)
    try:
        variant = get_variant(config.model, config.patch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    # PIL's own decompression-bomb guard, set explicitly to our limit (it errors above twice this);
    # decode_image also checks every image's header against max_pixels before decoding it.
    Image.MAX_IMAGE_PIXELS = config.max_pixels
    if weights_path is None:
        if config.weights != RANDOM_WEIGHTS:
            raise ConfigError(
                "the archive carries no weights file; archive with WEIGHTS=path/to/dino.pth "
                "(or WEIGHTS=random for an untrained model)"
            )
        logger.warning("%s has RANDOM weights: attention maps are noise (archived with WEIGHTS=random)", variant.archive_name)
        torch.manual_seed(RANDOM_SEED)
        model = build_model(variant, None)
    else:
        model = build_model(variant, filter_state_dict(read_checkpoint(weights_path)))
        if not config.weights:
            config = replace(config, weights=weights_tag(weights_path))
    logger.info("loaded %s (%s) on %s", variant.archive_name, config.weights, device)
    return AttentionService(model, variant, config, device)
