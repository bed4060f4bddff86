"""Attention and feature videos through the server, DINO's famous clips from any video, in constant memory.

    python client/render_attention.py --video IN.mp4 --out OUT.mp4 [--maps MAPS.npz]
        [--method attention|rollout|pca|similarity] [--layer L] [--head mean|N] [--point x,y]
        [--every N] [--max-frames N] [--short-side S] [--in-flight N] [--mask 0.6] [--resume]

In a notebook: ``AttentionClient(...).explain_video("in.mp4", "out.mp4", method="pca")``. PyAV and
tqdm, the client's ``video`` extra (``pip install 'vitscope-client[video]'``), are imported when a
video is explained, not with the client: without them, ``MissingVideoExtra`` says what to install.

Frames are decoded (PyAV), sent, drawn and encoded as they go: at most ``in_flight`` frames are held
at once, whatever the video's length. ``in_flight`` requests overlap, so that the server can batch
them; answers may come back in any order, frames are written in order. The output has the input's
frame count and rate (or every ``every``-th frame at rate / ``every``), at the size the server
computed on, each frame the overlay of its map in DINO's style (with the mask's outline for ``--mask``).

* ``pca``: the colours of the first frame's basis (``pca_fit="first"``) or of a basis fitted on a
  sample of frames together (``"sample"``), sent as ``pca_basis`` with every frame: colours keep
  their meaning across the video.
* ``similarity``: every frame against the patch at ``point`` (x, y in the input frame's pixels) of
  the first frame: each request sends the first frame and the frame together.
* ``maps``: the per-frame maps on the patch grid, ``[frames, ...]`` float16 (.npz or .npy). While
  running they go to ``<maps>.partial`` (+ ``.json``): a run that stops keeps them, and ``resume``
  requests only the frames not in it.

A failing request (a frame's, the similarity point's geometry, the PCA basis) is retried (``retries``
times, longer waits each) on answers that may pass (no answer, 429, 5xx); then the run stops naming
it. The output video is written as ``<out>.partial.<ext>`` and renamed when complete; nothing
partial is left under the output's name.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import logging
import os
import shutil
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image

from .draw import overlay
from .errors import ClientError
from .mirrors import align, threshold_masks
from .response import Response

if TYPE_CHECKING:
    import av
    from av.video.stream import VideoStream

logger = logging.getLogger(__name__)

Requester = Callable[[Sequence[bytes], Mapping[str, str]], list[Response]]  # images sent together -> their responses
VIDEO_EXTRA = "pip install 'vitscope-client[video]'"
VIDEO_METHODS = ("attention", "rollout", "pca", "similarity")
PCA_FITS = ("first", "sample")
JPEG_QUALITY = 95  # frames travel as JPEG (as DINO's video_generation.py writes them)
RETRY_STATUSES = (429, 500, 502, 503, 504)  # answers that may pass when asked again (None: no answer)
RETRY_WAIT_S = 0.5  # first wait before a retry; doubled each time
VIDEO_CODECS = ("libx264", "h264", "mpeg4")  # the first the PyAV build can encode
SIMILARITY_BOUNDS = (-1.0, 1.0)  # cosine similarity: one colour scale for every frame
GEOMETRY_KEYS = ("input_size", "resized_size", "image_size", "patch_size")  # what drawing a frame needs of its answer


class VideoError(ClientError):
    """A video that cannot be read, written or explained: one line, exit status 1."""


class MissingVideoExtra(VideoError, ImportError):
    """The client's ``video`` extra (PyAV, tqdm) is not installed: the message says how to install it."""


def require_video_extra() -> None:
    """PyAV and tqdm, the client's video extra, are imported on first use: ``MissingVideoExtra`` (a
    ``ClientError`` and an ``ImportError``) says how to install them."""
    for module in ("av", "tqdm"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingVideoExtra(f"videos need PyAV and tqdm, the client's video extra: {VIDEO_EXTRA} ({e})") from e


@dataclass(frozen=True)
class VideoOptions:
    """What to compute and draw for each frame (and how the frames travel)."""

    method: str = "attention"
    layer: int | None = None
    head: str = "mean"  # attention: the heads' mean, or one head's index
    point: tuple[int, int] | None = None  # similarity: x, y in the input frame's pixels (first frame)
    every: int = 1  # every N-th frame
    max_frames: int | None = None
    short_side: int | None = None
    in_flight: int = 4  # requests in flight at once
    mask: float | None = None  # outline DINO's mask keeping this share of the map's mass
    pca_fit: str = "first"  # pca: the basis of the first frame, or of a sample of frames together
    pca_sample: int = 8  # pca_fit="sample": frames spread over the video
    retries: int = 3
    cmap: str = "inferno"
    server_options: dict[str, str] = field(default_factory=dict)  # passed on as they are (precision, ...)

    def __post_init__(self) -> None:
        if self.method not in VIDEO_METHODS:
            raise VideoError(f"--method {self.method!r}: videos take one of {list(VIDEO_METHODS)}")
        if self.method == "similarity" and self.point is None:
            raise VideoError("--method similarity needs --point x,y: a pixel of the first frame")
        if self.head != "mean" and not self.head.isdigit():
            raise VideoError(f"--head {self.head!r}: mean, or a head index such as 0")
        if self.every < 1 or self.in_flight < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise VideoError("--every, --in-flight and --max-frames must be positive")
        if self.pca_fit not in PCA_FITS:
            raise VideoError(f"--pca-fit {self.pca_fit!r}: one of {list(PCA_FITS)}")

    def fields(self) -> dict[str, str]:
        """The request's form fields (the maps travel as the patch grid)."""
        fields = {"upsample": "false", "method": self.method, **self.server_options}
        if self.layer is not None:
            fields["layer"] = str(self.layer)
        if self.short_side is not None:
            fields["short_side"] = str(self.short_side)
        return fields


@dataclass(frozen=True)
class VideoSummary:
    frames: int  # frames written
    fps: Fraction  # the output's frame rate
    size: tuple[int, int]  # (H, W) of the output's frames
    out: Path
    maps: Path | None
    seconds: float
    requested: int  # frames asked of the server (fewer than frames when resumed)


# ----------------------------------------------------------------------------- input
@dataclass
class Source:
    container: av.container.InputContainer
    stream: VideoStream
    fps: Fraction
    frame_count: int  # as the container states it (0: unknown)


def open_video(path: Path) -> Source:
    """The first video stream of ``path``, or ``VideoError`` saying why not."""
    require_video_extra()
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.InvalidDataError, av.error.FFmpegError) as e:
        raise VideoError(f"{path} is not a video FFmpeg can read: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.codec:
        container.close()
        raise VideoError(f"{path}: its video codec is unknown to this FFmpeg build")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        container.close()
        raise VideoError(f"{path}: its video stream states no frame rate")
    return Source(container, stream, Fraction(rate), int(stream.frames or 0))


def frames_of(source: Source, path: Path, options: VideoOptions) -> Iterator[tuple[int, np.ndarray]]:
    """(index among the selected frames, RGB (H, W, 3) uint8), decoded one at a time."""
    import av  # open_video made sure it is there

    selected = 0
    try:
        for n, frame in enumerate(source.container.decode(source.stream)):
            if n % options.every:
                continue
            if options.max_frames is not None and selected >= options.max_frames:
                return
            yield selected, frame.to_ndarray(format="rgb24")
            selected += 1
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot decode frame {selected * options.every} ({source.stream.codec_context.name}): {e}") from e


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ----------------------------------------------------------------------------- output
class Writer:
    """Frames encoded into ``<out>.partial.<ext>``, renamed to ``out`` by ``finish``; ``discard``
    removes the partial file."""

    def __init__(self, out: Path, fps: Fraction, size: tuple[int, int]) -> None:
        require_video_extra()
        import av

        self.out, self.partial = out, out.with_name(f"{out.stem}.partial{out.suffix}")
        try:
            self.container = av.open(str(self.partial), "w", format=container_format(out))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot write {out}: {e}") from e
        codec = next(c for c in VIDEO_CODECS if c in av.codecs_available)
        self.stream = cast("VideoStream", self.container.add_stream(codec, rate=fps))
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = "yuv420p"
        self.size, self.count = size, 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        self.count += 1

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        self.partial.replace(self.out)

    def discard(self) -> None:
        self.container.close()
        self.partial.unlink(missing_ok=True)


def container_format(out: Path) -> str:
    formats = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}
    if out.suffix.lower() not in formats:
        raise VideoError(f"--out {out.name}: write one of {sorted(formats)}")
    return formats[out.suffix.lower()]


def check_writable(path: Path) -> None:
    """Fail before any work if ``path`` cannot be created."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VideoError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise VideoError(f"cannot write {path}: {folder} is not writable")


class MapStore:
    """The per-frame maps, appended to ``<maps>.partial`` (raw float16) with a ``.json`` beside it that
    says how many frames it holds; ``finish`` streams them into ``maps`` (.npy or .npz) as
    ``[frames, ...]`` float16 without holding them in memory."""

    def __init__(self, path: Path, run: Mapping[str, object], resume: bool) -> None:
        if path.suffix not in (".npz", ".npy"):
            raise VideoError(f"--maps {path.name}: write .npz or .npy")
        check_writable(path)
        self.path, self.raw, self.index = path, path.with_name(path.name + ".partial"), path.with_name(path.name + ".partial.json")
        self.run, self.shape, self.frames, self.extra = dict(run), None, 0, {}
        if resume and self.raw.exists() and self.index.exists():
            state = json.loads(self.index.read_text())
            if state.get("run") != self.run:
                raise VideoError(f"--resume: {self.raw} was made with other options {state.get('run')}; remove it or rerun with those")
            self.shape, self.frames, self.extra = tuple(state["shape"]), int(state["frames"]), state.get("extra", {})
            with open(self.raw, "r+b") as f:  # drop a frame cut short by the stop
                f.truncate(self.frames * self.frame_bytes)
        else:
            self.raw.write_bytes(b"")

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.shape)) * 2 if self.shape else 0

    def saved(self, i: int) -> np.ndarray | None:
        """Frame ``i``'s maps from an earlier run, if it got that far."""
        if i >= self.frames or self.shape is None:
            return None
        with open(self.raw, "rb") as f:
            f.seek(i * self.frame_bytes)
            return np.frombuffer(f.read(self.frame_bytes), dtype=np.float16).reshape(self.shape)

    def append(self, i: int, maps: np.ndarray) -> None:
        if i < self.frames:
            return  # already there (resumed)
        if self.shape is None:
            self.shape = tuple(maps.shape)
        elif tuple(maps.shape) != self.shape:
            raise VideoError(f"frame {i}: maps {list(maps.shape)}, unlike the earlier frames' {list(self.shape)} (the video changed size?)")
        with open(self.raw, "ab") as f:
            f.write(np.ascontiguousarray(maps, dtype=np.float16).tobytes())
        self.frames = i + 1
        self.index.write_text(json.dumps({"run": self.run, "shape": list(self.shape), "frames": self.frames, "extra": self.extra}))

    def finish(self) -> None:
        header = {"descr": "<f2", "fortran_order": False, "shape": (self.frames, *(self.shape or ()))}
        partial = self.path.with_name(self.path.name + ".writing")
        with open(partial, "wb") as out:
            if self.path.suffix == ".npz":
                with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
                    with z.open("maps.npy", "w", force_zip64=True) as member:
                        self._write_npy(member, header)
                    z.writestr("run.json", json.dumps(self.run))
            else:
                self._write_npy(out, header)
        partial.replace(self.path)
        self.discard()

    def discard(self) -> None:
        self.raw.unlink(missing_ok=True)
        self.index.unlink(missing_ok=True)

    def _write_npy(self, f: object, header: dict) -> None:
        np.lib.format.write_array_header_2_0(f, header)  # type: ignore[arg-type]
        with open(self.raw, "rb") as raw:
            shutil.copyfileobj(raw, f)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- one frame
def frame_maps(response: Response) -> np.ndarray:
    """The maps the video keeps of one answer, on the patch grid: (heads, h, w) for attention, (1, h, w)
    for rollout and similarity, (3, h, w) PCA colours."""
    grid = np.asarray(response.grid, dtype=np.float32)
    return grid.reshape(-1, *grid.shape[-2:])


def draw(rgb: np.ndarray, maps: np.ndarray, meta: Mapping[str, object], options: VideoOptions) -> np.ndarray:
    """One output frame: the frame as the server computed on it, its map over it (DINO's style)."""
    image = align(Image.fromarray(rgb), dict(meta))
    p = int(meta["patch_size"])  # type: ignore[call-overload]
    if options.method == "pca":
        colours = np.moveaxis(maps, 0, -1).repeat(p, axis=0).repeat(p, axis=1)  # (H, W, 3) in [0, 1]
        return np.clip(np.rint(0.4 * image + 0.6 * 255 * colours), 0, 255).astype(np.uint8)
    heat = maps.mean(axis=0) if options.head == "mean" else maps[int(options.head)]  # (h, w)
    bounds = SIMILARITY_BOUNDS if options.method == "similarity" else None
    out = overlay(image, heat.repeat(p, axis=0).repeat(p, axis=1), options.cmap, bounds=bounds)
    if options.mask is not None:
        out[outline(threshold_masks(heat, options.mask).repeat(p, axis=0).repeat(p, axis=1))] = 255
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` (H, W) bool that touch a pixel outside it (4-neighbours)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def ask(requester: Requester, images: Sequence[bytes], fields: Mapping[str, str], what: str, retries: int) -> Response:
    """The answer for the last of ``images``, retried while it may pass; ``what`` names the request in
    messages ("frame 12", "the PCA sample")."""
    for attempt in range(retries + 1):
        try:
            return requester(images, fields)[-1]
        except ClientError as e:
            if attempt == retries or (e.status is not None and e.status not in RETRY_STATUSES):
                raise VideoError(f"{what}: {e}" + (f" (after {retries} retries)" if attempt else "")) from e
            wait = RETRY_WAIT_S * 2**attempt
            logger.warning("%s: %s; retrying in %.1f s", what, e, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the whole video
def explain_video(
    video: str | Path,
    out: str | Path,
    requester: Requester,
    options: VideoOptions,
    maps: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> VideoSummary:
    """Explain every selected frame of ``video`` and write ``out`` (and ``maps``); see the module docstring."""
    require_video_extra()  # before any work
    from tqdm import tqdm

    video, out = Path(video), Path(out)
    container_format(out)
    check_writable(out)
    start = time.perf_counter()
    source = open_video(video)
    fields = options.fields()
    store: MapStore | None = None
    writer: Writer | None = None
    requested = 0
    try:
        store = MapStore(Path(maps), {**asdict(options), "video": video.name}, resume) if maps else None
        frames = frames_of(source, video, options)
        first = next(frames, None)
        if first is None:
            raise VideoError(f"{video} has no frames")
        _, first_rgb = first
        first_jpeg = jpeg(first_rgb)
        check_point(options, first_rgb)
        if options.method == "similarity":
            fields["point"] = server_point(requester, first_jpeg, fields, options)
        if options.method == "pca":
            fields["pca_basis"] = pca_basis(requester, first_jpeg, video, fields, options, store)
        total = (source.frame_count + options.every - 1) // options.every if source.frame_count else None
        if total and options.max_frames:
            total = min(total, options.max_frames)
        bar = tqdm(total=total, unit="frame", disable=not progress, desc=video.name)
        window: deque[tuple[int, np.ndarray, Future[Response] | np.ndarray]] = deque()
        with ThreadPoolExecutor(max_workers=options.in_flight) as pool:

            def submit(i: int, rgb: np.ndarray) -> None:
                nonlocal requested
                saved = store.saved(i) if store and "meta" in store.extra else None
                if saved is not None:
                    window.append((i, rgb, saved.astype(np.float32)))
                    return
                images = [first_jpeg, jpeg(rgb)] if options.method == "similarity" else [jpeg(rgb)]
                window.append((i, rgb, pool.submit(ask, requester, images, fields, f"frame {i}", options.retries)))
                requested += 1

            def drain(keep: int) -> None:
                nonlocal writer
                while len(window) > keep:
                    i, rgb, pending = window.popleft()  # in order, whatever order the answers came in
                    if isinstance(pending, np.ndarray):  # resumed: drawn from the saved maps and geometry
                        maps_i, meta = pending, store.extra["meta"] if store else {}
                    else:
                        answer = pending.result()
                        maps_i, meta = frame_maps(answer), answer.meta
                        if store and "meta" not in store.extra:
                            store.extra["meta"] = {k: v for k, v in meta.items() if k in GEOMETRY_KEYS}
                    picture = draw(rgb, maps_i, meta, options)
                    if writer is None:
                        writer = Writer(out, source.fps / options.every, picture.shape[:2])
                    writer.write(picture)
                    if store:
                        store.append(i, maps_i)
                    bar.update(1)

            submit(0, first_rgb)
            for i, rgb in frames:
                drain(options.in_flight - 1)  # at most in_flight requests out at once
                submit(i, rgb)
            drain(0)
        bar.close()
        assert writer is not None
        writer.finish()
        if store:
            store.finish()
    except BaseException:
        if writer is not None:
            writer.discard()
        if store and store.frames:
            logger.error("the maps of %d frame(s) are kept in %s: rerun with --resume to go on", store.frames, store.raw)
        elif store:
            store.discard()  # nothing worth keeping
        raise
    finally:
        source.container.close()
    return VideoSummary(
        writer.count, source.fps / options.every, writer.size, out, Path(maps) if maps else None, time.perf_counter() - start, requested
    )


def check_point(options: VideoOptions, rgb: np.ndarray) -> None:
    if options.point is None:
        return
    x, y = options.point
    h, w = rgb.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise VideoError(f"--point {x},{y} is outside the frame, {w} pixels wide and {h} high")


def server_point(requester: Requester, first: bytes, fields: Mapping[str, str], options: VideoOptions) -> str:
    """``--point`` (input-frame pixels) in the processed image's pixels, from the first frame's geometry."""
    assert options.point is not None
    meta = ask(requester, [first], {**fields, "point": "0,0"}, "the first frame's geometry", options.retries).meta
    (h0, w0), (hr, wr), (h, w) = meta["input_size"], meta["resized_size"], meta["image_size"]
    x, y = options.point[0] * wr // w0, options.point[1] * hr // h0
    if not (x < w and y < h):
        raise VideoError(
            f"--point {options.point[0]},{options.point[1]} falls in the part of the frame the server crops away (right/bottom)"
        )
    return f"{x},{y}"


def pca_basis(
    requester: Requester, first: bytes, video: Path, fields: Mapping[str, str], options: VideoOptions, store: MapStore | None
) -> str:
    """The basis every frame is coloured with (base64 float32): the first frame's, or a sample's."""
    if store and "pca_basis" in store.extra:
        return str(store.extra["pca_basis"])  # resumed: the colours of the run it continues
    if options.pca_fit == "first":
        answer = ask(requester, [first], fields, "the first frame's PCA basis", options.retries)
    else:
        sample = sample_frames(video, options)
        joint = {**fields, "pca_fit": "joint"} if len(sample) > 1 else fields  # one basis, shared by every answer
        answer = ask(requester, sample, joint, f"the PCA basis of {len(sample)} sampled frames", options.retries)
    basis = answer.arrays.get("pca_basis")
    if basis is None:
        raise VideoError("the server's pca answer carries no pca_basis: an older server?")
    encoded = base64.b64encode(np.ascontiguousarray(basis, dtype=np.float32).tobytes()).decode("ascii")
    if store:
        store.extra["pca_basis"] = encoded
    return encoded


def sample_frames(video: Path, options: VideoOptions) -> list[bytes]:
    """Up to ``pca_sample`` frames spread evenly over the selected frames (a second decoding pass)."""
    source = open_video(video)
    try:
        count = sum(1 for _ in frames_of(source, video, options))
    finally:
        source.container.close()
    wanted = {round(k * (count - 1) / max(options.pca_sample - 1, 1)) for k in range(min(options.pca_sample, count))}
    source = open_video(video)
    try:
        return [jpeg(rgb) for i, rgb in frames_of(source, video, options) if i in wanted]
    finally:
        source.container.close()
