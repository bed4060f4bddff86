"""Render the per-head [CLS] attention served by the DINO TorchServe model: a script and a notebook API.

    python client/render_attention.py data/samples/astronaut.jpg                 # ask the server
    python client/render_attention.py img1.jpg img2.png --layer 5 --threshold 0.6 --save-heads
    python client/render_attention.py --from-json out/astronaut.json --image data/samples/astronaut.jpg
    python client/render_attention.py --from-file out/astronaut.npz --image data/samples/astronaut.jpg

In a notebook (this file is standalone: copy it next to the notebook, or put ``client/`` on
``sys.path``)::

    from render_attention import AttentionClient
    result = AttentionClient("http://127.0.0.1:8080", model="dino_vits8").explain("cat.jpg", layer=11)
    result.figure(threshold=0.6)       # a matplotlib Figure; the result itself also shows inline
    result.grid, result.meta           # (heads, H/p, W/p) maps and the server's metadata

Needs only requests, matplotlib, numpy and pillow, and nothing from the server's code; the picture
under each map is the original resized and cropped exactly as the server reports it did.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import requests
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger("render_attention")

DEFAULT_HOST = "http://127.0.0.1:8080"
DEFAULT_MODEL = "dino_vits8"
DEFAULT_KEY_FILE = Path("key_file.json")  # where `make serve` (token auth on) leaves TorchServe's keys
OVERLAY_ALPHA = 0.6
PANEL_INCHES = 2.6  # width of one map
TITLE_INCHES = 0.25  # one line of panel title
COLORBAR_INCHES = 0.35  # a panel's colour bar and its labels, beside the map
MAX_COLS = 4
# The response fields this client reads (tests check them against the server's schema):
REQUIRED_KEYS = ("model", "patch_size", "layer", "heads", "weights", "input_size", "resized_size", "image_size", "grid", "attention")
# The server's protocol facts this client relies on (tests check them against the server's own):
CONTENT_TYPES = {"json": "application/json", "npy": "application/x-npy", "npz": "application/x-npz"}
FORMATS = tuple(CONTENT_TYPES)
META_HEADER = "X-Attention-Meta"  # .npy answers carry their metadata in this header
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
RESAMPLE = Image.Resampling.BILINEAR  # the server's resize filter
BACKGROUND = (255, 255, 255)  # the server composites transparent pixels onto white
ImageLike = str | Path | bytes | Image.Image | np.ndarray


class ClientError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1."""


@dataclass(frozen=True)
class Attention:
    """A parsed server response, and (once aligned) the image it is about."""

    meta: dict  # every field but "attention"
    grid: np.ndarray  # (heads, H/p, W/p)
    pixels: np.ndarray  # (heads, H, W), nearest-upsampled like the server
    image: np.ndarray | None = None  # (H, W, 3) uint8: the original resized and cropped as the server did

    @property
    def title(self) -> str:
        m = self.meta
        heads = m["heads"] if len(m["heads"]) < m.get("num_heads", 0) else "all"
        return f"{m['model']}/{m['patch_size']}  layer {m['layer']}  heads {heads}  weights: {m['weights']}"

    def figure(self, *, threshold: float | None = None, cmap: str = "inferno", shared_scale: bool = False, dpi: int = 100) -> Figure:
        """The picture: image, head mean, overlay, every head (and DINO's masks with ``threshold``)."""
        if self.image is None:
            raise ClientError("no image to draw on: build the result with AttentionClient.explain or with_image()")
        return render_figure(self.image, self, cmap=cmap, shared_scale=shared_scale, threshold=threshold, dpi=dpi)

    def with_image(self, image: ImageLike) -> Attention:
        """This result with ``image`` (the one sent) aligned to the maps."""
        data, name = image_bytes(image)
        return Attention(self.meta, self.grid, self.pixels, aligned_image(data, self.meta, name))

    def _repr_png_(self) -> bytes | None:  # Jupyter shows a result as its figure
        if self.image is None:
            return None
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png")
        return buf.getvalue()


class AttentionClient:
    """The server, from Python: ``AttentionClient(url).explain(image, layer=5)`` -> ``Attention``."""

    def __init__(
        self, url: str = DEFAULT_HOST, model: str = DEFAULT_MODEL, *, key_file: Path | None = None, timeout: float = 120.0
    ) -> None:
        base = url.rstrip("/")
        self.url = base if "/predictions/" in base else f"{base}/predictions/{model}"
        self.headers = auth_headers(key_file)
        self.timeout = timeout

    def explain(self, image: ImageLike, **options: object) -> Attention:
        """Ask for the attention over ``image`` (path, bytes, PIL image or uint8 array); ``options`` as
        the server's (layer=5, heads="0,2", short_side=320, precision="auto", ...)."""
        data, name = image_bytes(image)
        fields = {"upsample": "false", **{k: str(v) for k, v in options.items() if v is not None}}
        doc = post_image(self.url, data, name, fields, self.timeout, self.headers)
        return parse_response(doc).with_image(data)


def parse_response(doc: object) -> Attention:
    """Validate a response document (upsampled or patch grid) and return both resolutions."""
    if not isinstance(doc, dict) or "error" in doc:
        raise ClientError(f"not an attention response: {str(doc)[:200]}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ClientError(f"response lacks {missing}")
    try:
        att = np.asarray(doc["attention"], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ClientError(f"response attention is not a numeric array: {e}") from e
    p, (h, w), (gh, gw) = doc["patch_size"], doc["image_size"], doc["grid"]
    heads = len(doc["heads"])
    if att.shape == (heads, gh, gw):
        grid = att
    elif att.shape == (heads, h, w) and (h, w) == (gh * p, gw * p):
        grid = att[:, ::p, ::p]
    else:
        raise ClientError(f"attention shape {att.shape} matches neither grid {(heads, gh, gw)} nor image {(heads, h, w)}")
    pixels = np.kron(grid, np.ones((p, p), np.float32))  # (heads, H, W)
    return Attention({k: v for k, v in doc.items() if k != "attention"}, grid, pixels)


def decode_body(body: bytes, content_type: str | None = None, meta_header: str | None = None) -> dict:
    """A response body in any format (JSON, .npz, .npy + metadata header) -> document dict."""
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        if kind == CONTENT_TYPES["npz"] or body.startswith(b"PK"):
            with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                return {**json.loads(str(archive["meta"])), "attention": archive["attention"]}
        if kind == CONTENT_TYPES["npy"] or body.startswith(b"\x93NUMPY"):
            if not meta_header:
                raise ClientError(f"a .npy answer carries its metadata in the {META_HEADER} header; save npz or JSON instead")
            return {**json.loads(meta_header), "attention": np.load(io.BytesIO(body), allow_pickle=False)}
        return json.loads(body)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        raise ClientError(f"malformed response ({kind or 'file'}): {e}") from e


def post_image(url: str, data: bytes, name: str, fields: dict[str, str], timeout: float, headers: dict[str, str]) -> dict:
    """POST the image as multipart (options as fields); the server's answer as a dict, or ``ClientError``."""
    try:
        reply = requests.post(url, files={"data": (name, data)}, data=fields, timeout=timeout, headers=headers)
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
        raise ClientError(f"server answered HTTP {reply.status_code} for {name}: {detail}")
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
    """RGB as the server makes it: transparency composited onto white."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def aligned_image(data: bytes, meta: dict, name: str = "image") -> np.ndarray:
    """The original image resized and cropped as the server reports it did: (H, W, 3) uint8.

    EXIF orientation, a bilinear resize to ``resized_size``, the bottom/right crop to ``image_size``,
    as the server. (16-bit and float images are tone-mapped by PIL here, which may differ from the
    server's scaling; the geometry is the same.)
    """
    try:
        img = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ClientError(f"cannot use {name} as an image: {e}") from e
    (h0, w0), (hr, wr), (h, w) = meta["input_size"], meta["resized_size"], meta["image_size"]
    if (img.height, img.width) != (h0, w0):
        raise ClientError(f"{name} is {img.height}x{img.width} but the response is for a {h0}x{w0} image: wrong --image for this JSON?")
    if (hr, wr) != (h0, w0):
        img = img.resize((wr, hr), RESAMPLE)
    return np.asarray(img.crop((0, 0, w, h)))


def threshold_masks(grid: np.ndarray, threshold: float) -> np.ndarray:
    """DINO's masks: per head, the highest patches holding ``threshold`` of the mass. (heads, h, w) bool."""
    heads = grid.shape[0]
    flat = grid.reshape(heads, -1).astype(np.float64)
    order = np.argsort(flat, axis=1)  # ascending
    ranked = np.take_along_axis(flat, order, axis=1)
    cumulative = np.cumsum(ranked / ranked.sum(axis=1, keepdims=True), axis=1)
    keep_sorted = cumulative > 1 - threshold
    masks = np.empty_like(keep_sorted)
    np.put_along_axis(masks, order, keep_sorted, axis=1)
    return masks.reshape(grid.shape)


def normalize(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay(image: np.ndarray, heat: np.ndarray, cmap: str, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Heat map (H, W) coloured with ``cmap`` and blended over the image: (H, W, 3) uint8."""
    coloured = matplotlib.colormaps[cmap](normalize(heat))[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1 - alpha) * image / 255.0 + alpha * coloured
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def figure_layout(num_heads: int, threshold: float | None) -> tuple[int, int]:
    """(rows, cols): a summary row (image, mean, overlay), head rows, then mask rows."""
    cols = max(3, min(MAX_COLS, num_heads))
    head_rows = -(-num_heads // cols)
    return 1 + head_rows * (2 if threshold is not None else 1), cols


def figure_size(rows: int, cols: int, aspect: float) -> tuple[float, float]:
    """Starting size: each panel's map (height/width = ``aspect``), its colour bar and one title line;
    ``fit_height`` then removes what the colour bars took from the maps' width."""
    width = cols * (PANEL_INCHES + COLORBAR_INCHES)
    return width, rows * (PANEL_INCHES * aspect + TITLE_INCHES) + TITLE_INCHES  # + the suptitle


def render_figure(image: np.ndarray, att: Attention, *, cmap: str, shared_scale: bool, threshold: float | None, dpi: int) -> Figure:
    """The whole picture for one image; returns a matplotlib Figure."""
    heads = att.meta["heads"]
    rows, cols = figure_layout(len(heads), threshold)
    layout = ConstrainedLayoutEngine(w_pad=0.02, h_pad=0.02, hspace=0, wspace=0)
    fig = Figure(figsize=figure_size(rows, cols, image.shape[0] / image.shape[1]), dpi=dpi, layout=layout)
    fig.suptitle(att.title, fontsize=9)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    mean = att.pixels.mean(axis=0)
    vmin, vmax = (float(att.pixels.min()), float(att.pixels.max())) if shared_scale else (None, None)

    def panel(ax: Axes, data: np.ndarray, title: str, colorbar: bool = True) -> None:
        im = ax.imshow(data, cmap=cmap if data.ndim == 2 else None, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=8, pad=2)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, aspect=30).ax.tick_params(labelsize=6)

    panel(axes[0, 0], image, f"image {image.shape[0]}x{image.shape[1]}", colorbar=False)
    panel(axes[0, 1], mean, "head mean")
    panel(axes[0, 2], overlay(image, mean, cmap), "head mean over image", colorbar=False)
    for i, head in enumerate(heads):
        panel(axes[1 + i // cols, i % cols], att.pixels[i], f"head {head}")
    if threshold is not None:
        masks = np.kron(threshold_masks(att.grid, threshold), np.ones((att.meta["patch_size"],) * 2, bool))
        first = 1 + -(-len(heads) // cols)
        for i, head in enumerate(heads):
            ax = axes[first + i // cols, i % cols]
            ax.imshow(image)
            ax.imshow(np.ma.masked_where(~masks[i], masks[i]), cmap="cool", alpha=0.35, vmin=0, vmax=1)
            if masks[i].any() and not masks[i].all():
                ax.contour(masks[i].astype(float), levels=[0.5], colors="cyan", linewidths=1)
            ax.set_title(f"head {head}: {threshold:.0%} of mass", fontsize=8, pad=2)
    fit_height(fig, rows)
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


def save_heads(out_dir: Path, image: np.ndarray, att: Attention, cmap: str, threshold: float | None) -> None:
    """DINO-style per-head files: attn-head{j}.png, mask_th{t}_head{j}.png, plus the overlay."""
    import matplotlib.image as mpimg

    out_dir.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(out_dir / "img.png", image)
    mpimg.imsave(out_dir / "overlay.png", overlay(image, att.pixels.mean(axis=0), cmap))
    for i, head in enumerate(att.meta["heads"]):
        mpimg.imsave(out_dir / f"attn-head{head}.png", att.pixels[i], cmap=cmap, format="png")
    if threshold is not None:
        masks = np.kron(threshold_masks(att.grid, threshold), np.ones((att.meta["patch_size"],) * 2, bool))
        for i, head in enumerate(att.meta["heads"]):
            mpimg.imsave(out_dir / f"mask_th{threshold:g}_head{head}.png", masks[i].astype(np.float32), cmap="gray", vmin=0, vmax=1)


def option_fields(args: argparse.Namespace) -> dict[str, str]:
    """Multipart fields for the server; the client upsamples itself, so maps travel as the patch grid."""
    fields = {"upsample": "false"}
    for name in ("layer", "short_side", "scale", "size", "heads", "precision", "format"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    return fields


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
    if args.from_json:
        try:
            doc = decode_body(args.from_json.read_bytes())
        except OSError as e:
            raise ClientError(f"cannot read {args.from_json}: {e.strerror}") from e
    else:
        doc = request_attention(url, image_path, option_fields(args), args.timeout, headers)
    att = parse_response(doc).with_image(image_path)
    out_dir = args.out or image_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = att.figure(cmap=args.cmap, shared_scale=args.color_scale == "shared", threshold=args.threshold, dpi=args.dpi)
    target = out_dir / f"{image_path.stem}_attention.png"
    fig.savefig(target)
    if args.save_heads:
        assert att.image is not None
        save_heads(out_dir / image_path.stem, att.image, att, args.cmap, args.threshold)
    if args.show:
        import matplotlib.pyplot as plt

        plt.figure(fig)  # hand the figure to pyplot's window manager
        plt.show()
    return target


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
        "--from-json",
        "--from-file",
        dest="from_json",
        type=Path,
        help="render a saved response (.json or .npz) instead of asking the server",
    )
    parser.add_argument("--image", type=Path, help="the image the --from-json response was made from")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--short-side", dest="short_side", type=int)
    parser.add_argument("--scale", type=float)
    parser.add_argument("--size", help="HxW")
    parser.add_argument("--heads", help="comma-separated head indices, e.g. 0,2")
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--format", choices=FORMATS, help="response format to ask for (default: the server's)")
    parser.add_argument("--threshold", type=float, help="also draw masks keeping this fraction of each head's mass (DINO: 0.6)")
    parser.add_argument("--cmap", default="inferno")
    parser.add_argument("--color-scale", choices=("per-head", "shared"), default="per-head")
    parser.add_argument("--out", type=Path, help="output folder (default: next to each image)")
    parser.add_argument("--save-heads", action="store_true", help="also write one PNG per head (and per mask)")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    parser.add_argument(
        "--key-file", type=Path, help="TorchServe key_file.json when token auth is on (default: ./key_file.json if present)"
    )
    parser.add_argument("--show", action="store_true", help="open a window (otherwise headless)")
    args = parser.parse_args(argv)
    if args.from_json and (args.images or not args.image):
        parser.error("--from-json takes exactly one --image and no positional images")
    if not args.from_json and (args.image or not args.images):
        parser.error("give image path(s), or --from-json resp.json --image img.jpg")
    if args.threshold is not None and not 0 < args.threshold < 1:
        parser.error("--threshold must be between 0 and 1, e.g. 0.6")
    if args.cmap not in matplotlib.colormaps:
        parser.error(f"unknown colormap {args.cmap!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not args.show:
        matplotlib.use("Agg")
    images = [args.image] if args.from_json else args.images
    url = args.url or f"{DEFAULT_HOST}/predictions/{args.model}"
    key_file = args.key_file or (DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else None)
    try:
        headers = auth_headers(key_file)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
    sys.exit(main())
