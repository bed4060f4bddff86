"""The handler settings: model-config.yaml's ``handler:`` section, checked once at load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..model.kernels import ATTENTION_KERNELS
from ..model.variants import DEFAULT_MODEL, Variant, get_variant, variant_from_mapping
from ..options import DEFAULTS, FORMATS, Defaults
from ..precision import PRECISIONS
from ..targets import DEFAULT_MAX_TARGETS


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
    # Scale each method's estimates by what its passes measured here (cost.Learned); false: the declared factors only.
    cost_learning: bool = True
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
    # A classifier head's class names, one per class (archived from id2label, LABELS= or ImageNet's); () : "class <i>"
    labels: tuple[str, ...] = ()
    max_targets: int = DEFAULT_MAX_TARGETS  # targets one explanation request may name (target=); more -> 400
    tokenizer: str = ""  # the archive's folder of tokenizer files for a text tower (CLIP, SigLIP); "": none

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
            if name == "labels":
                if not isinstance(value, (list, tuple)) or not all(isinstance(label, str) for label in value):
                    raise ConfigError(f"handler setting labels must be a list of class names, not {type(value).__name__}")
                checked[name] = tuple(value)
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

    def check_heads(self, variant: Variant) -> None:
        """The labels and the tokenizer agree with the model's head and text tower (``ConfigError`` if not)."""
        if self.labels and len(self.labels) != variant.num_classes:
            raise ConfigError(f"handler setting labels has {len(self.labels)} names for a head of {variant.num_classes} classes")
        if variant.text is not None and not self.tokenizer:
            raise ConfigError(f"{variant.name} has a text tower but no tokenizer: archive its tokenizer files (make archive)")

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

    def defaults(self, accept_format: str | None = None) -> Defaults:
        """Option defaults for one request; the format its Accept header names, if any, wins over ours."""
        return Defaults(self.short_side, self.upsample, self.precision, accept_format or self.format)


def parse_architecture(value: object) -> Variant:
    """The ``architecture:`` handler setting (``variants.variant_to_mapping``'s output) as a Variant."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"handler setting architecture must be a mapping of the model's facts, not {type(value).__name__}")
    try:
        return variant_from_mapping(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"handler setting {e}") from e
