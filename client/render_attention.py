"""Render the per-head [CLS] attention served by the DINO TorchServe model: a script and a notebook API.

    python client/render_attention.py data/samples/astronaut.jpg                 # ask the server
    python client/render_attention.py img1.jpg img2.png --layer 5 --mask 0.6 --save-heads
    python client/render_attention.py --from-file out/astronaut.json --image data/samples/astronaut.jpg
    python client/render_attention.py --from-file out/astronaut.npz --image data/samples/astronaut.jpg
    python client/render_attention.py a.jpg b.jpg --together --method pca --option pca_fit=joint

Installed (``pip install ./client``), the same is the ``render-attention`` command. In a notebook::

    from render_attention import AttentionClient
    client = AttentionClient("http://127.0.0.1:8080", model="dino_vits8")
    client.describe()["methods"]       # what the server offers: methods, their options and outputs
    result = client.explain("cat.jpg", layer=11)
    result.figure(mask=0.6)            # a matplotlib Figure; the result itself also shows inline
    result.grid, result.meta           # (heads, H/p, W/p) maps and the server's metadata
    pair = client.explain_many(["a.jpg", "b.jpg"], method="pca", pca_fit="joint")
    pair.figure()                      # one row per image, in shared colours (one PCA basis)

Needs only requests, matplotlib, numpy and pillow, and nothing from the server's code; the picture
under each map is the original resized and cropped exactly as the server reports it did.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import matplotlib
import numpy as np
import requests
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from attention_video import VideoSummary

logger = logging.getLogger("render_attention")

DEFAULT_HOST = "http://127.0.0.1:8080"
MANAGEMENT_PORT = 8081  # TorchServe's management API, beside the inference API (describe)
DEFAULT_MODEL = "dino_vits8"  # the server's default model (tests check it against the variants table)
DEFAULT_KEY_FILE = Path("key_file.json")  # where `make serve` (token auth on) leaves TorchServe's keys
OVERLAY_ALPHA = 0.6
PANEL_INCHES = 2.6  # width of one map
TITLE_INCHES = 0.25  # one line of panel title
COLORBAR_INCHES = 0.35  # a panel's colour bar and its labels, beside the map
MAX_COLS = 4
# The response's arrays, and the name of an npz answer's metadata (tests check both against the server):
ARRAY_FIELDS = ("attention", "masks", "boxes", "registers", "similarity", "features", "pca", "foreground_mask", "pca_basis")
NPZ_META = "meta"
# The response fields this client reads (tests check them against the server's schema):
REQUIRED_KEYS = ("model", "patch_size", "layer", "heads", "weights", "input_size", "resized_size", "image_size", "grid")
# The server's protocol facts this client relies on (tests check them against the server's own):
CONTENT_TYPES = {"json": "application/json", "npy": "application/x-npy", "npz": "application/x-npz"}
FORMATS = tuple(CONTENT_TYPES)
META_HEADER = "X-Attention-Meta"  # .npy answers carry their metadata in this header
TIMEOUT_HEADER = "X-Request-Timeout"  # the seconds we wait: the server computes no answer we would not wait for
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
HEAD_FUSIONS = ("mean", "max", "min")
# Options passed on to the server as they are (the client itself always asks for the patch grid).
MAP_OPTIONS = ("layer", "short_side", "scale", "size", "heads", "precision")
METHOD_OPTIONS = ("layers", "method", "head_fusion", "discard_ratio", "mask", "boxes", "registers", "point")
SERVER_OPTIONS = MAP_OPTIONS + METHOD_OPTIONS
RESAMPLE = Image.Resampling.BILINEAR  # the server's resize filter
BACKGROUND = (255, 255, 255)  # the server composites transparent pixels onto white
ImageLike = str | Path | bytes | Image.Image | np.ndarray


class ClientError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1. ``status``: the server's
    HTTP status when it answered (None: no answer: unreachable, timed out)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


@dataclass(frozen=True)
class MethodView:
    """How the client draws one method's maps. ``METHOD_VIEWS`` is the one place the client knows
    methods by name; a method it does not know is drawn as numbered maps of its ``output``."""

    headline: Callable[[dict], str]  # what the figure's title says after the model name
    fused: bool  # one map per layer (the heads fused, or no heads at all), else one map per head
    output: str = "attention"  # the response's array that holds the maps
    fused_title: str = "{method} through layer {layer}"  # the one map's panel title (fused)
    masks: bool = True  # DINO's masks make sense of its maps (a share of the mass: not for signed maps)
    rgb: bool = False  # its output is one colour image [3, H, W] in [0, 1], not maps to colour

    def map_names(self, meta: dict) -> list[str]:
        """One name per map of a layer: "head 0", ..., or the method's name for a fused map (R, G, B: three)."""
        if self.rgb:
            return ["red", "green", "blue"]
        return [str(meta.get("method"))] if self.fused else [f"head {h}" for h in meta["heads"]]

    def map_titles(self, meta: dict) -> list[str]:
        """Panel titles of a layer's maps."""
        return [self.fused_title.format(**meta)] if self.fused else self.map_names(meta)


DEFAULT_METHOD = "attention"
METHOD_VIEWS: dict[str, MethodView] = {
    DEFAULT_METHOD: MethodView(heads_headline, fused=False),
    "rollout": MethodView(rollout_headline, fused=True),
    "similarity": MethodView(similarity_headline, fused=True, output="similarity", fused_title="cosine similarity", masks=False),
    "pca": MethodView(pca_headline, fused=True, output="pca", fused_title="PCA colours", masks=False, rgb=True),
}
METHODS = tuple(METHOD_VIEWS)  # what --method offers (tests check them against the server's registry)
OTHER_METHOD = MethodView(lambda meta: f"{meta.get('method')} of layer {meta['layer']}", fused=False)


def view_of(meta: dict) -> MethodView:
    return METHOD_VIEWS.get(meta.get("method") or DEFAULT_METHOD, OTHER_METHOD)


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

    @property
    def view(self) -> MethodView:
        return view_of(self.meta)

    @property
    def title(self) -> str:
        return f"{self.meta['model']}  {self.view.headline(self.meta)}  weights: {self.meta['weights']}"

    @property
    def rows(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """(label, maps (k, H, W) in pixels, masks (k, H/p, W/p) or None) per layer shown."""
        m = self.meta
        if m.get("layers"):
            masks = self.masks if self.masks is not None else [None] * len(m["layers"])
            return [(f"layer {b}", self.pixels[i], masks[i]) for i, b in enumerate(m["layers"])]
        label = self.view.map_names(m)[0] if self.view.fused else f"layer {m['layer']}"
        return [(label, self.pixels, self.masks)]

    def figure(self, *, mask: float | None = None, cmap: str = "inferno", shared_scale: bool = False, dpi: int = 100) -> Figure:
        """The picture: image, head mean, overlay, every head, and DINO's masks: the server's, else
        the client's own keeping a fraction ``mask`` of each map's mass."""
        if self.image is None:
            raise ClientError("no image to draw on: build the result with AttentionClient.explain or with_image()")
        return render_figure(self.image, self, cmap=cmap, shared_scale=shared_scale, mask=mask, dpi=dpi)

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


class AttentionClient:
    """The server, from Python: ``AttentionClient(url).explain(image, layer=5)`` -> ``Response``.

    ``management``: TorchServe's management API, for ``describe()`` (default: the inference URL's
    host on port 8081).
    """

    def __init__(
        self,
        url: str = DEFAULT_HOST,
        model: str = DEFAULT_MODEL,
        *,
        key_file: Path | None = None,
        timeout: float = 120.0,
        management: str | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if "/predictions/" in base else f"{base}/predictions/{model}"
        self.model = self.url.rsplit("/predictions/", 1)[1].split("/")[0]
        parts = urlsplit(self.url)
        self.management = (management or f"{parts.scheme}://{parts.hostname}:{MANAGEMENT_PORT}").rstrip("/")
        self.headers = {**auth_headers(key_file), TIMEOUT_HEADER: f"{timeout:g}"}  # no answer is computed for nobody
        self.timeout = timeout

    def describe(self) -> dict:
        """What the server offers for this model: its facts, its methods with their options (defaults,
        ranges) and outputs, the formats. TorchServe's ``GET /models/<name>?customized=true``."""
        url = f"{self.management}/models/{self.model}"
        try:
            reply = requests.get(url, params={"customized": "true"}, timeout=self.timeout, headers=self.headers)
        except requests.RequestException as e:
            raise ClientError(f"cannot reach {url}: is the server running (make serve), with its management API there?") from e
        if reply.status_code != 200:
            raise ClientError(f"server answered HTTP {reply.status_code} for {url}: {reply.text[:200]}")
        try:
            described = reply.json()[0]["customizedMetadata"]  # TorchServe parses the handler's JSON text when it can
            return json.loads(described) if isinstance(described, str) else dict(described)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ClientError(f"{url} holds no description of this model's methods (an older server?): {e}") from e

    def explain(self, image: ImageLike, **options: object) -> Response:
        """Ask for the attention over ``image`` (path, bytes, PIL image or uint8 array); ``options`` as
        the server's (layer=5, heads="0,2", short_side=320, precision="auto", ...)."""
        data, name = image_bytes(image)
        fields = {"upsample": "false", **{k: str(v) for k, v in options.items() if v is not None}}
        doc = post_image(self.url, data, name, fields, self.timeout, self.headers)
        return parse_response(doc).with_image(data)

    def request(self, images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        """One request of encoded ``images`` (sent together when several) with the form ``fields``."""
        if len(images) == 1:
            return [parse_response(post_image(self.url, images[0], "frame", dict(fields), self.timeout, self.headers))]
        return request_many(self.url, [(data, f"frame {i}") for i, data in enumerate(images)], fields, self.timeout, self.headers)

    def explain_video(
        self,
        video: str | Path,
        out: str | Path,
        *,
        maps: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        **options: Any,
    ) -> VideoSummary:
        """Every frame of ``video`` through the server, written to ``out`` (an .mp4, ...) as they go;
        ``options`` as ``attention_video.VideoOptions`` (method, layer, head, point, every, max_frames,
        short_side, in_flight, mask, pca_fit, ...). Needs the client's video extra (PyAV, tqdm)."""
        from attention_video import VideoOptions, explain_video  # PyAV only for videos: pip install "./client[video]"

        return explain_video(video, out, self.request, VideoOptions(**options), maps, resume, progress)

    def explain_many(self, images: Sequence[ImageLike], **options: object) -> Responses:
        """Send several images together (one request, ``options`` shared): what a method does with
        images seen together applies, e.g. ``method="pca", pca_fit="joint"`` (one basis: shared
        colours) or ``method="similarity", point="x,y"`` (every map against the first image's patch)."""
        return Responses(request_many(self.url, [image_bytes(image) for image in images], options, self.timeout, self.headers))


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


def request_many(
    url: str, images: Sequence[tuple[bytes, str]], options: Mapping[str, object], timeout: float, headers: dict[str, str]
) -> list[Response]:
    """POST ``{"images": [...], ...options}`` (JSON) and parse the ``{"images": [...]}`` answer."""
    if not images:
        raise ClientError("give at least one image")
    fields = {"upsample": "false", **{k: str(v) for k, v in options.items() if v is not None}}
    document = {"images": [base64.b64encode(data).decode("ascii") for data, _ in images], **fields}
    names = ", ".join(name for _, name in images)
    doc = post(url, names, timeout, headers, json=document)
    docs = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(docs, list) or len(docs) != len(images):
        raise ClientError(f'expected {{"images": [...]}} with {len(images)} responses, got {str(doc)[:200]}')
    return [parse_response(d).with_image(data) for d, (data, _) in zip(docs, images, strict=True)]


def parse_response(doc: object) -> Response:
    """Validate a response document (upsampled or patch grid) and return both resolutions."""
    if not isinstance(doc, dict) or "error" in doc:
        raise ClientError(f"not an attention response: {str(doc)[:200]}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ClientError(f"response lacks {missing}")
    view = view_of(doc)
    try:
        att = np.asarray(doc[view.output], dtype=np.float32)
    except KeyError as e:
        raise ClientError(f"response lacks its maps, {e}") from e
    except (TypeError, ValueError) as e:
        raise ClientError(f"response maps are not a numeric array: {e}") from e
    p, (h, w), (gh, gw) = doc["patch_size"], doc["image_size"], doc["grid"]
    per_layer = len(view.map_names(doc))
    lead: tuple[int, ...] = (len(doc["layers"]), per_layer) if doc.get("layers") else (per_layer,)
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
    meta = {k: v for k, v in doc.items() if k not in ARRAY_FIELDS}
    known = {view.output, "masks", "boxes", "registers"}
    try:
        arrays = {
            k: decode_masks(v) if isinstance(v, dict) else np.asarray(v) for k, v in doc.items() if k in ARRAY_FIELDS and k not in known
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ClientError(f"response arrays are malformed: {e}") from e
    return Response(meta, grid, pixels, masks=masks, boxes=boxes, registers=registers, arrays=arrays)


def decode_masks(document: dict) -> np.ndarray:
    """The server's bit-packed masks (``{"shape", "encoding": "packbits", "data"}``) as booleans, or the
    arrays of an npz answer as they are."""
    if isinstance(document, np.ndarray):
        return document.astype(bool)
    shape = list(document["shape"])
    count = int(np.prod(shape[:-2], dtype=np.int64))
    packed = np.frombuffer(base64.b64decode(document["data"]), np.uint8).reshape(count, -1)
    return np.unpackbits(packed, axis=1, count=shape[-2] * shape[-1]).astype(bool).reshape(shape)


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
            return {**meta, view_of(meta).output: np.load(io.BytesIO(body), allow_pickle=False)}
        return json.loads(body)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        raise ClientError(f"malformed response ({kind or 'file'}): {e}") from e


def post_image(url: str, data: bytes, name: str, fields: dict[str, str], timeout: float, headers: dict[str, str]) -> dict:
    """POST the image as multipart (options as fields); the server's answer as a dict, or ``ClientError``."""
    return post(url, name, timeout, headers, files={"data": (name, data)}, data=fields)


def post(url: str, name: str, timeout: float, headers: dict[str, str], **body: object) -> dict:
    """POST ``body`` (requests' files/data/json) about the image(s) ``name``; the answer as a dict."""
    try:
        reply = requests.post(url, timeout=timeout, headers=headers, **body)  # type: ignore[arg-type]
    except requests.ConnectionError as e:
        raise ClientError(f"cannot reach {url}: is the server running? (make serve)") from e
    except requests.Timeout as e:
        raise ClientError(f"no answer from {url} within {timeout:g} s (--timeout)") from e
    if reply.status_code != 200:
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        detail = doc.get("error", doc.get("message")) if isinstance(doc, dict) else reply.text[:200]
        raise ClientError(f"server answered HTTP {reply.status_code} for {name}: {detail}", reply.status_code)
    return decode_body(reply.content, reply.headers.get("Content-Type"), reply.headers.get(META_HEADER))


def request_attention(url: str, image: Path, fields: dict[str, str], timeout: float, headers: dict[str, str]) -> dict:
    """``post_image`` for an image file."""
    data, name = image_bytes(image)
    return post_image(url, data, name, fields, timeout, headers)


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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB as the server makes it (``vitscope/image.py``; tests compare the two
    pixel for pixel): alpha composited onto white, 16-bit/float data scaled to 8 bits."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(to_uint8(img)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def to_uint8(img: Image.Image) -> np.ndarray:
    """Integer (I, I;16*) or float (F) single-channel data scaled to uint8 (H, W), as the server does."""
    arr = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if img.mode.startswith("I;16"):
        scaled = arr / 257.0
    elif img.mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        scaled = arr * 255.0
    elif img.mode == "I" and arr.size and arr.min() >= 0.0 and arr.max() <= 255.0:
        scaled = arr
    else:  # anything else: stretch the observed range
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def aligned_image(data: bytes, meta: dict, name: str = "image") -> np.ndarray:
    """The original image resized and cropped as the server reports it did: (H, W, 3) uint8.

    EXIF orientation, the conversion to RGB, a bilinear resize to ``resized_size``, the bottom/right
    crop to ``image_size``, as the server.
    """
    try:
        img = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ClientError(f"cannot use {name} as an image: {e}") from e
    return align(img, meta, name)


def align(img: Image.Image, meta: dict, name: str = "image") -> np.ndarray:
    """An RGB image resized (bilinear) to ``resized_size`` and cropped (bottom/right) to ``image_size``
    as the server reports it did: (H, W, 3) uint8."""
    (h0, w0), (hr, wr), (h, w) = meta["input_size"], meta["resized_size"], meta["image_size"]
    if (img.height, img.width) != (h0, w0):
        raise ClientError(f"{name} is {img.height}x{img.width} but the response is for a {h0}x{w0} image: wrong --image for this JSON?")
    if (hr, wr) != (h0, w0):
        img = img.resize((wr, hr), RESAMPLE)
    return np.asarray(img.crop((0, 0, w, h)))


def threshold_masks(maps: np.ndarray, t: float) -> np.ndarray:
    """DINO's masks (..., h, w) bool: per map, the highest patches holding a fraction ``t`` of its mass.

    The server's ``masks.threshold_masks`` and the viewer's ``thresholdMask`` compute the same, step
    for step (tests compare all three element by element): sort ascending (ties in index order),
    running sums, divide by the total, keep the cumulative share > 1 - t.
    """
    *lead, h, w = maps.shape
    flat = maps.reshape(-1, h * w).astype(np.float64)  # (maps, h*w)
    order = np.argsort(flat, axis=1, kind="stable")
    running = np.cumsum(np.take_along_axis(flat, order, axis=1), axis=1)
    total = running[:, -1:]
    keep_sorted = running / np.where(total > 0, total, 1.0) > 1 - t
    masks = np.empty_like(keep_sorted)
    np.put_along_axis(masks, order, keep_sorted, axis=1)
    return masks.reshape(*lead, h, w)


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


def figure_layout(att: Response, mask: float | None) -> tuple[int, int]:
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


def map_titles(att: Response, label: str, count: int, row: int = 0) -> list[str]:
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


def render_figure(image: np.ndarray, att: Response, *, cmap: str, shared_scale: bool, mask: float | None, dpi: int) -> Figure:
    """The whole picture for one image; returns a matplotlib Figure.

    Masks: the server's (``mask=t``, with ``boxes``), else the client's own DINO masks keeping ``mask``
    (for maps they make sense of). A ``point`` the response names is marked on the top row.
    """
    if att.view.rgb:
        return render_colours(image, att, dpi)
    mask = mask if att.view.masks else None
    rows, cols = figure_layout(att, mask)
    grid_view = len(att.rows) > 1  # layers x heads: no colour bars, one row per layer
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    fig = Figure(figsize=figure_size(rows, cols, image.shape[0] / image.shape[1]), dpi=dpi, layout=layout)
    fig.suptitle(att.title, fontsize=9)
    axes = fig.subplots(rows, cols, squeeze=False)
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
    summary = label if fused else f"{label} head mean"
    panel(axes[0, 0], image, f"image {image.shape[0]}x{image.shape[1]}", colorbar=False)
    panel(axes[0, 1], mean, summary, colorbar=not grid_view)
    panel(axes[0, 2], overlay(image, mean, cmap), f"{summary} over image", colorbar=False)
    if "point" in att.meta:
        for ax in axes[0, :3]:
            mark_point(ax, att.meta["point"])
    boxes = att.boxes
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


def colours_of(att: Response) -> np.ndarray:
    """A colour output (3, H, W) in [0, 1], in pixels, as an (H, W, 3) uint8 image."""
    return np.clip(np.rint(att.pixels.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def render_colours(image: np.ndarray, att: Response, dpi: int) -> Figure:
    """A colour method's picture (PCA): the image, the colours, the colours over the image, with the
    outline of the patches they were fitted on (``foreground_mask``) when the response holds it."""
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    fig = Figure(figsize=figure_size(1, 3, image.shape[0] / image.shape[1]), dpi=dpi, layout=layout)
    fig.suptitle(att.title, fontsize=9)
    colours = colours_of(att)
    blended = np.clip(np.rint(0.5 * image + 0.5 * colours), 0, 255).astype(np.uint8)
    foreground = att.arrays.get("foreground_mask")
    for ax, data, title in zip(
        fig.subplots(1, 3),
        (image, colours, blended),
        (f"image {image.shape[0]}x{image.shape[1]}", "PCA colours", "over image"),
        strict=True,
    ):
        ax.set_axis_off()
        ax.imshow(data)
        ax.set_title(title, fontsize=8, pad=2)
        if foreground is not None and data is not image:
            draw_masks(ax, foreground, None, att.meta["patch_size"])
    fit_height(fig, 1)
    return fig


def render_many(items: Sequence[Response], *, cmap: str, dpi: int) -> Figure:
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
            shown, name = colours_of(att), "PCA colours"
            over = np.clip(np.rint(0.5 * image + 0.5 * shown), 0, 255).astype(np.uint8)
        else:
            shown, name = heat, att.view.map_names(att.meta)[0] if att.view.fused else "head mean"
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
    keeps its aspect, so a panel cell taller than the map is white space."""
    for _ in range(passes):
        fig.draw_without_rendering()  # runs constrained layout and the maps' aspect
        maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
        spare = min(ax.get_position(original=True).height - ax.get_position().height for ax in maps)  # a row could lose
        width, height = fig.get_size_inches()
        if spare * height < 0.01:
            return
        fig.set_size_inches(width, height * (1 - rows * spare))


def save_heads(out_dir: Path, image: np.ndarray, att: Response, cmap: str, mask: float | None) -> None:
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
        names = names if att.view.fused else [f"attn-{prefix}{name}" for name in names]
        masks = masks_to_draw(server_masks, maps, patch, mask)
        t = att.meta.get("mask", mask)
        for i, name in enumerate(names):
            mpimg.imsave(out_dir / f"{name}.png", maps[i], cmap=cmap, format="png")
            if masks is not None:
                pixels = masks[i].repeat(patch, axis=0).repeat(patch, axis=1).astype(np.float32)
                mpimg.imsave(out_dir / f"mask_th{t:g}_{name.removeprefix('attn-')}.png", pixels, cmap="gray", vmin=0, vmax=1)


def option_fields(args: argparse.Namespace) -> dict[str, str]:
    """Multipart fields for the server; the client upsamples itself, so maps travel as the patch grid."""
    fields = {"upsample": "false"}
    for name in (*SERVER_OPTIONS, "format"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    return {**fields, **dict(args.options)}


def name_value(text: str) -> tuple[str, str]:
    """``--option reduce=max`` -> ("reduce", "max")."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. --option head_fusion=max")
    return name.strip(), value


def auth_headers(key_file: Path | None) -> dict[str, str]:
    """Bearer token from TorchServe's key_file.json (inference key), when one is given."""
    if key_file is None:
        return {}
    try:
        key = json.loads(Path(key_file).read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClientError(f"cannot read the inference key from {key_file}: {e}") from e
    return {"Authorization": f"Bearer {key}"}


def render_one(image_path: Path, args: argparse.Namespace, url: str, headers: dict[str, str]) -> Path:
    """Fetch (or load) one response and write its figure; returns the figure's path."""
    if args.from_file:
        try:
            doc = decode_body(args.from_file.read_bytes())
        except OSError as e:
            raise ClientError(f"cannot read {args.from_file}: {e.strerror}") from e
    else:
        doc = request_attention(url, image_path, option_fields(args), args.timeout, headers)
    att = parse_response(doc).with_image(image_path)
    out_dir = args.out or image_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = att.figure(cmap=args.cmap, shared_scale=args.color_scale == "shared", mask=args.mask, dpi=args.dpi)
    target = out_dir / f"{image_path.stem}_attention.png"
    fig.savefig(target)
    if args.save_heads:
        assert att.image is not None
        save_heads(out_dir / image_path.stem, att.image, att, args.cmap, args.mask)
    if args.show:
        import matplotlib.pyplot as plt

        plt.figure(fig)  # hand the figure to pyplot's window manager
        plt.show()
    return target


def render_together(paths: Sequence[Path], args: argparse.Namespace, url: str, headers: dict[str, str]) -> Path:
    """Send the images in one request and write one figure of them all; returns its path."""
    fields = option_fields(args)
    fields.pop("format", None)
    responses = Responses(request_many(url, [image_bytes(path) for path in paths], fields, args.timeout, headers))
    out_dir = args.out or paths[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{paths[0].stem}_together.png"
    responses.figure(cmap=args.cmap, dpi=args.dpi).savefig(target)
    return target


def render_video(args: argparse.Namespace, url: str, key_file: Path | None) -> int:
    """--video: explain every frame and write the output video (and maps); exit status 0 or 1."""
    try:
        point = tuple(int(v) for v in args.point.split(",")) if args.point else None
        if point is not None and len(point) != 2:
            raise ValueError(args.point)
    except ValueError:
        print(f"error: --point {args.point!r} is not x,y (two integers)", file=sys.stderr)
        return 1
    server_options = {k: v for k, v in option_fields(args).items() if k in ("precision", *dict(args.options))}
    client = AttentionClient(url, key_file=key_file, timeout=args.timeout)
    options = {"method": args.method or "attention", "layer": args.layer, "head": args.head, "point": point, "every": args.every}
    options |= {"max_frames": args.max_frames, "short_side": args.short_side, "in_flight": args.in_flight, "mask": args.mask}
    options |= {"pca_fit": args.pca_fit, "cmap": args.cmap, "server_options": server_options}
    try:
        summary = client.explain_video(args.video, args.out, maps=args.maps, resume=args.resume, **options)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rate = f"{float(summary.fps):g}"
    print(f"wrote {summary.out}: {summary.frames} frames at {rate} fps, {summary.size[1]}x{summary.size[0]}, in {summary.seconds:.1f} s")
    return 0


def progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="image file(s) to send to the server")
    parser.add_argument("--url", help=f"inference URL (default {DEFAULT_HOST}/predictions/<model>)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name in the default URL (dino_vits8, dino_vitb16, ...)")
    parser.add_argument(
        "--from-file",
        "--from-json",
        dest="from_file",
        type=Path,
        help="render a saved response (.json, .npz) instead of asking the server",
    )
    parser.add_argument("--image", type=Path, help="the image the --from-file response was made from")
    parser.add_argument("--describe", action="store_true", help="print what the server offers (methods, options, outputs) and exit")
    parser.add_argument("--management", help=f"management API for --describe (default: the server host, port {MANAGEMENT_PORT})")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--short-side", dest="short_side", type=int)
    parser.add_argument("--scale", type=float)
    parser.add_argument("--size", help="HxW")
    parser.add_argument("--heads", help="comma-separated head indices, e.g. 0,2")
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--layers", help="several blocks in one pass: all, or e.g. 0,5,11 (a layers x heads grid)")
    parser.add_argument(
        "--method", help=f"how to look: {', '.join(METHODS)} or any other the server describes (--describe); default attention"
    )
    parser.add_argument("--head-fusion", dest="head_fusion", choices=HEAD_FUSIONS, help="rollout: how heads combine (mean)")
    parser.add_argument("--discard-ratio", dest="discard_ratio", type=float, help="rollout: share of each row discarded, in [0, 1)")
    parser.add_argument(
        "--mask",
        "--threshold",
        dest="mask",
        type=float,
        help="DINO's masks keeping this fraction of each map's mass, in (0, 1] (e.g. 0.6): the server's, or for a saved "
        "response without them the client's own",
    )
    parser.add_argument("--boxes", action="store_const", const="true", help="with --mask: each mask's largest component as a box")
    parser.add_argument(
        "--registers",
        action="store_const",
        const="true",
        help="DINOv2 *_reg / DINOv3: each map's share on the register tokens, in its title",
    )
    parser.add_argument(
        "--option",
        dest="options",
        type=name_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other server option, e.g. a method's own (repeatable; --describe lists them)",
    )
    parser.add_argument("--point", help="method=similarity: x,y, a pixel of the processed image (its image_size frame)")
    parser.add_argument("--format", choices=FORMATS, help="response format to ask for (default: the server's)")
    parser.add_argument("--cmap", default="inferno")
    parser.add_argument("--color-scale", choices=("per-head", "shared"), default="per-head")
    parser.add_argument("--out", type=Path, help="output folder (default: next to each image)")
    parser.add_argument("--save-heads", action="store_true", help="also write one PNG per head (and per mask)")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    parser.add_argument(
        "--key-file", type=Path, help="TorchServe key_file.json when token auth is on (default: ./key_file.json if present)"
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="send the images in one request and draw them in one figure, on one colour scale (e.g. with "
        "--method pca --option pca_fit=joint, or --method similarity --point x,y of the first image)",
    )
    parser.add_argument("--show", action="store_true", help="open a window (otherwise headless)")
    video = parser.add_argument_group("videos (--video IN --out OUT.mp4; needs PyAV: pip install './client[video]')")
    video.add_argument("--video", type=Path, help="a video to explain frame by frame; --out is then the output video")
    video.add_argument("--maps", type=Path, help="also write the per-frame maps on the patch grid, [frames, ...] float16 (.npz/.npy)")
    video.add_argument("--head", default="mean", help="attention: the heads' mean (default) or one head's index")
    video.add_argument("--every", type=int, default=1, help="every N-th frame (the output's rate is divided by N)")
    video.add_argument("--max-frames", dest="max_frames", type=int, help="at most this many frames")
    video.add_argument("--in-flight", dest="in_flight", type=int, default=4, help="requests in flight at once (default 4)")
    video.add_argument(
        "--pca-fit", dest="pca_fit", choices=("first", "sample"), default="first", help="pca: the basis of the first frame, or of a sample"
    )
    video.add_argument("--resume", action="store_true", help="go on from the maps a stopped run kept in <maps>.partial")
    args = parser.parse_args(argv)
    if args.describe:
        return args
    if args.video:
        if args.images or args.from_file or args.together or not args.out:
            parser.error("--video takes --out OUT.mp4 and no images, --from-file or --together")
        if args.resume and not args.maps:
            parser.error("--resume goes on from --maps: give the same --maps as the stopped run")
        return args
    if args.from_file and (args.images or not args.image):
        parser.error("--from-file takes exactly one --image and no positional images")
    if not args.from_file and (args.image or not args.images):
        parser.error("give image path(s), or --from-file resp.json --image img.jpg")
    if args.together and (args.from_file or args.format not in (None, "json") or args.save_heads):
        parser.error("--together sends images (no --from-file) and reads a JSON answer (no --format, no --save-heads)")
    if args.mask is not None and not 0 < args.mask <= 1:
        parser.error("--mask must be in (0, 1], e.g. 0.6")
    if args.cmap not in matplotlib.colormaps:
        parser.error(f"unknown colormap {args.cmap!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not args.show:
        matplotlib.use("Agg")
    images = [args.image] if args.from_file else args.images
    url = args.url or f"{DEFAULT_HOST}/predictions/{args.model}"
    key_file = args.key_file or (DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else None)
    try:
        headers = {**auth_headers(key_file), TIMEOUT_HEADER: f"{args.timeout:g}"}
        if args.describe:
            client = AttentionClient(url, key_file=key_file, timeout=args.timeout, management=args.management)
            print(json.dumps(client.describe(), indent=2))
            return 0
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.video:
        return render_video(args, url, key_file)
    if args.together:
        try:
            target = render_together(images, args, url, headers)
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"rendered {len(images)} image(s) together: {target}")
        return 0
    written, failed = [], 0
    for n, path in enumerate(images, 1):
        try:
            written.append(render_one(path, args, url, headers))
        except ClientError as e:
            failed += 1
            if len(images) > 1:
                sys.stderr.write("\n")
            print(f"error: {e}", file=sys.stderr)
        if len(images) > 1:
            progress(n, len(images), path.name)
    if len(images) > 1 or written:
        summary = f"rendered {len(written)}/{len(images)} image(s)"
        print(summary + (f": {written[0]}" if len(written) == 1 else "") + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    # Run as the importable module, so that attention_video, which imports render_attention, shares
    # its classes (ClientError) with this run (also under `python -m client.render_attention`).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import render_attention

    sys.exit(render_attention.main())
