"""Image bytes -> normalised tensors (3, H, W), by the route measured fastest on the model's device.

A route is a decoder and a resizer (``Route``):

- ``pil+pil``: today's path, ``image.prepare_image`` then ``attention.to_tensor``; every format. The
  reference: the other routes are measured against it and fall back to it.
- ``torchvision+pil`` / ``torchvision+torch``: baseline and progressive JPEGs decoded on the host by
  ``torchvision.io.decode_jpeg`` (libjpeg-turbo, no PIL image in between), resized by PIL or by
  ``torch.nn.functional.interpolate`` (bilinear, ``antialias=True``) on the plan's device.
- ``device+torch`` (CUDA only): one ``torchvision.io.decode_jpeg(list, device=...)`` call per batch
  (nvJPEG on a GPU), then the resize on the GPU, where the forward pass is.

Every route reads the header first with ``image.open_image``: the allowed formats and the
decompression-bomb guard (``max_pixels``, from the header, before a pixel is decoded), with today's
4xx messages. An image a tensor decoder should not take (PNG, WebP and the other formats, CMYK or
Adobe-RGB JPEGs, multi-picture MPO files, a JPEG without its end marker, an unreadable EXIF block)
or that it fails on goes to PIL, one image at a time, which answers as today: a corrupt JPEG is the
same ``ImageError``. EXIF orientation is applied to the tensors as ``PIL.ImageOps.exif_transpose`` does.

How close the routes are (``tests/test_decoding.py`` holds them to it): torchvision's JPEG pixels
within ``DECODE_TOLERANCE`` levels of PIL's (both libjpeg-turbo: equal on our pinned wheels); the
torch resize within ``RESIZE_TOLERANCE`` level of PIL's bilinear (fixed-point arithmetic in PIL and in
torch's uint8 CPU kernel, float on a GPU), mean difference under ``RESIZE_MEAN_TOLERANCE``.

Which route serves is decided once per model load (``plan_decoder``), like the precisions
(``precision.py``): each candidate prepares a small synthetic JPEG, best of a few runs, and a route
replaces ``pil+pil`` only when at least ``MIN_SPEEDUP`` x faster; ``DecodePlan.summary`` is the line
logged with the figures. The pipeline then calls ``DecodePlan.prepare_batch`` for a batch's images.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import to_tensor
from .batching import group_indices
from .errors import RequestError
from .image import RESAMPLE, Size, checked_sizes, decode_image, open_image, prepare_image
from .precision import probe_seconds

logger = logging.getLogger(__name__)

PIL_DECODER, TORCHVISION_DECODER, DEVICE_DECODER = DECODERS = ("pil", "torchvision", "device")
PIL_RESIZER, TORCH_RESIZER = RESIZERS = ("pil", "torch")
EXIF_ORIENTATION = 0x0112  # the EXIF tag PIL's exif_transpose reads
TENSOR_MODES = ("RGB", "L")  # PIL's mode of the JPEGs a tensor decoder takes (YCbCr or grey); CMYK goes to PIL
JPEG_END = b"\xff\xd9"  # EOI: a JPEG without it is truncated, which only PIL answers as today
DECODE_TOLERANCE = 2  # max |torchvision - PIL| JPEG pixel, in levels of 255 (0 with our pinned wheels)
RESIZE_TOLERANCE = 1  # max |torch - PIL| bilinear pixel, in levels of 255
RESIZE_MEAN_TOLERANCE = 0.25  # mean |torch - PIL| bilinear pixel, in levels (measured: < 0.03 CPU uint8, < 0.22 float)
MIN_SPEEDUP = 1.1  # a route replaces pil+pil when its probe is at least this much faster
PROBE_SIZE: Size = (240, 320)  # the load-time probe's synthetic JPEG, (H, W)
PROBE_SHORT_SIDE = 224  # resized to this short side, as a request would
PROBE_BATCH = 4  # images per timed call (the device route decodes them in one call)
PROBE_REPEATS = 5

DeviceDecode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]  # encoded JPEGs (1-D uint8) -> (3, H, W) uint8


# ----------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class Route:
    """A decoder (``DECODERS``) and a resizer (``RESIZERS``); written ``decoder+resizer``."""

    decoder: str
    resizer: str

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS or self.resizer not in RESIZERS:
            raise ValueError(f"unknown decode route {self.name!r}; decoders {list(DECODERS)}, resizers {list(RESIZERS)}")
        if self.decoder == DEVICE_DECODER and self.resizer != TORCH_RESIZER:
            raise ValueError("the device decoder leaves pixels on the device: pair it with the torch resizer (device+torch)")

    @property
    def name(self) -> str:
        return f"{self.decoder}+{self.resizer}"

    @classmethod
    def parse(cls, text: str) -> Route:
        """``"torchvision+torch"`` -> Route("torchvision", "torch")."""
        decoder, plus, resizer = text.partition("+")
        if not plus:
            raise ValueError(f"a decode route is decoder+resizer (e.g. torchvision+torch), got {text!r}")
        return cls(decoder.strip(), resizer.strip())


REFERENCE = Route(PIL_DECODER, PIL_RESIZER)  # today's path
HOST_ROUTES: tuple[Route, ...] = (REFERENCE, Route(TORCHVISION_DECODER, PIL_RESIZER), Route(TORCHVISION_DECODER, TORCH_RESIZER))
CUDA_ROUTES: tuple[Route, ...] = (*HOST_ROUTES, Route(DEVICE_DECODER, TORCH_RESIZER))


def candidate_routes(device: torch.device) -> tuple[Route, ...]:
    """What ``plan_decoder`` measures on ``device``: the batched device decoder only where it is nvJPEG."""
    return CUDA_ROUTES if device.type == "cuda" else HOST_ROUTES


# ----------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class Header:
    """What the header says of an image, read without decoding it (``read_header``)."""

    format: str  # Pillow's name: JPEG, MPO, PNG, WEBP, ...
    mode: str  # Pillow's mode: RGB (YCbCr JPEGs too), L, CMYK, ...
    stored_size: Size  # (H, W) as stored, before EXIF orientation
    orientation: int | None  # EXIF orientation, 1 (as stored) to 8; None: the EXIF block is unreadable
    progressive: bool = False
    adobe_transform: int | None = None  # a JPEG's Adobe APP14 colour transform (0: stored as RGB, not YCbCr)
    complete: bool = True  # a JPEG ends with its end-of-image marker

    @property
    def size(self) -> Size:
        """(H, W) after EXIF orientation: 5 to 8 swap height and width."""
        h, w = self.stored_size
        return (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)

    def refusal(self) -> str | None:
        """Why a tensor decoder (torchvision or the device) should leave this image to PIL; None: it may take it."""
        if self.format != "JPEG":
            return f"{self.format} is not a JPEG" if self.format != "MPO" else "a multi-picture (MPO) JPEG"
        if self.mode not in TENSOR_MODES:
            return f"a {self.mode} JPEG"
        if self.adobe_transform == 0:
            return "an Adobe RGB-stored JPEG"
        if self.orientation is None:
            return "its EXIF block is unreadable"
        if not self.complete:
            return "no end-of-image marker (truncated?)"
        return None


def read_header(data: bytes, max_pixels: int) -> Header:
    """The header, with today's checks and messages (``image.open_image``: format, pixel limit)."""
    img = open_image(data, max_pixels)
    orientation: int | None
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF (struct.error, SyntaxError, ...): PIL decides, as today
        orientation = None
    fmt = img.format or ""
    complete = not fmt.endswith(("JPEG", "MPO")) or data.rstrip(b"\x00\r\n ").endswith(JPEG_END)
    adobe = img.info.get("adobe_transform")
    return Header(
        format=fmt,
        mode=img.mode,
        stored_size=(img.height, img.width),
        orientation=orientation,
        progressive=bool(img.info.get("progressive") or img.info.get("progression")),
        adobe_transform=int(adobe) if adobe is not None else None,
        complete=complete,
    )


# ----------------------------------------------------------------------------- pixels
def orient(pixels: torch.Tensor, orientation: int | None) -> torch.Tensor:
    """``(..., H, W)`` pixels as stored -> as shown, for an EXIF ``orientation`` (as ``ImageOps.exif_transpose``;
    values outside 2..8 leave them as they are)."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return pixels.flip(-1)
    if orientation == 3:  # ROTATE_180
        return pixels.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return pixels.flip(-2)
    if orientation == 5:  # TRANSPOSE: the main diagonal
        return pixels.transpose(-2, -1).contiguous()
    if orientation == 6:  # ROTATE_270: 90 degrees clockwise
        return pixels.rot90(-1, dims=(-2, -1)).contiguous()
    if orientation == 7:  # TRANSVERSE: the other diagonal
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90: 90 degrees counter-clockwise
        return pixels.rot90(1, dims=(-2, -1)).contiguous()
    return pixels


def pil_pixels(data: bytes, max_pixels: int) -> torch.Tensor:
    """Today's decoder (``image.decode_image``: oriented, RGB) as a (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(decode_image(data, max_pixels))).permute(2, 0, 1)  # (3, H, W)


def encoded(data: bytes) -> torch.Tensor:
    """Bytes as the 1-D uint8 tensor torchvision's decoders read (a copy: torch wants writable memory)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@functools.cache
def _torchvision_io() -> tuple[Callable[..., object], object] | None:
    """torchvision.io's ``decode_jpeg`` and ``ImageReadMode.RGB``, or None where its image library does not load."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # type: ignore[import-untyped]  # torchvision ships no type information
    except (ImportError, OSError, RuntimeError) as e:
        logger.warning("torchvision.io does not load (%s): images decode with PIL only", e)
        return None
    return decode_jpeg, ImageReadMode.RGB


def torchvision_available() -> bool:
    return _torchvision_io() is not None


def _decode_jpeg(inputs: torch.Tensor | list[torch.Tensor], device: torch.device) -> object:
    loaded = _torchvision_io()
    if loaded is None:
        raise RuntimeError("torchvision.io is not available: pip install torchvision (requirements-core.txt pins it)")
    decode_jpeg, rgb = loaded
    # torchvision 0.29 deprecates its image I/O in favour of torchcodec: the call works, the warning says so once per call.
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
    return decode_jpeg(inputs, mode=rgb, device=device)


def torchvision_pixels(data: bytes) -> torch.Tensor:
    """A JPEG decoded on the host by libjpeg-turbo (``torchvision.io.decode_jpeg``): (3, H, W) uint8, as stored
    (no EXIF orientation); ``RuntimeError`` where it cannot read it."""
    out = _decode_jpeg(encoded(data), torch.device("cpu"))
    assert isinstance(out, torch.Tensor)
    return out  # (3, H, W)


def batched_decode(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg(list, device=device)``: nvJPEG on a CUDA device (one batched call),
    libjpeg-turbo one by one on the CPU. Each (3, H, W) uint8 on ``device``, as stored; ``RuntimeError``
    for the whole batch if one image fails (torchvision returns no partial results)."""
    out = _decode_jpeg(inputs, device)
    assert isinstance(out, list)
    return out


@dataclass(frozen=True)
class Decoded:
    """One image's pixels (3, H, W) uint8, EXIF-oriented, RGB, and the decoder that made them."""

    pixels: torch.Tensor  # (3, H, W) uint8, on the host (pil, torchvision) or the plan's device (device)
    decoder: str


def resize_pixels(pixels: torch.Tensor, size: Size, uint8_kernel: bool | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, h, w) uint8, bilinear with antialiasing (as PIL's BILINEAR resize).

    On the CPU torch's uint8 kernel runs (fixed point, a port of PIL's); elsewhere (CUDA has no uint8
    kernel) float32, rounded back to uint8 as PIL rounds. ``uint8_kernel=False`` forces the float path."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    if uint8_kernel is None:
        uint8_kernel = pixels.device.type == "cpu"
    if uint8_kernel:
        return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)  # (B, 3, h, w)
    out = F.interpolate(pixels.float(), size=size, mode="bilinear", antialias=True, align_corners=False)  # (B, 3, h, w)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> float32, (x / 255 - mean) / std per channel: ``attention.to_tensor``'s arithmetic."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).reshape(shape)
    return pixels.float().div_(255.0).sub_(mean_t).div_(std_t)  # in place: one float32 copy, not three


# ----------------------------------------------------------------------------- preparing a batch
@dataclass(frozen=True)
class Geometry:
    """How one request's image is resized and limited: ``image.prepare_image``'s arguments but the pixel limit."""

    patch_size: int
    max_tokens: int
    short_side: int | None = None
    scale: float | None = None
    size: Size | None = None

    def sizes(self, input_size: Size) -> tuple[Size, Size]:
        """(resized, cropped) for a decoded ``input_size``; today's 4xx when a limit is broken."""
        return checked_sizes(
            input_size, patch_size=self.patch_size, max_tokens=self.max_tokens, short_side=self.short_side, scale=self.scale, size=self.size
        )


@dataclass(frozen=True)
class PreparedTensor:
    """One image ready for the network, and the sizes it went through (all (H, W)), as ``image.PreparedImage``."""

    tensor: torch.Tensor  # (3, H, W) float32, normalised; on the plan's device for the torch resizer, else the host
    input_size: Size  # decoded, after EXIF orientation
    resized_size: Size  # after resize
    image_size: Size  # after the crop to a multiple of the patch size
    decoder: str  # the decoder that ran (pil where a tensor decoder left the image to it)
    resizer: str


@dataclass(frozen=True)
class DecodePlan:
    """The load-time decision: which route prepares images for this model's device, and the figures."""

    device: torch.device
    route: Route = REFERENCE
    measured: dict[str, float] = field(default_factory=dict)  # route name -> seconds per image in the probe
    reason: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # route name -> why it was not measured or not valid
    device_decode: DeviceDecode = field(default=batched_decode, compare=False, repr=False)  # tests inject a fake

    def summary(self) -> str:
        """One line: the figures of every route measured, and the choice."""
        base = self.measured.get(REFERENCE.name)
        parts = []
        for name, seconds in self.measured.items():
            ratio = f" ({base / seconds:.2f}x)" if base and name != REFERENCE.name and math.isfinite(seconds) else ""
            parts.append(f"{name} {seconds * 1000:.2f} ms/image{ratio}")
        parts += [f"{name}: {why}" for name, why in self.notes.items()]
        figures = f": {', '.join(parts)}" if parts else ""
        return f"decode on {self.device}{figures} -> {self.route.name} ({self.reason or 'configured'})"

    # ---- decoding
    def decode_batch(self, datas: Sequence[bytes], max_pixels: int) -> list[Decoded | RequestError]:
        """Each image's pixels (3, H, W) uint8, EXIF-oriented, or its ``RequestError`` (today's): by the
        route's decoder where it may take the image, else (or where it fails) by PIL."""
        results: list[Decoded | RequestError | None] = [None] * len(datas)
        headers: dict[int, Header] = {}
        for i, data in enumerate(datas):
            try:
                headers[i] = read_header(data, max_pixels)  # the bomb guard: before any decoding
            except RequestError as e:
                results[i] = e
        decoder = self.route.decoder
        if decoder != PIL_DECODER and not torchvision_available():
            decoder = PIL_DECODER
        takes = {i: h for i, h in headers.items() if decoder != PIL_DECODER and h.refusal() is None}
        if decoder == DEVICE_DECODER and takes:
            for i, pixels in self._on_device({i: datas[i] for i in takes}, takes).items():
                results[i] = Decoded(orient(pixels, takes[i].orientation), DEVICE_DECODER)
        for i, header in headers.items():
            if results[i] is not None:
                continue
            if i in takes and decoder == TORCHVISION_DECODER:
                try:
                    pixels = torchvision_pixels(datas[i])
                except RuntimeError as e:
                    logger.debug("torchvision could not decode image %d (%s): PIL decodes it", i, e)
                else:
                    if tuple(pixels.shape) == (3, *header.stored_size):
                        results[i] = Decoded(orient(pixels, header.orientation), TORCHVISION_DECODER)
                        continue
            try:
                results[i] = Decoded(pil_pixels(datas[i], max_pixels), PIL_DECODER)
            except RequestError as e:
                results[i] = e
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]  # every slot is filled above

    def _on_device(self, datas: dict[int, bytes], headers: dict[int, Header]) -> dict[int, torch.Tensor]:
        """The device decoder's pixels, as stored, of the images it could decode: one call for all, and
        where that fails (torchvision answers all or nothing) one call per image; the others are left out."""
        indices = list(datas)
        inputs = [encoded(datas[i]) for i in indices]
        try:
            out = self.device_decode(inputs, self.device)
            if len(out) != len(inputs):
                raise RuntimeError(f"{len(out)} images decoded of {len(inputs)}")
            batch = dict(zip(indices, out, strict=True))
        except RuntimeError as e:
            logger.info("batched decode of %d JPEGs on %s failed (%s): one at a time", len(inputs), self.device, e)
            batch = {}
            for i, one in zip(indices, inputs, strict=True):
                try:
                    (batch[i],) = self.device_decode([one], self.device)
                except (RuntimeError, ValueError) as single:
                    logger.info("image %d does not decode on %s (%s): PIL decodes it", i, self.device, single)
        return {i: pixels for i, pixels in batch.items() if tuple(pixels.shape) == (3, *headers[i].stored_size)}

    # ---- preparing
    def prepare_batch(
        self, datas: Sequence[bytes], geometries: Sequence[Geometry], *, max_pixels: int, mean: Sequence[float], std: Sequence[float]
    ) -> list[PreparedTensor | RequestError]:
        """Each image decoded, resized, cropped and normalised as ``image.prepare_image`` + ``attention.to_tensor``
        do, or its ``RequestError`` (the same 4xx, in the same order of checks); in the batch's order."""
        if len(geometries) != len(datas):
            raise ValueError(f"{len(datas)} images and {len(geometries)} geometries: give one Geometry per image")
        if self.route == REFERENCE or not torchvision_available():
            return [self._reference(data, geometry, max_pixels, mean, std) for data, geometry in zip(datas, geometries, strict=True)]
        decoded = self.decode_batch(datas, max_pixels)
        results: list[PreparedTensor | RequestError | None] = [None] * len(datas)
        sized: dict[int, tuple[Decoded, Size, Size]] = {}
        for i, item in enumerate(decoded):
            if isinstance(item, RequestError):
                results[i] = item
                continue
            try:
                resized, cropped = geometries[i].sizes((int(item.pixels.shape[1]), int(item.pixels.shape[2])))
            except RequestError as e:
                results[i] = e
                continue
            sized[i] = (item, resized, cropped)
        if self.route.resizer == PIL_RESIZER:
            for i, (item, resized, cropped) in sized.items():
                results[i] = self._pil_resized(item, resized, cropped, mean, std)
        else:
            order = list(sized)
            keys = [(tuple(sized[i][0].pixels.shape[1:]), sized[i][1]) for i in order]
            for group in group_indices(keys):  # one batched resize per (input size, output size)
                members = [order[k] for k in group.indices]
                batch = torch.stack([sized[i][0].pixels.to(self.device) for i in members])  # (B, 3, H, W) uint8, PIL's on the host too
                resized_batch = resize_pixels(batch, sized[members[0]][1])  # (B, 3, h, w) uint8
                for n, i in enumerate(members):
                    item, resized, (ch, cw) = sized[i]
                    tensor = normalise(resized_batch[n, :, :ch, :cw], mean, std).contiguous()  # (3, ch, cw)
                    input_size = (int(item.pixels.shape[1]), int(item.pixels.shape[2]))
                    results[i] = PreparedTensor(tensor, input_size, resized, (ch, cw), item.decoder, TORCH_RESIZER)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]  # every slot is filled above

    @staticmethod
    def _reference(
        data: bytes, geometry: Geometry, max_pixels: int, mean: Sequence[float], std: Sequence[float]
    ) -> PreparedTensor | RequestError:
        try:
            image = prepare_image(
                data,
                patch_size=geometry.patch_size,
                max_pixels=max_pixels,
                max_tokens=geometry.max_tokens,
                short_side=geometry.short_side,
                scale=geometry.scale,
                size=geometry.size,
            )
        except RequestError as e:
            return e
        tensor = to_tensor(image.image, tuple(mean), tuple(std))  # (3, H, W)
        return PreparedTensor(tensor, image.input_size, image.resized_size, image.image_size, PIL_DECODER, PIL_RESIZER)

    @staticmethod
    def _pil_resized(item: Decoded, resized: Size, cropped: Size, mean: Sequence[float], std: Sequence[float]) -> PreparedTensor:
        img = Image.fromarray(item.pixels.cpu().permute(1, 2, 0).contiguous().numpy())  # (H, W, 3) uint8
        input_size = (img.height, img.width)
        if resized != input_size:
            img = img.resize((resized[1], resized[0]), RESAMPLE)
        if cropped != resized:
            img = img.crop((0, 0, cropped[1], cropped[0]))
        return PreparedTensor(to_tensor(img, tuple(mean), tuple(std)), input_size, resized, cropped, item.decoder, PIL_RESIZER)


# ----------------------------------------------------------------------------- choosing by measurement
def probe_jpeg(size: Size = PROBE_SIZE, quality: int = 90) -> bytes:
    """A deterministic photo-like JPEG of ``size`` (H, W): smooth colour gradients and mild noise."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 8.0, (h, w, 3)).astype(np.float32)
    rgb = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + y) / 17)], axis=-1) + noise
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def measure_routes(
    device: torch.device, routes: Sequence[Route], *, batch: int = PROBE_BATCH, repeats: int = PROBE_REPEATS
) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per image of each route preparing ``batch`` copies of ``probe_jpeg`` (best of ``repeats``,
    ``precision.probe_seconds``), tensors on ``device`` as the forward pass wants them; and, per route
    that could not run as itself (its decoder left the images to PIL, or it failed), why."""
    data = [probe_jpeg()] * batch
    geometry = [Geometry(patch_size=8, max_tokens=10**9, short_side=PROBE_SHORT_SIDE)] * batch
    limit = PROBE_SIZE[0] * PROBE_SIZE[1]
    seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    for route in routes:
        plan = DecodePlan(device, route)

        def run(plan: DecodePlan = plan) -> list[PreparedTensor | RequestError]:
            prepared = plan.prepare_batch(data, geometry, max_pixels=limit, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
            for p in prepared:  # where the forward pass reads them (a no-op for the device's own)
                if isinstance(p, PreparedTensor):
                    p.tensor.to(device)
            return prepared

        try:
            ran = {p.decoder if isinstance(p, PreparedTensor) else f"an error ({p})" for p in run()}
        except RuntimeError as e:
            notes[route.name] = f"failed ({e})"
            continue
        if ran != {route.decoder}:
            notes[route.name] = f"not measured: its images were decoded by {', '.join(sorted(ran))}"
            continue
        seconds[route.name] = probe_seconds(run, device, repeats) / batch
    return seconds, notes


def choose_route(seconds: dict[str, float]) -> tuple[Route, str]:
    """Pure decision from the probe: the fastest route if it beats pil+pil by ``MIN_SPEEDUP``, else pil+pil; and why."""
    base = seconds.get(REFERENCE.name)
    if not seconds or base is None:
        return REFERENCE, "pil+pil not measured: today's path"
    name = min(seconds, key=lambda n: seconds[n])
    ratio = base / seconds[name]
    if name == REFERENCE.name or ratio < MIN_SPEEDUP:
        return REFERENCE, f"no route {MIN_SPEEDUP}x faster than pil+pil (best {name} at {ratio:.2f}x)"
    return Route.parse(name), f"{ratio:.2f}x pil+pil in the probe"


def plan_decoder(
    device: torch.device | str,
    route: Route | str | None = None,
    *,
    measure: Callable[[torch.device, Sequence[Route]], tuple[dict[str, float], dict[str, str]]] = measure_routes,
    device_decode: DeviceDecode = batched_decode,
) -> DecodePlan:
    """Decide once per model load how images are prepared for ``device``; logs the figures and the choice.

    ``route`` (``"torchvision+torch"``, ...): that one, unmeasured (an operator's or a test's choice).
    Otherwise each of ``candidate_routes(device)`` prepares a synthetic JPEG (``measure_routes``) and
    ``choose_route`` picks. Without torchvision's image library: pil+pil."""
    device = torch.device(device)
    if route is not None:
        chosen = Route.parse(route) if isinstance(route, str) else route
        if chosen.decoder == DEVICE_DECODER and device.type != "cuda":
            logger.warning("decode route %s on %s: torchvision decodes on the host there, not with nvJPEG", chosen.name, device)
        plan = DecodePlan(device, chosen, reason="configured", device_decode=device_decode)
    elif not torchvision_available():
        plan = DecodePlan(device, REFERENCE, reason="torchvision.io unavailable", device_decode=device_decode)
    else:
        seconds, notes = measure(device, candidate_routes(device))
        chosen, why = choose_route(seconds)
        plan = DecodePlan(device, chosen, seconds, why, notes, device_decode)
    logger.info("%s", plan.summary())
    return plan
