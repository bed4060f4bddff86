"""Preprocessing: formats, modes, EXIF orientation, resize and crop arithmetic, limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from testkit.checkpoints import encode, random_rgb, smooth_rgb
from vitscope.attention import to_tensor
from vitscope.errors import ImageError, PayloadTooLarge, RequestError
from vitscope.image import crop_size, decode_image, prepare_image, target_size, to_rgb
from vitscope.model.variants import IMAGENET_MEAN, IMAGENET_STD

BIG = 10**9
RGB = random_rgb(37, 53)
SMOOTH = smooth_rgb(37, 53)  # for lossy formats: random noise does not survive JPEG/WebP


@pytest.mark.parametrize(
    "fmt, lossless",
    [("PNG", True), ("BMP", True), ("TIFF", True), ("WEBP", False), ("JPEG", False), ("GIF", False)],
)
def test_every_format_decodes_to_rgb(fmt: str, lossless: bool) -> None:
    source = RGB if lossless else SMOOTH
    img = decode_image(encode(source, fmt), BIG)
    assert img.mode == "RGB" and img.size == (53, 37)
    error = np.abs(np.asarray(img).astype(int) - source).mean()
    assert error == 0 if lossless else error < 8


def test_gif_first_frame_and_multipage_tiff_first_page() -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "TIFF"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        assert Image.open(io.BytesIO(data)).n_frames == 2
        assert decode_image(data, BIG).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("P", 7, None),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent -> white background
        ("LA", (0, 128), (128, 128, 128)),  # half-transparent black over white
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I", 200, (200, 200, 200)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_every_mode_to_rgb(mode: str, value, expected) -> None:
    img = Image.new(mode, (4, 3), value)
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (4, 3)
    if expected is not None:
        assert all(abs(a - b) <= 1 for a, b in zip(rgb.getpixel((1, 1)), expected, strict=True))


def test_palette_with_transparency_and_16bit_png_roundtrip() -> None:
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    data = encode(pal, "PNG", transparency=0)
    rgb = decode_image(data, BIG)
    assert rgb.getpixel((0, 0)) == (0, 255, 0) and rgb.getpixel((3, 3)) == (255, 255, 255)
    deep = Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16))
    assert decode_image(encode(deep, "PNG"), BIG).getpixel((2, 2)) == (255, 255, 255)


@pytest.mark.parametrize("orientation, size", [(1, (20, 10)), (3, (20, 10)), (6, (10, 20)), (8, (10, 20))])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 4, 4))  # white block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), BIG)
    assert out.size == size
    corners = {"tl": (1, 1), "tr": (out.width - 2, 1), "bl": (1, out.height - 2), "br": (out.width - 2, out.height - 2)}
    white = [name for name, xy in corners.items() if out.getpixel(xy)[0] > 200]
    # stored top-left moves: 1 stays tl, 3 (180°) -> br, 6 (90° CW) -> tr, 8 (90° CCW) -> bl
    assert white == [{1: "tl", 3: "br", 6: "tr", 8: "bl"}[orientation]]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty request body"),
        (b"hello world", "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image"),
        (b"%PDF-1.4\n", "not an image"),
        (encode(RGB, "PNG")[:60], "truncated or corrupt|not an image"),
        (encode(random_rgb(64, 64), "JPEG")[:300], "truncated or corrupt"),
    ],
)
def test_bad_bytes_are_request_errors(data: bytes, match: str) -> None:
    with pytest.raises(RequestError, match=match) as err:
        decode_image(data, BIG)
    assert err.value.status == 400


def test_unsupported_format_is_rejected() -> None:
    with pytest.raises(RequestError, match="not an image in a supported format"):
        decode_image(encode(RGB, "PPM"), BIG)


def test_pixel_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 pixels") as err:
        decode_image(encode(random_rgb(40, 40), "PNG"), 1000)
    assert err.value.status == 413


@pytest.mark.parametrize(
    "size_in, kwargs, expected",
    [
        ((600, 800), {"short_side": 480}, (480, 640)),
        ((800, 600), {"short_side": 480}, (640, 480)),
        ((333, 500), {"short_side": 224}, (224, 336)),  # int() like torchvision.transforms.Resize
        ((600, 800), {"scale": 0.5}, (300, 400)),
        ((601, 799), {"scale": 0.5}, (300, 399)),  # floor, like the seed's // factor_reduce
        ((600, 800), {"size": (224, 224)}, (224, 224)),
    ],
)
def test_target_size(size_in, kwargs, expected) -> None:
    assert target_size(size_in, **kwargs) == expected


def test_target_size_needs_exactly_one_rule() -> None:
    for kwargs in ({}, {"short_side": 5, "scale": 2.0}):
        with pytest.raises(ImageError, match="give exactly one of short_side, scale or size") as caught:
            target_size((10, 10), **kwargs)
        assert caught.value.status == 400


@pytest.mark.parametrize(
    "size, patch, expected",
    [((480, 640), 8, (480, 640)), ((487, 643), 8, (480, 640)), ((487, 643), 16, (480, 640)), ((15, 31), 16, (0, 16))],
)
def test_crop_size(size, patch, expected) -> None:
    assert crop_size(size, patch) == expected


def test_prepare_image_resizes_then_crops_bottom_right() -> None:
    arr = random_rgb(100, 150)
    prepared = prepare_image(encode(arr), patch_size=16, max_pixels=BIG, max_tokens=BIG, scale=1.0)
    assert (prepared.input_size, prepared.resized_size, prepared.image_size) == ((100, 150), (100, 150), (96, 144))
    assert np.array_equal(np.asarray(prepared.image), arr[:96, :144])  # top-left kept
    resized = prepare_image(encode(arr), patch_size=8, max_pixels=BIG, max_tokens=BIG, short_side=50)
    assert (resized.resized_size, resized.image_size) == ((50, 75), (48, 72))
    assert resized.image.size == (72, 48)


def test_prepare_image_limits() -> None:
    data = encode(random_rgb(64, 64))
    with pytest.raises(RequestError, match="smaller than one 16x16 patch"):
        prepare_image(data, patch_size=16, max_pixels=BIG, max_tokens=BIG, short_side=10)
    with pytest.raises(PayloadTooLarge, match="16 patch tokens, over the limit of 15"):
        prepare_image(data, patch_size=16, max_pixels=BIG, max_tokens=15, scale=1.0)


def test_to_tensor_applies_imagenet_normalisation() -> None:
    img = Image.new("RGB", (3, 2), (255, 0, 128))
    t = to_tensor(img, IMAGENET_MEAN, IMAGENET_STD)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    expected = [
        (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        -IMAGENET_MEAN[1] / IMAGENET_STD[1],
        (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    torch.testing.assert_close(t[:, 1, 2], torch.tensor(expected))
