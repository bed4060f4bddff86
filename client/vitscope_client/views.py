"""How the client draws each method's maps, as data: ``METHOD_VIEWS`` holds the views of the methods
the client draws in a way of their own (titles, masks, colours); any other method is drawn from its
declared outputs (``generic_view``). It imports no other module of the client's but ``mirrors``: the
parsing (``response``) and the drawing (``draw``) both read it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .mirrors import DEFAULT_METHOD


def heads_headline(meta: dict) -> str:
    layers = f"layers {meta['layers']}" if meta.get("layers") else f"layer {meta['layer']}"
    heads = meta["heads"] if len(meta["heads"]) < meta.get("num_heads", 0) else "all"
    return f"{layers}  heads {heads}"


def rollout_headline(meta: dict) -> str:
    return f"rollout through layer {meta['layer']} ({meta['head_fusion']} of heads, discard {meta['discard_ratio']:g})"


def pca_headline(meta: dict) -> str:
    source = "the basis sent" if meta.get("pca_fit") == "basis" else "this image"
    return f"PCA colours of layer {meta['layer']}'s features (foreground {meta['foreground']}, fitted on {source})"


def similarity_headline(meta: dict) -> str:
    (x, y), (row, col) = meta["point"], meta["patch"]
    return f"similarity to patch ({row}, {col}) at x={x}, y={y}, layer {meta['layer']}"


def other_headline(meta: dict) -> str:
    return f"{meta.get('method')} of layer {meta['layer']}"


@dataclass(frozen=True)
class MethodView:
    """How the client draws one method's maps. ``METHOD_VIEWS`` is the one place the client knows
    methods by name; any other method gets the view ``generic_view`` makes of its main output."""

    headline: Callable[[dict], str]  # what the figure's title says after the model name
    fused: bool  # one map per layer (the heads fused, or no heads at all), else one map per head
    output: str = "attention"  # the response's array that holds the maps
    fused_title: str = "{method} through layer {layer}"  # the one map's panel title (fused; rgb: the colours' title)
    masks: bool = True  # DINO's masks make sense of its maps (a share of the mass: not for signed maps)
    rgb: bool = False  # its output is one colour image [3, H, W] in [0, 1], not maps to colour
    mean_title: str = "head mean"  # the summary of a layer's several maps
    panels: tuple[str, ...] = ()  # the names of a layer's maps when they are not heads (``generic_view``)

    def map_names(self, meta: dict) -> list[str]:
        """One name per map of a layer: "head 0", ..., or the method's name for a fused map (R, G, B: three)."""
        if self.rgb:
            return ["red", "green", "blue"]
        if self.panels:
            return list(self.panels)
        return [str(meta.get("method"))] if self.fused else [f"head {h}" for h in meta["heads"]]

    def map_titles(self, meta: dict) -> list[str]:
        """Panel titles of a layer's maps."""
        return [self.fused_title.format(**meta)] if self.fused else self.map_names(meta)


METHOD_VIEWS: dict[str, MethodView] = {
    DEFAULT_METHOD: MethodView(heads_headline, fused=False),
    "rollout": MethodView(rollout_headline, fused=True),
    "similarity": MethodView(similarity_headline, fused=True, output="similarity", fused_title="cosine similarity", masks=False),
    "pca": MethodView(pca_headline, fused=True, output="pca", fused_title="PCA colours", masks=False, rgb=True),
}
METHODS = tuple(METHOD_VIEWS)  # the methods with a view of their own (--method takes any the server describes)
OTHER_METHOD = MethodView(other_headline, fused=False)


def view_of(meta: dict) -> MethodView:
    """The view of the method ``meta`` names (``OTHER_METHOD`` for one the client has no view for)."""
    return METHOD_VIEWS.get(meta.get("method") or DEFAULT_METHOD, OTHER_METHOD)


def generic_view(output: str, maps: np.ndarray, layers: bool = False, rgb: bool = False, names: Sequence[str] = ()) -> MethodView:
    """The view of a method the client has none for, from its main output ``output`` (``maps``: the
    array, on the patch grid or in pixels; ``layers``: its first axis is the layers of ``layers=``):
    a colour image when the output is one (``rgb``), else one map, or numbered maps of its leading axes
    flattened (DINO's masks with ``--mask`` only for maps with no negative values). ``names``: the
    server's name of each map (an explanation's targets), used when there is one per map."""
    if rgb:
        return MethodView(other_headline, fused=True, output=output, fused_title=output, masks=False, rgb=True)
    lead = maps.shape[1 if layers else 0 : -2]
    masks = bool(maps.size) and float(np.nanmin(maps)) >= 0
    count = int(np.prod(lead, dtype=np.int64))
    named = len(names) == count
    if count == 1:
        title = f"{output}: {names[0]}" if named else output
        escaped = title.replace("{", "{{").replace("}", "}}")  # fused_title is a format string of the response's meta
        return MethodView(other_headline, fused=True, output=output, fused_title=escaped, masks=masks, panels=(title,))
    panels = tuple(names) if named else tuple(f"{output} {','.join(map(str, index))}" for index in np.ndindex(*lead))
    return MethodView(other_headline, fused=False, output=output, masks=masks, mean_title="mean", panels=panels)
