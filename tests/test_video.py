"""Attention videos (client/vitscope_client/video.py): synthetic clips written here with PyAV, explained by a
constructed model whose [CLS] seeks bright patches (in process through the real handler, and once
through TorchServe), written in order, in constant memory; every bad input is one line and exit 1."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Container, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from testkit.checkpoints import TINY, brightness_seeking_state
from testkit.clips import FPS, FRAMES, ROW, H, P, W, write_clip
from testkit.handler import client_requester
from tests.support.services import tiny_service
from vitscope.model.checkpoint import build_model
from vitscope.service import AttentionService
from vitscope_client import ClientError, Response, VideoError, VideoOptions, cli, explain_video, video


@pytest.fixture(scope="module")
def service() -> AttentionService:
    model = build_model(TINY, brightness_seeking_state())
    return tiny_service(model=model)


OPTIONS = VideoOptions(layer=0, short_side=H, mask=0.5)


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], Fraction(stream.average_rate or 0)


def test_the_moving_square_is_followed_frame_by_frame(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4")
    summary = explain_video(clip, tmp_path / "out.mp4", client_requester(service), OPTIONS, maps=tmp_path / "maps.npz", progress=False)
    frames, rate = read_video(tmp_path / "out.mp4")
    assert (len(frames), rate, summary.frames, summary.requested) == (FRAMES, FPS, FRAMES, FRAMES)
    assert frames[0].shape == (H, W, 3) and summary.size == (H, W)
    with np.load(tmp_path / "maps.npz") as saved:
        maps = saved["maps"]
    assert maps.dtype == np.float16 and maps.shape == (FRAMES, TINY.num_heads, H // P, W // P)
    for k in range(FRAMES):
        hottest = np.unravel_index(np.argmax(maps[k].astype(np.float32).mean(axis=0)), maps.shape[-2:])
        assert hottest == (ROW, k), k
    assert not list(tmp_path.glob("*.partial*"))  # nothing partial left


def test_every_and_max_frames_keep_the_rate_they_imply(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4")
    options = VideoOptions(layer=0, short_side=H, every=3, max_frames=5)
    explain_video(clip, tmp_path / "out.mp4", client_requester(service), options, maps=tmp_path / "maps.npy", progress=False)
    frames, rate = read_video(tmp_path / "out.mp4")
    assert (len(frames), rate) == (5, Fraction(FPS, 3))
    maps = np.load(tmp_path / "maps.npy")
    assert [np.argmax(maps[k].astype(np.float32).mean(axis=0)) % (W // P) for k in range(5)] == [0, 3, 6, 9, 12]


def test_answers_out_of_order_still_give_ordered_frames(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4", frames=12)
    finished: list[int] = []
    lock = threading.Lock()
    base = client_requester(service)
    rng = random.Random(0)

    def shuffled(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        time.sleep(rng.uniform(0, 0.2))  # each answer takes its own time: they finish out of order
        result = base(images, fields)
        with lock:
            finished.append(int(np.argmax(result[0].grid.mean(axis=0)) % (W // P)))
        return result

    options = VideoOptions(layer=0, short_side=H, in_flight=6)
    explain_video(clip, tmp_path / "out.mp4", shuffled, options, maps=tmp_path / "maps.npz", progress=False)
    assert finished != sorted(finished)  # the answers did come back out of order
    with np.load(tmp_path / "maps.npz") as saved:
        columns = [int(np.argmax(m.astype(np.float32).mean(axis=0)) % (W // P)) for m in saved["maps"]]
    assert columns == list(range(12))  # yet frames and maps are in order
    assert len(read_video(tmp_path / "out.mp4")[0]) == 12


def test_memory_stays_flat_on_a_long_clip(tmp_path: Path, service: AttentionService) -> None:
    """A 20x longer clip does not need more memory: frames are decoded, sent and written as they go."""
    short, long = (
        write_clip(tmp_path / "short.mp4", 30, size=(32, 48), square=False),
        write_clip(tmp_path / "long.mp4", 600, size=(32, 48), square=False),
    )
    options = VideoOptions(layer=0, short_side=32, in_flight=4)
    (one,) = client_requester(service)([video.jpeg(np.zeros((32, 48, 3), np.uint8))], options.fields())

    def instant(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        return [one]  # the model is not what is measured here

    peaks = []
    for clip in (short, long):
        tracemalloc.start()
        explain_video(clip, tmp_path / f"{clip.stem}_out.mp4", instant, options, maps=tmp_path / f"{clip.stem}.npz", progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0] + 200_000, peaks  # 20x the frames, about the same peak
    assert len(read_video(tmp_path / "long_out.mp4")[0]) == 600


def test_pca_keeps_one_basis_and_a_run_resumes_where_it_stopped(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4", frames=10)
    base = client_requester(service)
    sent: list[dict] = []

    def failing_from(frame: int) -> video.Requester:
        def request(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
            sent.append(dict(fields))
            if len(sent) > frame + 1:  # +1: the first frame's basis request
                raise ClientError("server answered HTTP 400: broken on purpose", 400)
            return base(images, fields)

        return request

    options = VideoOptions(method="pca", short_side=H, in_flight=1)  # one at a time: the stop is at frame 6 exactly
    maps = tmp_path / "maps.npz"
    with pytest.raises(VideoError, match="frame 6: server answered HTTP 400"):
        explain_video(clip, tmp_path / "out.mp4", failing_from(6), options, maps=maps, progress=False)
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob("out.partial*"))
    assert (tmp_path / "maps.npz.partial").exists() and not maps.exists()
    bases = {f["pca_basis"] for f in sent if "pca_basis" in f}
    assert len(bases) == 1 and len(sent) == 8  # the basis, then frames 0..6 each with that one basis
    sent.clear()
    summary = explain_video(clip, tmp_path / "out.mp4", failing_from(100), options, maps=maps, resume=True, progress=False)
    assert summary.frames == 10 and summary.requested == 4  # frames 6..9 only
    assert {f["pca_basis"] for f in sent if "pca_basis" in f} == bases  # the same colours as before the stop
    with np.load(maps) as resumed:
        assert resumed["maps"].shape == (10, 3, H // P, W // P)
    sent.clear()
    fresh = tmp_path / "fresh.npz"
    explain_video(clip, tmp_path / "fresh.mp4", failing_from(100), options, maps=fresh, progress=False)
    with np.load(maps) as a, np.load(fresh) as b:
        np.testing.assert_array_equal(a["maps"], b["maps"])


def test_pca_sample_fits_one_basis_on_frames_spread_over_the_video(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4", frames=12)
    base = client_requester(service)
    calls: list[tuple[int, dict]] = []

    answers: list[list[Response]] = []

    def request(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        calls.append((len(images), dict(fields)))
        answers.append(base(images, fields))
        return answers[-1]

    options = VideoOptions(method="pca", pca_fit="sample", pca_sample=4, short_side=H)
    explain_video(clip, tmp_path / "out.mp4", request, options, progress=False)
    (sampled, fit), *frames = calls
    assert sampled == 4 and fit["pca_fit"] == "joint" and "pca_basis" not in fit  # frames 0, 4, 7, 11 fitted together
    assert len(frames) == 12 and len({f["pca_basis"] for _, f in frames}) == 1
    joint = [answer.arrays["pca_basis"] for answer in answers[0]]  # one basis in every answer of the joint fit
    assert all(np.array_equal(basis, joint[0]) for basis in joint)


def test_similarity_follows_a_point_of_the_first_frame(tmp_path: Path, service: AttentionService) -> None:
    clip = write_clip(tmp_path / "square.mp4", frames=4)
    base = client_requester(service)
    groups: list[int] = []

    def request(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        groups.append(len(images))
        assert fields["point"] in ("0,0", f"{P // 2},{ROW * P + P // 2}")  # the probe, then the point in the server's pixels
        return base(images, fields)

    options = VideoOptions(method="similarity", point=(P // 2, ROW * P + P // 2), layer=0, short_side=H)
    explain_video(clip, tmp_path / "out.mp4", request, options, maps=tmp_path / "maps.npz", progress=False)
    assert groups == [1, 2, 2, 2, 2]  # the geometry probe, then each frame with the first
    with np.load(tmp_path / "maps.npz") as saved:
        first = saved["maps"][0, 0].astype(np.float32)
    assert first[ROW, 0] == pytest.approx(1.0, abs=1e-2)  # the first frame's point is itself


def failing(base: video.Requester | None, calls: Container[int], error: ClientError) -> video.Requester:
    """A requester that raises ``error`` on the given calls (numbered from 1) and asks ``base`` otherwise;
    without ``base``, on every call."""
    count = 0

    def request(images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        nonlocal count
        count += 1
        if base is None or count in calls:
            raise error
        return base(images, fields)

    return request


def test_a_failing_frame_is_retried_then_the_run_stops_naming_it(tmp_path: Path, service: AttentionService, monkeypatch) -> None:
    monkeypatch.setattr(video, "RETRY_WAIT_S", 0.0)
    clip = write_clip(tmp_path / "square.mp4", frames=6)
    queue_full = ClientError("server answered HTTP 503: queue full", 503)
    flaky = failing(client_requester(service), {2, 3}, queue_full)  # frame 1 fails twice with 503, then passes
    options = VideoOptions(layer=0, short_side=H, in_flight=1)
    assert explain_video(clip, tmp_path / "ok.mp4", flaky, options, progress=False).frames == 6

    broken = failing(None, (), queue_full)
    with pytest.raises(VideoError, match=r"frame 0: server answered HTTP 503: queue full \(after 3 retries\)"):
        explain_video(clip, tmp_path / "out.mp4", broken, options, progress=False)
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize(
    ("method", "extra", "what"),
    [
        ("similarity", {"point": (4, 4)}, "the first frame's geometry"),
        ("pca", {"pca_fit": "sample", "pca_sample": 3}, "the PCA basis of 3 sampled frames"),
        ("pca", {}, "the first frame's PCA basis"),
    ],
)
def test_the_requests_before_the_frames_are_retried_too(
    tmp_path: Path, service: AttentionService, monkeypatch, method: str, extra: dict, what: str
) -> None:
    """The similarity point's geometry and the PCA basis are asked before any frame: retried alike, and
    named when they fail for good."""
    monkeypatch.setattr(video, "RETRY_WAIT_S", 0.0)
    clip = write_clip(tmp_path / "square.mp4", frames=4)
    queue_full = ClientError("server answered HTTP 503: queue full", 503)
    flaky = failing(client_requester(service), {1, 2}, queue_full)  # the first request fails twice with 503, then passes
    options = VideoOptions(method=method, short_side=H, in_flight=1, **extra)
    assert explain_video(clip, tmp_path / "ok.mp4", flaky, options, progress=False).frames == 4

    broken = failing(None, (), ClientError("server answered HTTP 502: bad gateway", 502))
    with pytest.raises(VideoError, match=rf"^{what}: server answered HTTP 502: bad gateway \(after 3 retries\)$"):
        explain_video(clip, tmp_path / "out.mp4", broken, options, progress=False)
    assert not list(tmp_path.glob("out*"))


# ----------------------------------------------------------------------------- bad input, through the CLI
def text_file(path: Path) -> Path:
    path.write_text("hello, not a video")
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def zero_frames(path: Path) -> Path:
    """An AVI with a video stream and not one frame."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        container.start_encoding()
    return path


def unknown_codec(path: Path) -> Path:
    """An AVI whose video stream names a codec no FFmpeg knows (its FourCC rewritten)."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=12)
        stream.height, stream.width = 32, 32
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    path.write_bytes(path.read_bytes().replace(b"FFV1", b"QZQZ"))
    return path


BAD: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {  # what -> (make the input, extra args, the error)
    "not a video": (lambda d: text_file(d / "text.mp4"), [], "is not a video FFmpeg can read"),
    "no video stream": (lambda d: audio_only(d / "sound.wav"), [], "has no video stream"),
    "zero frames": (lambda d: zero_frames(d / "empty.avi"), [], "has no frames"),
    "an unknown codec": (lambda d: unknown_codec(d / "odd.avi"), [], "codec"),
    "an output path that is not writable": (lambda d: write_clip(d / "clip.mp4", 2), ["--out", "{d}/clip.mp4/out.mp4"], "is not a folder"),
    "a point outside the frame": (
        lambda d: write_clip(d / "clip.mp4", 2),
        ["--method", "similarity", "--point", "900,10"],
        "outside the frame",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, extra, phrase = BAD[case]
    given = make(tmp_path)
    args = [a.format(d=tmp_path) for a in extra]
    out = ["--out", str(tmp_path / "out.mp4")] if "--out" not in args else []
    before = set(tmp_path.iterdir())
    rc = cli.main(["--video", str(given), *out, *args, "--url", "http://127.0.0.1:9/predictions/x", "--maps", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], err
    assert set(tmp_path.iterdir()) == before  # no output video, no maps


def test_the_cli_through_torchserve(tmp_path: Path, served) -> None:
    """--video against a real TorchServe: 6 frames at 12 fps, maps on the patch grid."""
    clip = write_clip(tmp_path / "square.mp4", frames=6)
    args = ["--video", str(clip), "--out", str(tmp_path / "out.mp4"), "--maps", str(tmp_path / "maps.npz"), "--url", served.url]
    assert cli.main([*args, "--short-side", str(H), "--layer", "0", "--in-flight", "3", "--mask", "0.6"]) == 0
    frames, rate = read_video(tmp_path / "out.mp4")
    assert (len(frames), rate) == (6, FPS)
    with np.load(tmp_path / "maps.npz") as saved:
        assert saved["maps"].shape == (6, TINY.num_heads, H // P, W // P)
