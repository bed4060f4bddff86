"""Image decoding and geometry (PIL and numpy only, no torch).

Steps, in order: decode (allowed formats only, first frame) -> EXIF orientation -> RGB ->
resize (short side, scale factor or exact size) -> crop bottom/right to a multiple of the patch.
``open_image`` (the header and its limits) and ``checked_sizes`` (the sizes and theirs) are shared
with the tensor decoders of ``decoding.py``, so that every route answers a bad image alike.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, PayloadTooLarge

# Pillow format names we decode (JPEG includes the multi-picture MPO files many cameras write).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
RESAMPLE = Image.Resampling.BILINEAR  # the resize filter

Size = tuple[int, int]  # (height, width), the order of every size in this package


@dataclass(frozen=True)
class PreparedImage:
    """An RGB image ready for the network, and the sizes it went through (all (H, W))."""

    image: Image.Image
    input_size: Size  # decoded, after EXIF orientation
    resized_size: Size  # after resize
    image_size: Size  # after the crop to a multiple of the patch size


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header of an allowed format: a lazy ``PIL.Image`` (nothing decoded yet) whose
    size is within ``max_pixels``; the same ``RequestError`` as ``decode_image`` otherwise. The
    decompression-bomb guard of every decoder (``decoding.py`` too): it runs before any pixel is decoded."""
    if not data:
        raise ImageError("empty request body: send an image (JPEG, PNG, WebP, BMP, GIF or TIFF)")
    Image.init()  # register every plugin (idempotent): Image.open(formats=...) needs them loaded
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as e:
        raise ImageError(f"the {len(data)}-byte payload is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from e
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"image rejected as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # header found but unreadable
        raise ImageError(f"cannot decode the image header (truncated or corrupt?): {e}") from e
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {height}x{width} = {width * height} pixels, over the limit of {max_pixels} pixels (max_pixels)")
    return img


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes to an RGB ``PIL.Image`` (first frame, EXIF-oriented); ``RequestError`` if not possible."""
    img = open_image(data, max_pixels)
    try:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot decode the {img.format} image (truncated or corrupt?): {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited onto white; 16-bit/float data is scaled to 8 bits.
    The client has the same function (it may not import the server); tests compare the two."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_to_uint8(img)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Scale integer (I, I;16*) or float (F) single-channel data to uint8, (H, W)."""
    arr = np.asarray(img).astype(np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
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


def target_size(input_size: Size, *, short_side: int | None = None, scale: float | None = None, size: Size | None = None) -> Size:
    """Size after resize. Exactly one of ``short_side`` (keep aspect), ``scale`` or ``size`` (squash)."""
    if sum(x is not None for x in (short_side, scale, size)) != 1:
        raise ImageError("give exactly one of short_side, scale or size")
    h, w = input_size
    if size is not None:
        return size
    if scale is not None:
        return max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
    assert short_side is not None  # exactly one of the three is set (checked above)
    # torchvision.transforms.Resize(int) arithmetic, which DINO's visualisation uses.
    if h <= w:
        return short_side, max(1, int(short_side * w / h))
    return max(1, int(short_side * h / w)), short_side


def crop_size(size: Size, patch_size: int) -> Size:
    """Largest multiple of ``patch_size`` in each dimension (DINO crops bottom/right)."""
    h, w = size
    return h - h % patch_size, w - w % patch_size


def checked_sizes(
    input_size: Size,
    *,
    patch_size: int,
    max_tokens: int,
    short_side: int | None = None,
    scale: float | None = None,
    size: Size | None = None,
) -> tuple[Size, Size]:
    """(resized, cropped) sizes of a decoded image of ``input_size``, checked against the patch and
    ``max_tokens`` before any resampling; ``ImageError`` / ``PayloadTooLarge`` saying what to change."""
    if min(input_size) < patch_size:
        raise ImageError(
            f"image is {input_size[0]}x{input_size[1]}, smaller than one {patch_size}x{patch_size} patch "
            "in at least one dimension: there is nothing to attend to"
        )
    resized = target_size(input_size, short_side=short_side, scale=scale, size=size)
    cropped = crop_size(resized, patch_size)
    if min(cropped) == 0:
        raise ImageError(
            f"image is {resized[0]}x{resized[1]} after resize, smaller than one {patch_size}x{patch_size} patch; "
            "use a larger image, short_side, scale or size"
        )
    tokens = (cropped[0] // patch_size) * (cropped[1] // patch_size)
    if tokens > max_tokens:
        raise PayloadTooLarge(
            f"{cropped[0]}x{cropped[1]} pixels make {tokens} patch tokens, over the limit of {max_tokens} "
            "(max_tokens); ask for a smaller short_side, scale or size"
        )
    return resized, cropped


def prepare_image(
    data: bytes,
    *,
    patch_size: int,
    max_pixels: int,
    max_tokens: int,
    short_side: int | None = None,
    scale: float | None = None,
    size: Size | None = None,
) -> PreparedImage:
    """Decode, resize and crop; sizes are checked against the limits before any resampling."""
    img = decode_image(data, max_pixels)
    input_size = (img.height, img.width)
    resized, cropped = checked_sizes(
        input_size, patch_size=patch_size, max_tokens=max_tokens, short_side=short_side, scale=scale, size=size
    )
    if resized != input_size:
        img = img.resize((resized[1], resized[0]), RESAMPLE)
    if cropped != resized:
        img = img.crop((0, 0, cropped[1], cropped[0]))
    return PreparedImage(image=img, input_size=input_size, resized_size=resized, image_size=cropped)
