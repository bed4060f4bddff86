"""Loading: handler settings and the archived weights -> the model on its device -> the service."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ..model.checkpoint import RANDOM_WEIGHTS, build_model, filter_state_dict, read_checkpoint, weights_tag
from ..model.kernels import plan_kernels
from ..model.tokenizer import load_tokenizer
from ..precision import AUTOCAST_DTYPES, PRECISIONS
from ..predictions import Predictor
from .admission import ADMISSION_SHARE
from .config import ConfigError, ServiceConfig
from .pipeline import AttentionService

logger = logging.getLogger(__name__)

RANDOM_SEED = 0  # random-weight models are reproducible across workers and restarts


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
    model_dir: str | Path | None = None,
) -> AttentionService:
    """Build the service from handler settings and the archived weights (``None`` for random weights).
    ``response_timeout_s``: the model server's per-request timeout; requests estimated over
    ``cost_budget_s`` (by default ``ADMISSION_SHARE`` of it) are refused with 413. ``model_dir``: the
    unpacked archive (its tokenizer files; default: the weights' folder)."""
    config = ServiceConfig.from_mapping(settings)
    variant = config.variant
    config.check_heads(variant)
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
    tokenizer = None
    if variant.text is not None:
        folder = Path(model_dir or (Path(weights_path).parent if weights_path else ".")) / config.tokenizer
        tokenizer = load_tokenizer(folder, variant.text.tokenizer, variant.text.context_length, canonicalize=variant.text.canonicalize)
    predictor = Predictor(model, config.labels, tokenizer)
    service = AttentionService(model, variant, config, device, cost_budget_s=budget, predictor=predictor)
    dtypes = dict.fromkeys(AUTOCAST_DTYPES[service.precisions.resolve(name)] for name in PRECISIONS)  # what runs here
    if config.attention_kernel == "auto":
        service.model.use_kernels(plan_kernels(service.device, list(dtypes), variant.num_heads, variant.embed_dim // variant.num_heads))
    return service
