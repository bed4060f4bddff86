"""The client's matplotlib figures of a parsed answer, drawn as its method's view (``views``) says.

A method with a view of its own (``METHOD_VIEWS``) is drawn in its way (titles, masks, colours); any
other is drawn from its declared outputs (``generic_view``): its main output's float maps, leading
axes flattened to panels, or its colour image ``[3, H, W]`` (an output the server describes with
``rgb: true``), with the ``point`` an answer carries marked. An answer with ``faithfulness`` (asked
with ``faithfulness=deletion,insertion``) gets, beside its maps, one small axes per curve set: the
deletion and insertion curves against the fraction of patches, the random order's dashed. The figures
take any ``Drawable`` (``response.Response`` is one): this module does not import ``response``, which
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle

from .errors import ClientError
from .mirrors import FAITHFULNESS_METRICS as METRICS
from .mirrors import FAITHFULNESS_RANDOM as RANDOM
from .mirrors import threshold_masks
from .views import MethodView

OVERLAY_ALPHA = 0.6
PANEL_INCHES = 2.6  # width of one map
TITLE_INCHES = 0.25  # one line of panel title
COLORBAR_INCHES = 0.35  # a panel's colour bar and its labels, beside the map
MAX_COLS = 4
METRIC_COLOURS = {"deletion": "tab:red", "insertion": "tab:blue"}  # the map's order solid, the random order's dashed
METRIC_ABBREVIATIONS = {"deletion": "del", "insertion": "ins"}


class Drawable(Protocol):
    """What a figure is drawn from: a parsed answer (``response.Response``, which draws itself with
    these functions; this module does not import it back)."""

    @property
    def meta(self) -> dict: ...
    @property
    def pixels(self) -> np.ndarray: ...
    @property
    def image(self) -> np.ndarray | None: ...
    @property
    def masks(self) -> np.ndarray | None: ...
    @property
    def boxes(self) -> np.ndarray | None: ...
    @property
    def registers(self) -> np.ndarray | None: ...
    @property
    def arrays(self) -> dict[str, np.ndarray]: ...
    @property
    def view(self) -> MethodView: ...
    @property
    def title(self) -> str: ...
    @property
    def rows(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]: ...
    @property
    def targets(self) -> list[dict]: ...
    @property
    def predictions(self) -> list[dict]: ...
    @property
    def faithfulness(self) -> list[dict]: ...


def normalize(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay(
    image: np.ndarray, heat: np.ndarray, cmap: str, alpha: float = OVERLAY_ALPHA, bounds: tuple[float, float] | None = None
) -> np.ndarray:
    """Heat map (H, W) coloured with ``cmap`` (scaled to its own range, or to ``bounds``) and blended
    over the image: (H, W, 3) uint8."""
    if bounds is None:
        scaled = normalize(heat)
    else:
        low, high = bounds
        scaled = np.clip((heat - low) / (high - low), 0, 1) if high > low else np.zeros_like(heat)
    coloured = matplotlib.colormaps[cmap](scaled)[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1 - alpha) * image / 255.0 + alpha * coloured
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def figure_layout(att: Drawable, mask: float | None) -> tuple[int, int]:
    """(rows, cols): a summary row (image, mean, overlay), then the maps: one row per layer of a
    ``layers=`` answer (a column per head), else the heads wrapped at MAX_COLS and, with masks,
    as many mask rows."""
    rows = att.rows
    if len(rows) > 1:
        return 1 + len(rows), max(3, len(rows[0][1]))
    with_masks = mask is not None or att.masks is not None
    if att.view.fused:  # the summary row shows the one map; its mask below it
        return 1 + int(with_masks), 3
    count = len(rows[0][1])
    cols = max(3, min(MAX_COLS, count))
    map_rows = -(-count // cols)
    return 1 + map_rows * (2 if with_masks else 1), cols


def figure_size(rows: int, cols: int, aspect: float) -> tuple[float, float]:
    """Starting size: each panel's map (height/width = ``aspect``), its colour bar and one title line;
    ``fit_height`` then removes what the colour bars took from the maps' width."""
    width = cols * (PANEL_INCHES + COLORBAR_INCHES)
    return width, rows * (PANEL_INCHES * aspect + TITLE_INCHES) + TITLE_INCHES  # + the suptitle


def map_titles(att: Drawable, label: str, count: int, row: int = 0) -> list[str]:
    """Panel titles of one row of maps; with the server's ``registers``, each map's share on them."""
    prefix = f"{label} " if att.meta.get("layers") else ""
    titles = [prefix + title for title in att.view.map_titles(att.meta)[:count]]
    if att.registers is None:
        return titles
    shares = (att.registers[row] if att.meta.get("layers") else att.registers).sum(axis=-1)  # (maps,)
    return [f"{title}, registers {share:.0%}" for title, share in zip(titles, shares, strict=False)]


def masks_to_draw(server_masks: np.ndarray | None, maps: np.ndarray, patch: int, mask: float | None) -> np.ndarray | None:
    """The server's masks of one row of maps (``mask=t``), else the client's own DINO masks keeping
    a fraction ``mask`` of each map's mass (computed on the patch grid of the pixel maps), else None."""
    if server_masks is not None:
        return server_masks
    return threshold_masks(maps[:, ::patch, ::patch], mask) if mask is not None else None


def mark_point(ax: Axes, point: list[int]) -> None:
    """The pixel a similarity map is about: a cross with a dark edge, visible on any colour."""
    x, y = point
    ax.plot([x], [y], marker="P", markersize=9, color="cyan", markeredgecolor="black", markeredgewidth=1)


def draw_masks(ax: Axes, masks: np.ndarray, boxes: np.ndarray | None, patch: int) -> None:
    """DINO-style mask outline (patch grid -> pixels) and, if any, the box of its largest component."""
    pixels = masks.repeat(patch, axis=0).repeat(patch, axis=1)
    if pixels.any() and not pixels.all():
        ax.contour(pixels.astype(float), levels=[0.5], colors="cyan", linewidths=1)
    if boxes is not None and len(boxes) == 4:
        x0, y0, x1, y1 = (float(v) for v in boxes)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))


def curve_columns(sets: int, rows: int) -> int:
    """Columns of faithfulness axes beside the maps: one axes per curve set, down the figure's rows first."""
    return -(-sets // rows)


def figure_axes(fig: Figure, rows: int, cols: int, sets: int) -> tuple[np.ndarray, list[Axes]]:
    """The maps' axes, (rows, cols), and beside them the ``sets`` faithfulness axes (``curve_columns``)."""
    grid = fig.add_gridspec(rows, cols + curve_columns(sets, rows))
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(rows)])
    return axes, [fig.add_subplot(grid[i % rows, cols + i // rows]) for i in range(sets)]


def curve_set_name(entry: dict, targets: Sequence[dict], predictions: Sequence[dict] = ()) -> str:
    """What a curve set is of: its target as ``targets`` names it (a map without a target: the top class
    it is scored on, ``class <k>``, or ``image``), with the class's label where the answer gives one."""
    name = str(entry["target"])
    labels = {f"class {p.get('index')}": p.get("label") for p in predictions} | {t.get("target"): t.get("label") for t in targets}
    label = labels.get(name)
    return f"{name} ({label})" if label and label != name else name


def auc_title(entry: dict, name: str) -> str:
    """A curve set's title: each metric's AUC and its random order's, ``class 281: del 0.21 (random 0.58) · ins ...``."""
    aucs = [
        f"{METRIC_ABBREVIATIONS[metric]} {entry[metric]['auc']:.2f} (random {entry[RANDOM][metric]['auc']:.2f})"
        for metric in METRICS
        if metric in entry
    ]
    return f"{name}:\n{' · '.join(aucs)}"


def draw_curves(ax: Axes, entry: dict, title: str) -> None:
    """One curve set against the fraction k/S of patches removed (deletion) or put back (insertion):
    the map's order solid, the random order's of the same metric dashed in the same colour; the scores
    on [0, 1] (wider where a cosine leaves it), as probabilities are."""
    scores = [0.0, 1.0]
    for metric in METRICS:
        if metric not in entry:
            continue
        for curve, style, label in ((entry[metric]["curve"], "-", metric), (entry[RANDOM][metric]["curve"], "--", f"random {metric}")):
            ax.plot(np.linspace(0, 1, len(curve)), curve, style, color=METRIC_COLOURS[metric], linewidth=1, label=label)
            scores += [min(curve), max(curve)]
    ax.set_xlim(0, 1)
    margin = 0.04 * (max(scores) - min(scores))
    ax.set_ylim(min(scores) - margin, max(scores) + margin)
    ax.set_xlabel("fraction of patches", fontsize=7, labelpad=1)
    ax.set_ylabel(str(entry["score"]), fontsize=7, labelpad=1)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=7, pad=2)
    ax.legend(fontsize=5, frameon=False)


def render_figure(
    image: np.ndarray, att: Drawable, *, cmap: str, shared_scale: bool, mask: float | None, dpi: int, faithfulness: bool = True
) -> Figure:
    """The whole picture for one image; returns a matplotlib Figure.

    Masks: the server's (``mask=t``, with ``boxes``), else the client's own DINO masks keeping ``mask``
    (for maps they make sense of). A ``point`` the response names is marked on the top row. With
    ``faithfulness``, the answer's faithfulness curves (if it holds them) beside the maps.
    """
    if att.view.rgb:
        return render_colours(image, att, dpi)
    mask = mask if att.view.masks else None
    rows, cols = figure_layout(att, mask)
    grid_view = len(att.rows) > 1  # layers x heads: no colour bars, one row per layer
    entries = att.faithfulness if faithfulness else []
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    size = figure_size(rows, cols + curve_columns(len(entries), rows), image.shape[0] / image.shape[1])
    fig = Figure(figsize=size, dpi=dpi, layout=layout)
    fig.suptitle(att.title, fontsize=9)
    axes, curve_axes = figure_axes(fig, rows, cols, len(entries))
    for ax, entry in zip(curve_axes, entries, strict=True):
        draw_curves(ax, entry, auc_title(entry, curve_set_name(entry, att.targets, att.predictions)))
    for ax in axes.flat:
        ax.set_axis_off()
    patch = att.meta["patch_size"]
    vmin, vmax = (float(att.pixels.min()), float(att.pixels.max())) if shared_scale else (None, None)

    def panel(ax: Axes, data: np.ndarray, title: str, colorbar: bool = True) -> None:
        im = ax.imshow(data, cmap=cmap if data.ndim == 2 else None, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=8, pad=2)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, aspect=30).ax.tick_params(labelsize=6)

    label, first_maps, _ = att.rows[-1]  # the summary shows the deepest layer asked for
    mean = first_maps.mean(axis=0)
    fused = att.view.fused
    summary = label if fused else f"{label} {att.view.mean_title}"
    panel(axes[0, 0], image, f"image {image.shape[0]}x{image.shape[1]}", colorbar=False)
    panel(axes[0, 1], mean, summary, colorbar=not grid_view)
    panel(axes[0, 2], overlay(image, mean, cmap), f"{summary} over image", colorbar=False)
    if "point" in att.meta:
        for ax in axes[0, :3]:
            mark_point(ax, att.meta["point"])
    boxes = att.boxes if att.boxes is None or grid_view else att.boxes.reshape(-1, 4)  # one box per map of the row
    for r, (label, maps, server_masks) in enumerate(att.rows):
        masks = masks_to_draw(server_masks, maps, patch, mask)
        titles = map_titles(att, label, len(maps), r)
        for i, title in enumerate([] if fused else titles):
            ax = axes[1 + r, i] if grid_view else axes[1 + i // cols, i % cols]
            panel(ax, maps[i], title, colorbar=not grid_view)
            if grid_view and masks is not None:
                draw_masks(ax, masks[i], boxes[r][i] if boxes is not None else None, patch)
        if not grid_view and masks is not None:
            kept = att.meta.get("mask", mask)
            first = 1 if fused else 1 + -(-len(titles) // cols)
            for i, title in enumerate(titles):
                ax = axes[first + i // cols, i % cols]
                ax.imshow(image)
                mask_pixels = masks[i].repeat(patch, axis=0).repeat(patch, axis=1)
                ax.imshow(np.ma.masked_where(~mask_pixels, mask_pixels), cmap="cool", alpha=0.35, vmin=0, vmax=1)
                draw_masks(ax, masks[i], boxes[i] if boxes is not None else None, patch)
                ax.set_title(f"{title}: {kept:.0%} of mass", fontsize=8, pad=2)
    fit_height(fig, rows)
    return fig


def colours_of(att: Drawable) -> np.ndarray:
    """A colour output (3, H, W) in [0, 1], in pixels, as an (H, W, 3) uint8 image."""
    return np.clip(np.rint(att.pixels.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def render_colours(image: np.ndarray, att: Drawable, dpi: int) -> Figure:
    """A colour method's picture (PCA): the image, the colours, the colours over the image, with the
    outline of the patches they were fitted on (``foreground_mask``) when the response holds it, and
    the ``point`` it names."""
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    fig = Figure(figsize=figure_size(1, 3, image.shape[0] / image.shape[1]), dpi=dpi, layout=layout)
    fig.suptitle(att.title, fontsize=9)
    colours = colours_of(att)
    blended = np.clip(np.rint(0.5 * image + 0.5 * colours), 0, 255).astype(np.uint8)
    foreground = att.arrays.get("foreground_mask")
    for ax, data, title in zip(
        fig.subplots(1, 3),
        (image, colours, blended),
        (f"image {image.shape[0]}x{image.shape[1]}", att.view.fused_title, "over image"),
        strict=True,
    ):
        ax.set_axis_off()
        ax.imshow(data)
        ax.set_title(title, fontsize=8, pad=2)
        if foreground is not None and data is not image:
            draw_masks(ax, foreground, None, att.meta["patch_size"])
        if "point" in att.meta:
            mark_point(ax, att.meta["point"])
    fit_height(fig, 1)
    return fig


def render_many(items: Sequence[Drawable], *, cmap: str, dpi: int) -> Figure:
    """Images sent together, one row each: the image, the method's map (colours as they are, other
    maps on one scale shared by all rows, the similarity's point marked on the first), over the image."""
    if any(att.image is None for att in items):
        raise ClientError("no image to draw on: build the responses with AttentionClient.explain_many")
    first = items[0].image
    assert first is not None
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    fig = Figure(figsize=figure_size(len(items), 3, first.shape[0] / first.shape[1]), dpi=dpi, layout=layout)
    fig.suptitle(items[0].title + ("  (one basis)" if items[0].meta.get("pca_fit") == "joint" else ""), fontsize=9)
    rgb = items[0].view.rgb
    maps = [att.pixels.mean(axis=tuple(range(att.pixels.ndim - 2))) for att in items]  # (H, W) each: the fused map or head mean
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    for row, (att, heat, axes) in enumerate(zip(items, maps, np.atleast_2d(fig.subplots(len(items), 3)), strict=True)):
        image = att.image
        assert image is not None
        if rgb:
            shown, name = colours_of(att), att.view.fused_title
            over = np.clip(np.rint(0.5 * image + 0.5 * shown), 0, 255).astype(np.uint8)
        else:
            shown, name = heat, att.view.map_names(att.meta)[0] if att.view.fused else att.view.mean_title
            over = overlay(image, heat, cmap, bounds=(low, high))
        for ax, data, title in zip(axes, (image, shown, over), (f"image {row}", name, "over image"), strict=True):
            ax.set_axis_off()
            if data is heat:
                ax.imshow(data, cmap=cmap, vmin=low, vmax=high)  # one scale for every row
            else:
                ax.imshow(data)
            ax.set_title(title, fontsize=8, pad=2)
            if row == 0 and att.meta.get("point") and data is not image:
                mark_point(ax, att.meta["point"])
    fit_height(fig, len(items))
    return fig


def fit_height(fig: Figure, rows: int, passes: int = 2) -> None:
    """Shrink the figure's height until each row is as tall as its maps (plus the title): a map
    keeps its aspect, so a panel cell taller than the map is white space. Each pass runs the layout
    and the maps' aspect alone (a draw would also resample every image: a third of the time)."""
    engine = fig.get_layout_engine()
    assert engine is not None, "the figures are made with a constrained layout"
    maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    for _ in range(passes):
        engine.execute(fig)
        for ax in maps:
            ax.apply_aspect()
        spare = min(ax.get_position(original=True).height - ax.get_position().height for ax in maps)  # a row could lose
        width, height = fig.get_size_inches()
        if spare * height < 0.01:
            return
        fig.set_size_inches(width, height * (1 - rows * spare))


def save_heads(out_dir: Path, image: np.ndarray, att: Drawable, cmap: str, mask: float | None) -> None:
    """DINO-style per-map files: attn-head{j}.png (attn-layer{b}-head{j}.png for layers, rollout.png),
    mask_th{t}_head{j}.png with the server's masks or the client's (``mask``), plus the image and the overlay."""
    import matplotlib.image as mpimg

    mask = mask if att.view.masks else None
    out_dir.mkdir(parents=True, exist_ok=True)
    patch = att.meta["patch_size"]
    mpimg.imsave(out_dir / "img.png", image)
    if att.view.rgb:
        mpimg.imsave(out_dir / f"{att.meta['method']}.png", colours_of(att))
        return
    mpimg.imsave(out_dir / "overlay.png", overlay(image, att.rows[-1][1].mean(axis=0), cmap))
    for label, maps, server_masks in att.rows:
        prefix = f"{label.replace(' ', '')}-" if att.meta.get("layers") else ""
        names = [name.replace(" ", "") for name in att.view.map_names(att.meta)]
        names = names if att.view.fused else [f"{'' if att.view.panels else 'attn-'}{prefix}{name}" for name in names]
        masks = masks_to_draw(server_masks, maps, patch, mask)
        t = att.meta.get("mask", mask)
        for i, name in enumerate(names):
            mpimg.imsave(out_dir / f"{name}.png", maps[i], cmap=cmap, format="png")
            if masks is not None:
                pixels = masks[i].repeat(patch, axis=0).repeat(patch, axis=1).astype(np.float32)
                mpimg.imsave(out_dir / f"mask_th{t:g}_{name.removeprefix('attn-')}.png", pixels, cmap="gray", vmin=0, vmax=1)
