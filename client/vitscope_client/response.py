"""The server's answer as the client holds it: ``Response`` (one image's maps, metadata and arrays, with
the image they are about), ``Responses`` (images sent together), and the decoding of every format the
server answers in (JSON, .npy with its metadata header, .npz)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .draw import render_figure, render_many
from .errors import ClientError
from .mirrors import CONTENT_TYPES, DEFAULT_METHOD, META_HEADER, NPZ_META, REQUIRED_KEYS, aligned_image, decode_masks, is_array_field
from .views import METHOD_VIEWS, MethodView, generic_view, view_of

ImageLike = str | Path | bytes | Image.Image | np.ndarray
OutputDescription = Mapping[str, object]  # one of a method's outputs as the describe API serves it: name, dtype, axes, rgb, ...


def listed(value: object) -> list[dict]:
    """A response's list field (``predictions``, ``targets``); KServe v2 parameters carry it as JSON text."""
    if not value:
        return []
    return json.loads(value) if isinstance(value, str) else list(value)  # type: ignore[call-overload]


def target_name(target: dict) -> str:
    """What a relevance map explains, with its score: ``tabby (0.91)``, ``text:a dog (0.31)``."""
    return f"{target.get('label') or target['target']} ({target['score']:.3g})"


@dataclass(frozen=True)
class Response:
    """A parsed server response, and (once aligned) the image it is about.

    ``grid`` has the response's shape: (heads, H/p, W/p) for one layer, (layers, heads, H/p, W/p)
    for ``layers=``, (1, H/p, W/p) for ``method=rollout``; ``masks`` and ``boxes`` are the server's
    (``mask=t``, ``boxes=true``), ``registers`` the server's (``registers=true``), else None.
    """

    meta: dict  # every field but the arrays
    grid: np.ndarray  # patch grid, shape as above
    pixels: np.ndarray  # the same maps nearest-upsampled to pixels like the server
    image: np.ndarray | None = None  # (H, W, 3) uint8: the original resized and cropped as the server did
    masks: np.ndarray | None = None  # bool, shaped like ``grid``
    boxes: np.ndarray | None = None  # (..., 4) [x0, y0, x1, y1] in pixels, one per map
    registers: np.ndarray | None = None  # (..., R): each map's weights on the register/storage tokens (registers=true)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # every other array the response holds (bit-packed ones decoded)
    drawn_as: MethodView | None = None  # a method with no view of the client's: the one its outputs give (``generic_view``)

    @property
    def view(self) -> MethodView:
        return self.drawn_as or view_of(self.meta)

    @property
    def predictions(self) -> list[dict]:
        """The server's ``predictions`` (a head's classes, or CLIP/SigLIP scores of ``labels``): each
        ``{"index", "label", "probability"}``, most probable first; [] when it sent none."""
        return listed(self.meta.get("predictions"))

    @property
    def targets(self) -> list[dict]:
        """What each ``relevance`` map explains (the explanation methods): ``{"target", "index"?, "label"?,
        "score"}`` in map order; [] when it sent none."""
        return listed(self.meta.get("targets"))

    @property
    def faithfulness(self) -> list[dict]:
        """The server's ``faithfulness`` (asked with ``faithfulness=deletion,insertion``): per curve set
        (an explanation's target, aligned with ``targets``; else the one map) ``{"target", "score",
        "deletion"?, "insertion"?, "random"}``, each metric ``{"auc", "curve"}``; [] when it sent none."""
        return listed(self.meta.get("faithfulness"))

    @property
    def title(self) -> str:
        top = self.predictions[:1]
        said = f"  {top[0]['label']} {top[0]['probability']:.0%}" if top else ""
        if self.targets:  # each map's target with its score
            said += "  explains " + ", ".join(target_name(t) for t in self.targets)
        return f"{self.meta['model']}  {self.view.headline(self.meta)}{said}  weights: {self.meta['weights']}"

    @property
    def rows(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """(label, maps (k, H, W) in pixels, masks (k, H/p, W/p) or None) per layer shown (a method's
        leading axes flattened into the k maps)."""
        m = self.meta
        if m.get("layers"):
            masks = self.masks if self.masks is not None else [None] * len(m["layers"])
            return [(f"layer {b}", maps_of(self.pixels[i]), masks_of(masks[i])) for i, b in enumerate(m["layers"])]
        label = self.view.map_names(m)[0] if self.view.fused else f"layer {m['layer']}"
        return [(label, maps_of(self.pixels), masks_of(self.masks))]

    def figure(
        self, *, mask: float | None = None, cmap: str = "inferno", shared_scale: bool = False, dpi: int = 100, faithfulness: bool = True
    ) -> Figure:
        """The picture: image, head mean, overlay, every head, and DINO's masks: the server's, else
        the client's own keeping a fraction ``mask`` of each map's mass; beside them, with
        ``faithfulness``, the answer's deletion and insertion curves (if it holds them)."""
        if self.image is None:
            raise ClientError("no image to draw on: build the result with AttentionClient.explain or with_image()")
        return render_figure(self.image, self, cmap=cmap, shared_scale=shared_scale, mask=mask, dpi=dpi, faithfulness=faithfulness)

    def with_image(self, image: ImageLike) -> Response:
        """This result with ``image`` (the one sent) aligned to the maps."""
        data, name = image_bytes(image)
        return replace(self, image=aligned_image(data, self.meta, name))

    def _repr_png_(self) -> bytes | None:  # Jupyter shows a result as its figure
        if self.image is None:
            return None
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png")
        return buf.getvalue()


def maps_of(maps: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (k, H, W)."""
    return maps.reshape(-1, *maps.shape[-2:])


def masks_of(masks: np.ndarray | None) -> np.ndarray | None:
    return None if masks is None else maps_of(masks)


@dataclass(frozen=True)
class Responses:
    """The responses to images sent together, in order, drawn as one figure (one row per image) on
    one colour scale: a joint PCA's colours, or similarity maps against one patch, compare across rows."""

    items: list[Response]

    def __iter__(self) -> Iterator[Response]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Response:
        return self.items[i]

    def figure(self, *, cmap: str = "inferno", dpi: int = 100) -> Figure:
        return render_many(self.items, cmap=cmap, dpi=dpi)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png")
        return buf.getvalue()


def main_output(doc: dict, outputs: Sequence[OutputDescription] | None) -> tuple[str, bool]:
    """(name, is a colour image) of the main output of a method the client has no view for: the first
    of its described ``outputs`` the response holds, else the response's first array (the server sends
    the main output first)."""
    for spec in outputs or ():
        if spec.get("name") in doc:
            return str(spec["name"]), spec.get("rgb") is True
    for name, value in doc.items():
        if is_array_field(name, value):
            return name, False
    raise ClientError(f"response of method {doc.get('method')!r} holds no maps")


def parse_response(doc: object, outputs: Sequence[OutputDescription] | None = None) -> Response:
    """Validate a response document (upsampled or patch grid) and return both resolutions.

    ``outputs``: the method's outputs as the server describes them (``AttentionClient.describe()``):
    for a method the client has no view for, they say which is the main one and whether it is a colour
    image; without them its main output is the response's first array, drawn as maps.
    """
    if not isinstance(doc, dict) or "error" in doc:
        raise ClientError(f"not an attention response: {str(doc)[:200]}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ClientError(f"response lacks {missing}")
    known = METHOD_VIEWS.get(doc.get("method") or DEFAULT_METHOD)
    output, rgb = (known.output, known.rgb) if known else main_output(doc, outputs)
    try:
        att = np.asarray(doc[output], dtype=np.float32)
    except KeyError as e:
        raise ClientError(f"response lacks its maps, {e}") from e
    except (TypeError, ValueError) as e:
        raise ClientError(f"response maps are not a numeric array: {e}") from e
    p, (h, w), (gh, gw) = doc["patch_size"], doc["image_size"], doc["grid"]
    layers = bool(doc.get("layers"))
    lead: tuple[int, ...]
    if known or rgb:
        per_layer = len(known.map_names(doc)) if known else 3
        lead = (len(doc["layers"]), per_layer) if layers else (per_layer,)
    else:  # any leading axes (maps): after the layers of layers=
        lead = (len(doc["layers"]), *att.shape[1:-2]) if layers else att.shape[:-2]
    if att.shape == (*lead, gh, gw):
        grid = att
    elif att.shape == (*lead, h, w) and (h, w) == (gh * p, gw * p):
        grid = att[..., ::p, ::p]
    else:
        raise ClientError(f"attention shape {att.shape} matches neither grid {(*lead, gh, gw)} nor image {(*lead, h, w)}")
    pixels = grid.repeat(p, axis=-2).repeat(p, axis=-1)  # nearest upsampling, as the server
    try:
        masks = decode_masks(doc["masks"]) if "masks" in doc else None
        boxes = np.asarray(doc["boxes"], dtype=np.int64) if "boxes" in doc else None
        registers = np.asarray(doc["registers"], dtype=np.float32) if "registers" in doc else None
    except (KeyError, TypeError, ValueError) as e:
        raise ClientError(f"response masks/boxes are malformed: {e}") from e
    described = {str(spec.get("name")) for spec in outputs or ()}
    array_fields = [k for k, v in doc.items() if k in described or is_array_field(k, v)]
    meta = {k: v for k, v in doc.items() if k not in array_fields}
    taken = {output, "masks", "boxes", "registers"}
    try:
        arrays = {k: decode_masks(doc[k]) if isinstance(doc[k], dict) else np.asarray(doc[k]) for k in array_fields if k not in taken}
    except (KeyError, TypeError, ValueError) as e:
        raise ClientError(f"response arrays are malformed: {e}") from e
    names = [target_name(t) for t in listed(doc.get("targets"))]  # an explanation's maps, each named by its target
    drawn_as = None if known else generic_view(output, grid, layers, rgb, names)
    return Response(meta, grid, pixels, masks=masks, boxes=boxes, registers=registers, arrays=arrays, drawn_as=drawn_as)


def decode_body(body: bytes, content_type: str | None = None, meta_header: str | None = None) -> dict:
    """A response body in any format (JSON, .npz, .npy + metadata header) -> document dict."""
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        if kind == CONTENT_TYPES["npz"] or body.startswith(b"PK"):
            with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files if name != NPZ_META}  # every array the server sent
                return {**json.loads(str(archive[NPZ_META])), **arrays}
        if kind == CONTENT_TYPES["npy"] or body.startswith(b"\x93NUMPY"):
            if not meta_header:
                raise ClientError(f"a .npy answer carries its metadata in the {META_HEADER} header; save npz or JSON instead")
            meta = json.loads(meta_header)
            method = meta.get("method") or DEFAULT_METHOD  # a method with no view of the client's: its array under its name
            return {**meta, view_of(meta).output if method in METHOD_VIEWS else str(method): np.load(io.BytesIO(body), allow_pickle=False)}
        return json.loads(body)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        raise ClientError(f"malformed response ({kind or 'file'}): {e}") from e


def image_bytes(image: ImageLike) -> tuple[bytes, str]:
    """(encoded bytes, a name) of a path, bytes, PIL image or (H, W, 3) uint8 array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            return path.read_bytes(), path.name
        except OSError as e:
            raise ClientError(f"cannot read {path}: {e.strerror}") from e
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "image"
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue(), "image.png"
