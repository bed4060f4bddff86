"""The client's copies of the server's maths and facts: it may not import the server (no torch), so it
repeats them here, and tests check each against the server's own (tests/test_schema.py): the protocol
constants, the response fields it reads, the bit-packed masks, DINO's threshold masks, and the image's
conversion, resize and crop (``vitscope/image.py``, ``vitscope/masks.py``, ``vitscope/options.py``)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ClientError

DEFAULT_MODEL = "dino_vits8"  # the server's default model (tests check it against the variants table)
DEFAULT_METHOD = "attention"  # the method a response without ``method`` used
# The outputs the client knows by name (each one the server declares; tests check it), and the name of
# an npz answer's metadata. Any other array of an answer is found by its value (``is_array_field``).
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
FAITHFULNESS_METRICS = ("deletion", "insertion")  # the curves a ``faithfulness`` entry may hold, in its order
FAITHFULNESS_RANDOM = "random"  # an entry's key of the random order's curves
HEAD_FUSIONS = ("mean", "max", "min")
# Options passed on to the server as they are (the client itself always asks for the patch grid).
MAP_OPTIONS = ("layer", "short_side", "scale", "size", "heads", "precision")
METHOD_OPTIONS = (
    "layers",
    "method",
    "head_fusion",
    "discard_ratio",
    "mask",
    "boxes",
    "registers",
    "point",
    "query",
    "top_k",
    "labels",
    "target",
)
SERVER_OPTIONS = MAP_OPTIONS + METHOD_OPTIONS
RESAMPLE = Image.Resampling.BILINEAR  # the server's resize filter
BACKGROUND = (255, 255, 255)  # the server composites transparent pixels onto white


def form_value(name: str, value: object) -> str:
    """An option's value as a multipart form field: a list of ``labels`` as a JSON list (a text may hold
    any character), other lists joined by ","."""
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value]) if name == "labels" else ",".join(str(v) for v in value)
    return str(value)


def is_array_field(name: str, value: object) -> bool:
    """Whether a response field holds one of the method's outputs rather than metadata: a known output,
    an array (npz, npy), bit-packed booleans (``{"shape", "encoding", "data"}``) or nested lists (an
    array of two axes or more; the metadata fields are numbers, text and flat lists)."""
    if name in ARRAY_FIELDS or isinstance(value, np.ndarray):
        return True
    if isinstance(value, dict):
        return "encoding" in value and "shape" in value
    return isinstance(value, list) and bool(value) and isinstance(value[0], list)


def decode_masks(document: dict | np.ndarray) -> np.ndarray:
    """The server's bit-packed masks (``{"shape", "encoding": "packbits", "data"}``) as booleans, or the
    arrays of an npz answer as they are."""
    if isinstance(document, np.ndarray):
        return document.astype(bool)
    shape = list(document["shape"])
    count = int(np.prod(shape[:-2], dtype=np.int64))
    packed = np.frombuffer(base64.b64decode(document["data"]), np.uint8).reshape(count, -1)
    return np.unpackbits(packed, axis=1, count=shape[-2] * shape[-1]).astype(bool).reshape(shape)


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
