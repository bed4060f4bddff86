"""Ways of looking at the model, one module each, and the registry everything else reads.

    base        what a method declares (options, outputs, forward needs, compute)
    maps        what the map methods share: the attention/masks/boxes/registers outputs, [CLS] rows -> maps
    attention   method=attention: [CLS] attention per head of one block or several
    rollout     method=rollout: attention rollout through blocks 0..layer
    features    what the feature methods share: a block's normed patch features, features=true
    similarity  method=similarity: cosine similarity of the patch features to the patch at a point
    pca         method=pca: the PCA colours of the patch features (foreground, a reusable basis)
    explain     what the explanation methods share: target=, the relevance output, the goals
    legrad      method=legrad: LeGrad, each late block's score's gradient on its attention
    chefer      method=chefer: Chefer's gradient x attention rule through every block
    gradcam     method=gradcam: Grad-CAM on a block's tokens

To add a method: write a module with a ``Method`` subclass and ``METHOD = YourMethod()``, and add
its name to ``MODULES`` below (docs/guides/method.md). A method imports the option vocabulary from
``vocab.py``, never ``options.py``. Option parsing, the service, the codecs, the describe API (and
through it the viewer and the client) and the docs' tables (``python -m scripts.docs``) follow.
"""

from __future__ import annotations

from importlib import import_module

from ..vocab import OptionSpec, OutputSpec
from .base import Method

# The registry: the method modules, in the order the docs, the describe API and the viewer list
# them. Each defines ``METHOD = YourMethod()``; a new method is its module and one line here.
MODULES: tuple[str, ...] = (
    "attention",
    "rollout",
    "similarity",
    "pca",
    "legrad",
    "chefer",
    "gradcam",
)


def load(modules: tuple[str, ...]) -> dict[str, Method]:
    """The methods of ``modules`` (names in this package) by name; ``TypeError`` naming a module whose
    ``METHOD`` is not a ``Method``, ``ValueError`` for two methods of one name."""
    methods: dict[str, Method] = {}
    for name in modules:
        method = getattr(import_module(f"{__name__}.{name}"), "METHOD", None)
        if not isinstance(method, Method):
            raise TypeError(f"{__name__}.{name} must define METHOD = YourMethod(), an instance of methods.base.Method")
        if method.name in methods:
            raise ValueError(f"{__name__}.{name}: a method named {method.name!r} is already registered")
        methods[method.name] = method
    return methods


METHODS: dict[str, Method] = load(MODULES)


def method_options() -> tuple[OptionSpec, ...]:
    """Every method's own options, in registry order."""
    return tuple(spec for method in METHODS.values() for spec in method.options)


def all_outputs() -> tuple[OutputSpec, ...]:
    """Every output any method returns, each once, in registry order."""
    return tuple({output.name: output for method in METHODS.values() for output in method.outputs}.values())


__all__ = ["METHODS", "MODULES", "Method", "all_outputs", "method_options"]
