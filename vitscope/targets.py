"""What an explanation explains: the ``target`` option of the gradient methods (``legrad``, ``chefer``, ``gradcam``).

A request names one or more targets, each getting its own map from one forward pass of the image:

* ``top`` (the default): the predicted class (a classifier's head), or with ``labels=`` the most
  probable of those texts (CLIP, SigLIP);
* a class index (``281``) or one of the head's labels (``tabby``);
* ``text:<prompt>`` (CLIP, SigLIP: a text tower): the image's agreement with the prompt;
* ``embedding`` (any model, DINO included; two images or more sent together): the cosine of each
  image's pooled embedding to the first image's (the first image's: to the mean of the others').

Several targets: a JSON list (``["text:a cat", "text:a dog"]``), or ``|`` between them in a form
field. A leaf module (of the package it imports ``vocab`` and ``errors``): option parsing and the
methods read it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import OptionError
from .vocab import ModelFacts, OptionSpec, listed

TOP, CLASS, TEXT, EMBEDDING = "top", "class", "text", "embedding"  # the kinds of target
TEXT_PREFIX = "text:"
SEPARATOR = "|"  # between targets in a form field (as ``labels``)
DEFAULT_MAX_TARGETS = 16  # targets per request unless the model's max_targets setting says otherwise
MAX_PROMPT_CHARS = 300


@dataclass(frozen=True)
class Target:
    """One target of a request: its kind and, for a class, its index; for a text, its prompt."""

    kind: str
    index: int | None = None
    text: str | None = None

    @property
    def name(self) -> str:
        """How the request wrote it, normalised: ``top``, ``class 281``, ``text:a dog``, ``embedding``."""
        if self.kind == CLASS:
            return f"class {self.index}"
        if self.kind == TEXT:
            return f"{TEXT_PREFIX}{self.text}"
        return self.kind


def offered(facts: ModelFacts) -> list[str]:
    """The targets a model offers, as the describe API and the 400s list them."""
    out = []
    if facts.num_classes or facts.text:
        out.append(TOP + (" (the predicted class)" if facts.num_classes else " (the most probable of labels=)"))
    if facts.num_classes:
        out.append(f"a class index 0..{facts.num_classes - 1} or one of its {facts.num_classes} labels")
    if facts.text:
        out.append(f"{TEXT_PREFIX}<prompt>")
    out.append(f"{EMBEDDING} (two images or more)")
    return out


def _items(value: object) -> list[object]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    items = listed("target", value, SEPARATOR, "targets")
    if items is not None:
        return items
    raise OptionError(
        f"target: give a target (top, a class, text:<prompt>, embedding), a JSON list of them, or them separated by '{SEPARATOR}'"
    )


def _one(item: object, facts: ModelFacts) -> Target:
    has = "; this model offers: " + "; ".join(offered(facts))
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    if not isinstance(item, str):
        raise OptionError(f"target={item!r} is not a target{has}")
    text = item.strip()
    if text.lower() == TOP:
        if not (facts.num_classes or facts.text):
            raise OptionError(f"target=top: {facts.name} has no classifier head and no text tower, so it predicts nothing{has}")
        return Target(TOP)
    if text.lower() == EMBEDDING:
        return Target(EMBEDDING)
    if text.lower().startswith(TEXT_PREFIX):
        prompt = text[len(TEXT_PREFIX) :].strip()
        if not facts.text:
            raise OptionError(f"target={text[:60]!r}: text prompts need a text tower (CLIP, SigLIP); {facts.name} has none{has}")
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise OptionError(
                f"target={text[:60]!r}: give a prompt of 1..{MAX_PROMPT_CHARS} characters after 'text:', e.g. target=text:a dog"
            )
        return Target(TEXT, text=prompt)
    if text.lstrip("+-").isdigit():
        index = int(text)
        if not facts.num_classes:
            raise OptionError(f"target={text}: {facts.name} has no classifier head to take a class of{has}")
        if not 0 <= index < facts.num_classes:
            raise OptionError(f"target={index} is out of range: class indices are 0..{facts.num_classes - 1}")
        return Target(CLASS, index=index)
    if facts.num_classes and facts.labels:
        exact = {label: i for i, label in enumerate(facts.labels)}
        folded = {label.casefold(): i for i, label in reversed(list(enumerate(facts.labels)))}
        if text in exact or text.casefold() in folded:
            return Target(CLASS, index=exact.get(text, folded.get(text.casefold())))
        close = difflib.get_close_matches(text, facts.labels, n=3, cutoff=0.5)
        hint = f"; the closest labels: {close}" if close else ""
        raise OptionError(
            f"target={text[:60]!r} is not one of the model's labels{hint}; a class index 0..{facts.num_classes - 1} works too"
        )
    raise OptionError(f"target={text[:60]!r} is not a target{has}")


def parse_targets(value: object, facts: ModelFacts) -> tuple[Target, ...]:
    """A ``target`` option value -> its targets, in order, each once; ``OptionError`` naming the option."""
    targets = tuple(_one(item, facts) for item in _items(value))
    if not targets:
        raise OptionError("target: give at least one target")
    if len(targets) > facts.max_targets:
        raise OptionError(f"target: {len(targets)} targets, more than this model's max_targets ({facts.max_targets}) per request")
    repeated = sorted({t.name for t in targets if targets.count(t) > 1})
    if repeated:
        raise OptionError(f"target: each target once; repeated: {repeated[:3]}")
    return targets


TARGET_OPTION = OptionSpec(
    "target",
    "targets",
    parse_targets,
    "what the map explains: `top` (the predicted class), a class index or label, `text:<prompt>` (CLIP, SigLIP), or `embedding` "
    "(the cosine to the first image's embedding); several as a JSON list or separated by `|`, one map each "
    "([Explaining a decision](explain.md))",
    None,
    "`top`",
)
