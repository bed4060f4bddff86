"""Decoding routes (vitscope/decoding.py) and a batch's flow (vitscope/batching.py): every route
answers like today's PIL path (the same pixels within stated tolerances, the same 4xx), falls back to
PIL per image, keeps the bomb guard before decoding; grouping by size and the encode pool keep order."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bench.cli import SECTIONS
from bench.decode import PREPARE, Case, Decode
from bench.section import Run
from bench.timing import Machine
from testkit.checkpoints import encode, random_rgb, smooth_rgb
from vitscope import decoding
from vitscope.attention import to_tensor
from vitscope.batching import EncodePool, Group, group_by_size, group_indices, in_order, stack_group
from vitscope.decoding import (
    CUDA_ROUTES,
    DECODE_TOLERANCE,
    DEVICE_DECODER,
    HOST_ROUTES,
    MIN_SPEEDUP,
    REFERENCE,
    RESIZE_MEAN_TOLERANCE,
    RESIZE_TOLERANCE,
    Decoded,
    DecodePlan,
    Geometry,
    PreparedTensor,
    Route,
    choose_route,
    orient,
    pil_pixels,
    plan_decoder,
    read_header,
    resize_pixels,
    torchvision_pixels,
)
from vitscope.errors import ImageError, PayloadTooLarge, RequestError
from vitscope.image import decode_image, prepare_image
from vitscope.model.variants import IMAGENET_MEAN, IMAGENET_STD
from vitscope.precision import PrecisionPlan

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "data" / "samples").glob("*.jpg"))
BIG = 10**9
CPU = torch.device("cpu")
TV = Route("torchvision", "torch")
DEVICE = Route(DEVICE_DECODER, "torch")  # on the CPU: torchvision's batched decode_jpeg(list, device="cpu")
SMOOTH = smooth_rgb(48, 64)
JPEG = encode(SMOOTH, "JPEG", quality=90)
NORMALISE = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG, the device resize): none here")


def rotated(orientation: int) -> bytes:
    """A JPEG stored 20 wide x 10 high, white block at the stored top-left, with EXIF ``orientation``."""
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def levels(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|a - b| of two (3, H, W) uint8 images, in levels of 255."""
    return (a.cpu().to(torch.int16) - b.cpu().to(torch.int16)).abs().numpy()


def pixels_of(prepared: PreparedTensor) -> torch.Tensor:
    """A prepared tensor back to its (3, H, W) levels (undoing the normalisation), float."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    return (prepared.tensor.cpu() * std + mean) * 255.0


def prepare(route: Route, datas: list[bytes], geometry: Geometry | None = None, **plan: object) -> list[PreparedTensor | RequestError]:
    geometry = geometry or Geometry(patch_size=8, max_tokens=BIG, short_side=32)
    return DecodePlan(CPU, route, **plan).prepare_batch(datas, [geometry] * len(datas), max_pixels=BIG, **NORMALISE)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the host decoders agree
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_torchvision_decodes_the_samples_as_pil_does(path: Path) -> None:
    """libjpeg-turbo both: equal here; the stated tolerance allows another IDCT build."""
    data = path.read_bytes()
    diff = levels(torchvision_pixels(data), pil_pixels(data, BIG))
    assert diff.max() <= DECODE_TOLERANCE and diff.mean() < 0.5, (diff.max(), diff.mean())


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 2, "quality": 50}],
    ids=["baseline", "progressive", "444", "420"],
)
def test_torchvision_takes_baseline_and_progressive_jpegs(kwargs: dict[str, object]) -> None:
    data = encode(random_rgb(40, 56), "JPEG", **kwargs)
    (decoded,) = DecodePlan(CPU, TV).decode_batch([data], BIG)
    assert isinstance(decoded, Decoded) and decoded.decoder == "torchvision"
    assert levels(decoded.pixels, pil_pixels(data, BIG)).max() <= DECODE_TOLERANCE


def test_grey_jpegs_come_out_rgb_on_every_route() -> None:
    data = encode(Image.fromarray(SMOOTH[..., 0]), "JPEG")
    for route in (TV, DEVICE):
        (decoded,) = DecodePlan(CPU, route).decode_batch([data], BIG)
        assert isinstance(decoded, Decoded) and decoded.decoder != "pil" and decoded.pixels.shape == (3, 48, 64)
        assert levels(decoded.pixels, pil_pixels(data, BIG)).max() <= DECODE_TOLERANCE


# ----------------------------------------------------------------------------- the resize
@pytest.mark.parametrize("uint8_kernel", [True, False], ids=["cpu-uint8", "float-as-on-gpu"])
def test_torch_resize_is_pils_bilinear_within_one_level(uint8_kernel: bool) -> None:
    """Measured on the samples (512x512, 300x451, 400x600), down, up and by a pixel: max 1 level either
    kernel; mean < 0.03 (uint8, a port of PIL's fixed point) and < 0.22 (float, what CUDA runs)."""
    for path in SAMPLES:
        img = decode_image(path.read_bytes(), BIG)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        for size in ((480, 480), (224, 224), (img.height * 2 // 3, img.width * 2 // 3), (700, 900), (img.height - 1, img.width - 3)):
            ours = resize_pixels(x, size, uint8_kernel=uint8_kernel)[0]  # (3, h, w)
            pil = torch.from_numpy(np.array(img.resize(size[::-1], Image.Resampling.BILINEAR))).permute(2, 0, 1)
            diff = levels(ours, pil)
            assert diff.max() <= RESIZE_TOLERANCE and diff.mean() < RESIZE_MEAN_TOLERANCE, (path.stem, size, diff.max(), diff.mean())


def test_reference_route_is_todays_path_exactly() -> None:
    geometry = Geometry(patch_size=16, max_tokens=BIG, short_side=224)
    for path in SAMPLES:
        data = path.read_bytes()
        (ours,) = prepare(REFERENCE, [data], geometry)
        today = prepare_image(data, patch_size=16, max_pixels=BIG, max_tokens=BIG, short_side=224)
        assert isinstance(ours, PreparedTensor) and (ours.decoder, ours.resizer) == ("pil", "pil")
        assert torch.equal(ours.tensor, to_tensor(today.image, IMAGENET_MEAN, IMAGENET_STD))
        assert (ours.input_size, ours.resized_size, ours.image_size) == (today.input_size, today.resized_size, today.image_size)


@pytest.mark.parametrize("route", [*HOST_ROUTES[1:], DEVICE], ids=lambda r: r.name)
def test_every_route_prepares_the_samples_as_today_within_tolerance(route: Route) -> None:
    """Same sizes; pixels within the decode tolerance (PIL resizer) or that plus the resize's (torch)."""
    geometry = Geometry(patch_size=16, max_tokens=BIG, short_side=224)
    datas = [path.read_bytes() for path in SAMPLES]
    reference = prepare(REFERENCE, datas, geometry)
    tolerance = DECODE_TOLERANCE + (RESIZE_TOLERANCE if route.resizer == "torch" else 0)
    for ours, today in zip(prepare(route, datas, geometry), reference, strict=True):
        assert isinstance(ours, PreparedTensor) and isinstance(today, PreparedTensor)
        assert ours.decoder == route.decoder and ours.tensor.dtype == torch.float32 and ours.tensor.is_contiguous()
        assert (ours.input_size, ours.resized_size, ours.image_size) == (today.input_size, today.resized_size, today.image_size)
        diff = (pixels_of(ours) - pixels_of(today)).abs()
        assert diff.max() <= tolerance + 1e-3 and diff.mean() < RESIZE_MEAN_TOLERANCE


# ----------------------------------------------------------------------------- fallbacks to PIL
def cmyk() -> bytes:
    return encode(Image.fromarray(SMOOTH).convert("CMYK"), "JPEG")


def mpo() -> bytes:
    return encode(Image.fromarray(SMOOTH), "MPO", save_all=True, append_images=[Image.fromarray(255 - SMOOTH)])


FALLBACKS: dict[str, Callable[[], bytes]] = {
    "png": lambda: encode(random_rgb(48, 64), "PNG"),
    "webp": lambda: encode(SMOOTH, "WEBP"),
    "gif": lambda: encode(SMOOTH, "GIF"),
    "cmyk-jpeg": cmyk,
    "mpo": mpo,
    "adobe-rgb-jpeg": lambda: encode(Image.fromarray(SMOOTH), "JPEG", keep_rgb=True),
}


@pytest.mark.parametrize("route", [TV, DEVICE], ids=lambda r: r.name)
@pytest.mark.parametrize("kind", list(FALLBACKS))
def test_what_a_tensor_decoder_does_not_take_goes_to_pil(route: Route, kind: str) -> None:
    data = FALLBACKS[kind]()
    assert read_header(data, BIG).refusal() is not None
    (decoded,) = DecodePlan(CPU, route, device_decode=refuse_all).decode_batch([data], BIG)
    assert isinstance(decoded, Decoded) and decoded.decoder == "pil"
    assert torch.equal(decoded.pixels, pil_pixels(data, BIG))


def refuse_all(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    raise AssertionError("the device decoder was handed an image its header rules out")


SCAN = encode(random_rgb(64, 96), "JPEG", quality=90)  # mostly entropy-coded scan
MID = (SCAN.index(b"\xff\xda") + len(SCAN)) // 2  # halfway through the scan, past the header
CORRUPT: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "not-an-image": lambda: b"hello world",
    "header-only": lambda: encode(random_rgb(64, 64), "JPEG")[:300],
    "two-thirds": lambda: JPEG[: len(JPEG) * 2 // 3],
    "no-end-marker": lambda: JPEG[:-2],
    "scan-cut-at-eoi": lambda: SCAN[:MID] + b"\xff\xd9",  # PIL reads past it (grey), so do the others
    "scan-zeroed": lambda: SCAN[:MID] + bytes(64) + SCAN[MID + 64 :],
    "scan-bogus-marker": lambda: SCAN[:MID] + b"\xff\xc4\x00\x02" + SCAN[MID:],
    "scan-ff-run": lambda: SCAN[:MID] + b"\xff" * 40 + SCAN[MID + 40 :],  # PIL: "broken data stream"
    "unsupported": lambda: encode(SMOOTH, "PPM"),
}


@pytest.mark.parametrize("route", [*HOST_ROUTES, DEVICE], ids=lambda r: r.name)
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_image_is_todays_error_on_every_route(route: Route, kind: str) -> None:
    """Each route answers what PIL answers: the same error and message, or (a scan PIL reads past) PIL's pixels."""
    data = CORRUPT[kind]()
    try:
        expected: torch.Tensor | RequestError = pil_pixels(data, BIG)
    except RequestError as e:
        expected = e
    (ours,) = DecodePlan(CPU, route).decode_batch([data], BIG)
    if isinstance(expected, RequestError):
        assert isinstance(ours, RequestError) and type(ours) is type(expected) and str(ours) == str(expected) and ours.status == 400
    else:
        assert isinstance(ours, Decoded) and levels(ours.pixels, expected).max() <= DECODE_TOLERANCE


def test_mutated_jpegs_answer_as_pil_does_on_every_route() -> None:
    """A few random bytes changed anywhere (header or scan), 60 times: each tensor route answers PIL's
    error with PIL's message, or pixels within the decode tolerance of PIL's (400 such cases checked so)."""
    rng = np.random.default_rng(1)
    plans = [DecodePlan(CPU, route) for route in (TV, DEVICE)]
    for _ in range(60):
        mutated = bytearray(SCAN)
        for _ in range(int(rng.integers(1, 6))):
            mutated[int(rng.integers(2, len(mutated)))] = int(rng.integers(0, 256))
        data = bytes(mutated)
        try:
            expected: torch.Tensor | RequestError = pil_pixels(data, BIG)
        except RequestError as e:
            expected = e
        for plan in plans:
            (ours,) = plan.decode_batch([data], BIG)
            if isinstance(expected, RequestError):
                assert isinstance(ours, RequestError) and str(ours) == str(expected)
            else:
                assert isinstance(ours, Decoded) and ours.pixels.shape == expected.shape
                assert levels(ours.pixels, expected).max() <= DECODE_TOLERANCE


@pytest.mark.parametrize("route", [*HOST_ROUTES, DEVICE], ids=lambda r: r.name)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpegs_are_oriented_on_every_route(route: Route, orientation: int) -> None:
    data = rotated(orientation)
    (decoded,) = DecodePlan(CPU, route).decode_batch([data], BIG)
    assert isinstance(decoded, Decoded) and decoded.decoder == route.decoder
    assert levels(decoded.pixels, pil_pixels(data, BIG)).max() <= DECODE_TOLERANCE
    assert read_header(data, BIG).size == tuple(decoded.pixels.shape[1:])


@pytest.mark.parametrize("orientation", range(10))
def test_orient_is_pils_exif_transpose(orientation: int) -> None:
    arr = random_rgb(5, 7)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.array(ImageOps.exif_transpose(img))
    ours = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, expected)


def test_unreadable_exif_goes_to_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the header's EXIF block does not parse, PIL (exif_transpose) decides, as today."""

    def unreadable(self: Image.Image) -> Image.Exif:
        raise SyntaxError("not a TIFF file (header b'\\x00\\x00' not valid)")

    monkeypatch.setattr(Image.Image, "getexif", unreadable)
    assert read_header(JPEG, BIG).orientation is None
    plan = DecodePlan(CPU, DEVICE, device_decode=refuse_all)
    (decoded,) = plan.decode_batch([JPEG], BIG)
    with pytest.raises(ImageError) as today:  # exif_transpose reads the same block
        decode_image(JPEG, BIG)
    assert isinstance(decoded, ImageError) and str(decoded) == str(today.value)


# ----------------------------------------------------------------------------- the limits
@pytest.mark.parametrize("route", [*HOST_ROUTES, DEVICE], ids=lambda r: r.name)
def test_the_bomb_guard_runs_before_any_decoder(route: Route, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> torch.Tensor:
        raise AssertionError("decoded an image over max_pixels")

    monkeypatch.setattr(decoding, "torchvision_pixels", never)
    monkeypatch.setattr(decoding, "pil_pixels", never)
    plan = DecodePlan(CPU, route, device_decode=never)  # type: ignore[arg-type]
    (error,) = plan.decode_batch([JPEG], 1000)
    with pytest.raises(PayloadTooLarge) as today:
        decode_image(JPEG, 1000)
    assert isinstance(error, PayloadTooLarge) and str(error) == str(today.value) and error.status == 413
    assert "48x64 = 3072 pixels, over the limit of 1000 pixels (max_pixels)" in str(error)


@pytest.mark.parametrize("route", [*HOST_ROUTES, DEVICE], ids=lambda r: r.name)
def test_size_limits_are_todays_messages_in_todays_order(route: Route) -> None:
    small = Geometry(patch_size=16, max_tokens=BIG, short_side=10)
    tokens = Geometry(patch_size=16, max_tokens=5, scale=1.0)
    for geometry in (small, tokens):
        kwargs = {"short_side": geometry.short_side, "scale": geometry.scale}
        with pytest.raises(RequestError) as today:
            prepare_image(JPEG, patch_size=16, max_pixels=BIG, max_tokens=geometry.max_tokens, **kwargs)  # type: ignore[arg-type]
        (ours,) = prepare(route, [JPEG], geometry)
        assert type(ours) is type(today.value) and str(ours) == str(today.value)
    (corrupt,) = prepare(route, [JPEG[:300]], tokens)  # decode errors come first, as today
    assert isinstance(corrupt, ImageError) and "truncated or corrupt" in str(corrupt)


# ----------------------------------------------------------------------------- the device path, on CPU tensors
def test_a_mixed_batch_on_the_device_route_keeps_its_order() -> None:
    """torchvision's batched decode_jpeg(list, device="cpu") standing in for nvJPEG."""
    datas = [JPEG, encode(random_rgb(48, 64), "PNG"), cmyk(), JPEG[:300], rotated(6), b""]
    decoded = DecodePlan(CPU, DEVICE).decode_batch(datas, BIG)
    kinds = [d.decoder if isinstance(d, Decoded) else type(d).__name__ for d in decoded]
    assert kinds == ["device", "pil", "pil", "ImageError", "device", "ImageError"]
    assert [tuple(d.pixels.shape) for d in decoded if isinstance(d, Decoded)] == [(3, 48, 64)] * 3 + [(3, 20, 10)]


class FakeDevice:
    """A device decoder that fails on the inputs ``bad`` says, as nvJPEG does: the whole call fails."""

    def __init__(self, bad: Callable[[torch.Tensor], bool], shape: tuple[int, ...] | None = None) -> None:
        self.bad, self.shape, self.calls = bad, shape, []  # type: ignore[var-annotated]

    def __call__(self, inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.calls.append(len(inputs))
        if any(self.bad(x) for x in inputs):
            raise RuntimeError("nvjpegDecodeBatched: NVJPEG_STATUS_BAD_JPEG")
        return [
            torchvision_pixels(x.numpy().tobytes()) if self.shape is None else torch.zeros(self.shape, dtype=torch.uint8) for x in inputs
        ]


def test_a_failed_batch_is_retried_one_by_one_then_left_to_pil() -> None:
    progressive = encode(SMOOTH, "JPEG", progressive=True)
    fake = FakeDevice(bad=lambda x: x.numel() == len(progressive))  # say this card has no progressive decoder
    datas = [JPEG, progressive, rotated(8), progressive]
    decoded = DecodePlan(CPU, DEVICE, device_decode=fake).decode_batch(datas, BIG)
    assert [d.decoder for d in decoded] == ["device", "pil", "device", "pil"]  # type: ignore[union-attr]
    assert fake.calls == [4, 1, 1, 1, 1]  # the batch, then each image alone
    for data, d in zip(datas, decoded, strict=True):
        assert isinstance(d, Decoded) and levels(d.pixels, pil_pixels(data, BIG)).max() <= DECODE_TOLERANCE


def test_device_pixels_of_the_wrong_size_are_left_to_pil() -> None:
    fake = FakeDevice(bad=lambda x: False, shape=(3, 8, 8))
    (decoded,) = DecodePlan(CPU, DEVICE, device_decode=fake).decode_batch([JPEG], BIG)
    assert isinstance(decoded, Decoded) and decoded.decoder == "pil" and fake.calls == [1]


def test_prepare_batch_resizes_alike_images_together_and_answers_in_order() -> None:
    big = encode(smooth_rgb(96, 128), "JPEG")
    datas = [JPEG, big, JPEG, b"nope", big]
    geometry = Geometry(patch_size=8, max_tokens=BIG, scale=0.5)
    out = prepare(DEVICE, datas, geometry)
    assert [o.image_size if isinstance(o, PreparedTensor) else None for o in out] == [(24, 32), (48, 64), (24, 32), None, (48, 64)]
    assert isinstance(out[3], ImageError) and torch.equal(out[0].tensor, out[2].tensor)  # type: ignore[union-attr]


def test_routes_and_their_names() -> None:
    assert Route.parse("torchvision+torch") == TV and TV.name == "torchvision+torch"
    assert [r.name for r in CUDA_ROUTES] == ["pil+pil", "torchvision+pil", "torchvision+torch", "device+torch"]
    with pytest.raises(ValueError, match="pair it with the torch resizer"):
        Route("device", "pil")
    with pytest.raises(ValueError, match="unknown decode route 'nvjpeg\\+torch'"):
        Route.parse("nvjpeg+torch")
    with pytest.raises(ValueError, match="decoder\\+resizer"):
        Route.parse("pil")


# ----------------------------------------------------------------------------- choosing by measurement
def test_choose_route_needs_a_clear_win_over_pil() -> None:
    assert choose_route({"pil+pil": 2.0e-3, "torchvision+torch": 1.0e-3})[0] == TV
    route, why = choose_route({"pil+pil": 2.0e-3, "torchvision+torch": 2.0e-3 / (MIN_SPEEDUP * 0.99)})
    assert route == REFERENCE and "no route 1.1x faster" in why
    assert choose_route({})[0] == REFERENCE and choose_route({"torchvision+torch": 1e-3})[0] == REFERENCE


def test_plan_decoder_measures_records_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def measure(device: torch.device, routes: object) -> tuple[dict[str, float], dict[str, str]]:
        return {"pil+pil": 3.0e-3, "torchvision+pil": 2.5e-3, "torchvision+torch": 1.5e-3}, {}

    with caplog.at_level("INFO", logger="vitscope.decoding"):
        plan = plan_decoder("cpu", measure=measure)
    assert plan.route == TV and plan.measured["torchvision+torch"] == 1.5e-3
    line = "decode on cpu: pil+pil 3.00 ms/image, torchvision+pil 2.50 ms/image (1.20x), torchvision+torch 1.50 ms/image (2.00x)"
    assert plan.summary() == f"{line} -> torchvision+torch (2.00x pil+pil in the probe)" and plan.summary() in caplog.text
    assert plan_decoder("cpu", "torchvision+pil").route == Route("torchvision", "pil")


def test_plan_decoder_really_measures_the_host_routes() -> None:
    plan = decoding.plan_decoder(CPU, measure=partial(decoding.measure_routes, batch=2, repeats=1))
    assert set(plan.measured) == {r.name for r in HOST_ROUTES} and all(s > 0 for s in plan.measured.values())
    assert plan.route in HOST_ROUTES and plan.route.name in plan.summary()


# ----------------------------------------------------------------------------- grouping by size
def test_group_by_size_keeps_each_requests_index() -> None:
    sizes = [(16, 24), (8, 8), (16, 24), (8, 16), (8, 8)]
    tensors = [torch.full((3, h, w), float(i)) for i, (h, w) in enumerate(sizes)]
    groups = group_by_size(tensors)
    assert groups == [Group((16, 24), (0, 2)), Group((8, 8), (1, 4)), Group((8, 16), (3,))]
    batches = [stack_group(tensors, g) for g in groups]
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 24), (2, 3, 8, 8), (1, 3, 8, 16)]  # nothing padded
    outputs = [[float(x[0, 0, 0]) for x in batch] for batch in batches]  # a "forward pass" per group
    assert in_order(groups, outputs, len(tensors)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert group_indices([]) == [] and in_order([], [], 0) == []


def test_in_order_refuses_what_does_not_add_up() -> None:
    groups = [Group("a", (0, 2)), Group("b", (1,))]
    with pytest.raises(ValueError, match="has 2 images but 1 outputs"):
        in_order(groups, [[1], [2]], 3)
    with pytest.raises(ValueError, match="no group holds the images \\[3\\]"):
        in_order(groups, [[1, 2], [3]], 4)
    with pytest.raises(ValueError, match="in two groups"):
        in_order([Group("a", (0,)), Group("b", (0,))], [[1], [2]], 1)
    with pytest.raises(ValueError, match="one list per group"):
        in_order(groups, [[1, 2]], 3)


# ----------------------------------------------------------------------------- the encode pool
def test_the_encode_pool_answers_in_submission_order() -> None:
    def encode_after(i: int, delay: float) -> str:
        time.sleep(delay)
        return f"answer {i}"

    delays = [0.03, 0.0, 0.02, 0.0, 0.01, 0.0]  # later submissions finish first
    with EncodePool[str](workers=3) as pool:
        tickets = pool.submit_all(partial(encode_after, i, d) for i, d in enumerate(delays))
        assert tickets == list(range(6))
        assert pool.drain() == [f"answer {i}" for i in range(6)] and pool.pending == 0
        pool.submit(lambda: "next batch")
        assert pool.drain(timeout=5) == ["next batch"]


def test_an_encoder_error_is_its_own_answer() -> None:
    def fail(error: Exception) -> str:
        raise error

    too_big = PayloadTooLarge("response over the limit")
    with EncodePool[str](workers=2) as pool:
        pool.submit(lambda: "a")
        pool.submit(partial(fail, too_big))
        pool.submit(lambda: "c")
        pool.submit(partial(fail, KeyError("maps")))
        pool.submit(lambda: "e")
        answers = pool.drain()
    assert answers[0::2] == ["a", "c", "e"] and answers[1] is too_big
    assert isinstance(answers[3], KeyError)


def test_take_without_waiting_returns_only_the_ready_prefix() -> None:
    gate = threading.Event()
    with EncodePool[int](workers=2) as pool:
        pool.submit(lambda: 0)
        pool.submit(lambda: (gate.wait(5), 1)[1])
        pool.submit(lambda: 2)
        deadline = time.monotonic() + 5
        ready: list[int | Exception] = []
        while not ready and time.monotonic() < deadline:
            ready = pool.take(wait=False)
        assert ready == [0] and pool.pending == 2  # 2 may be done, but 1 is not: it waits
        gate.set()
        assert pool.drain() == [1, 2]


def test_a_closed_pool_refuses_work() -> None:
    pool = EncodePool[int](workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="EncodePool is closed"):
        pool.submit(lambda: 1)
    with pytest.raises(ValueError, match="at least one worker"):
        EncodePool[int](workers=0)


# ----------------------------------------------------------------------------- on a GPU
@cuda
def test_nvjpeg_decodes_a_mixed_batch_on_the_gpu() -> None:
    gpu = torch.device("cuda")
    datas = [JPEG, encode(SMOOTH, "JPEG", progressive=True), cmyk(), rotated(6), encode(random_rgb(48, 64), "PNG"), JPEG[:300]]
    decoded = DecodePlan(gpu, DEVICE).decode_batch(datas, BIG)
    assert [d.decoder if isinstance(d, Decoded) else "error" for d in decoded][2:] == ["pil", "device", "pil", "error"]
    for data, d in zip(datas[:2], decoded, strict=True):
        assert isinstance(d, Decoded) and d.pixels.is_cuda  # nvJPEG's IDCT is not libjpeg's: a looser bound
        assert levels(d.pixels, pil_pixels(data, BIG)).mean() < 2


@cuda
def test_the_gpu_resize_is_pils_bilinear_within_one_level() -> None:
    for path in SAMPLES:
        img = decode_image(path.read_bytes(), BIG)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].cuda()  # (1, 3, H, W)
        ours = resize_pixels(x, (224, 224))[0]
        pil = torch.from_numpy(np.array(img.resize((224, 224), Image.Resampling.BILINEAR))).permute(2, 0, 1)
        diff = levels(ours, pil)
        assert diff.max() <= RESIZE_TOLERANCE and diff.mean() < RESIZE_MEAN_TOLERANCE


@cuda
def test_plan_decoder_on_a_gpu_measures_the_device_route() -> None:
    plan = plan_decoder("cuda")
    assert "device+torch" in plan.measured or "device+torch" in plan.notes


# ----------------------------------------------------------------------------- the benchmark section
def test_the_decode_section_derives_its_figures_from_the_rounds(tmp_path: Path) -> None:
    """bench/decode.py at a tiny size: a row per stage, variant and batch (the device's skipped on a CPU),
    images/s and x PIL from the timed rounds, the route picked at load judged against PIL."""
    assert "decode" in [s.key for s in SECTIONS]
    section = Decode(cases=(Case("64x48 -> 32x32", (48, 64), Geometry(patch_size=8, max_tokens=BIG, size=(32, 32))),), batches=(1, 2))
    machine = Machine(CPU, "a test CPU", {}, {}, PrecisionPlan.fp32_only())
    run = Run(argparse.Namespace(repeats=1, device="cpu"), machine, tmp_path, b"")
    figures = section.measure(run)
    (table,) = section.tables(figures, run.args, machine)
    rows = [dict(zip([c.name for c in table.columns], row, strict=True)) for row in table.rows]
    measured = [r for r in figures.rows if not r.skipped]
    assert {(r.stage, r.variant) for r in measured} == {
        *(("decode", v) for v in ("pil", "torchvision")),
        *(("resize", v) for v in ("pil", "torch")),
        *(("prepare", r.name) for r in HOST_ROUTES),
    }
    assert len(measured) == 7 * 2 and all(len(r.seconds) == len(r.ratios) == figures.rounds == 5 for r in measured)
    for r in measured:
        assert r.images_per_s == pytest.approx(r.batch / float(np.median(r.seconds)))
        if r.variant in ("pil", "pil+pil"):
            assert r.over_pil == 1.0 and r.max_diff == 0.0
        else:
            assert r.max_diff is not None and r.max_diff <= DECODE_TOLERANCE + RESIZE_TOLERANCE + 1e-3
    skipped = [r for r in rows if r["batch"] is None]
    assert [r["variant"] for r in skipped] == ["device", "device+torch"] and "needs a CUDA device" in str(skipped[0]["images/s"])
    assert figures.plan.startswith("decode on cpu: pil+pil ") and f"At load: {figures.plan}." in table.notes
    (target,) = section.targets(figures, run.args, machine)
    (picked,) = [r for r in measured if r.stage == PREPARE and r.variant == figures.route and r.batch == 1]
    assert target.value == pytest.approx(picked.over_pil) and figures.route in target.what
