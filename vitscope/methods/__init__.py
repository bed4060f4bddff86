"""Ways of looking at the model, one module each, and the registry everything else reads.

    base        what a method declares (options, outputs, forward needs, compute) and the option vocabulary
    maps        what the map methods share: the attention/masks/boxes/registers outputs, [CLS] rows -> maps
    attention   method=attention: [CLS] attention per head of one block or several
    rollout     method=rollout: attention rollout through blocks 0..layer
    features    what the feature methods share: a block's normed patch features, features=true
    similarity  method=similarity: cosine similarity of the patch features to the patch at a point
    pca         method=pca: the PCA colours of the patch features (foreground, a reusable basis)

To add a method: write a module with a ``Method`` subclass and ``METHOD = YourMethod()``, and add
it to ``METHODS`` below. Option parsing, the service, the codecs, the describe API (and through it
the viewer and the client), README's tables (``python -m scripts.docs``) follow.
"""

from __future__ import annotations

from .attention import METHOD as ATTENTION
from .base import Method, ModelFacts, OptionSpec, OutputSpec
from .pca import METHOD as PCA
from .rollout import METHOD as ROLLOUT
from .similarity import METHOD as SIMILARITY

METHODS: dict[str, Method] = {method.name: method for method in (ATTENTION, ROLLOUT, SIMILARITY, PCA)}
DEFAULT_METHOD: str = ATTENTION.name


def method_options() -> tuple[OptionSpec, ...]:
    """Every method's own options, in registry order."""
    return tuple(spec for method in METHODS.values() for spec in method.options)


def all_outputs() -> tuple[OutputSpec, ...]:
    """Every output any method returns, each once, in registry order."""
    return tuple({output.name: output for method in METHODS.values() for output in method.outputs}.values())


__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "ModelFacts", "OptionSpec", "OutputSpec", "all_outputs", "method_options"]
