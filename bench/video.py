"""The video section: frames/s of an attention video, our client against a served model vs the loop of
DINO's ``video_generation.py`` in process, on the same machine, model and clip.

DINO's loop (facebookresearch/dino ``video_generation.py``, re-implemented here, not vendored): every
frame decoded, normalised at its native resolution (cropped to a multiple of the patch), one
un-batched forward pass whose last block builds the full N x N attention
(``get_last_selfattention``), the heads' maps upsampled to pixels and the frame written; frame by
frame. Ours: the client's ``vitscope_client.video`` against TorchServe (``in_flight`` requests overlapping).
Peak memory: the max RSS of each process (the DINO loop here; the TorchServe worker for ours).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.section import Run
from bench.tables import Cell, Column, Skipped, Table, Target
from bench.timing import Machine
from scripts import REPO
from testkit.torchserve import private_torchserve
from vitscope.attention import to_tensor
from vitscope.model.checkpoint import build_model, filter_state_dict, read_checkpoint
from vitscope.model.variants import get_variant

logger = logging.getLogger("bench")

CLIP_FPS = 24


@dataclass(frozen=True)
class VideoFigures:
    clip: str  # "480p, 10 s" ...
    frames: int
    ours_fps: float | None  # frames/s, None when not run
    dino_fps: float | None
    ours_peak_mb: float | None  # the serving worker's max RSS
    dino_peak_mb: float | None  # the DINO loop's max RSS
    dino_skipped: str = ""


def write_clip(path: Path, size: tuple[int, int], frames: int) -> Path:
    """A synthetic clip: bright discs drifting over a gradient (H.264, ``CLIP_FPS``)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    import av  # PyAV (the client's video extra): only this section needs it, so the others run without it

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for k in range(frames):
            rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
            for i, (cx, cy) in enumerate([((k * 7) % w, h // 3), (w - (k * 5) % w, 2 * h // 3)]):
                rgb[(xx - cx) ** 2 + (yy - cy) ** 2 < (h // 10) ** 2] = (255, 195 - 60 * i, 200)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def dino_loop(clip: Path, out: Path, model_name: str, weights: Path, device: str) -> float:
    """DINO's video_generation.py loop over ``clip`` (see the module docstring); returns frames/s."""
    variant = get_variant(model_name)
    model = build_model(variant, filter_state_dict(read_checkpoint(weights))).to(device)
    p = variant.patch_size
    start, count = time.perf_counter(), 0
    import av  # as in write_clip

    with av.open(str(clip)) as source, av.open(str(out), "w") as sink:
        stream = source.streams.video[0]
        writer = None
        for frame in source.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[0] // p * p, rgb.shape[1] // p * p
            x = to_tensor(Image.fromarray(rgb[:h, :w]), variant.mean, variant.std)[None].to(device)  # (1, 3, H, W), ImageNet-normalised
            with torch.inference_mode():
                rows = model.get_cls_attention(x, None, explicit=True)[0, :, variant.num_prefix_tokens :]  # (heads, patches): N x N inside
            maps = F.interpolate(rows.reshape(1, -1, h // p, w // p), scale_factor=p, mode="nearest")[0].mean(dim=0)  # (H, W)
            heat = (maps - maps.min()) / (maps.max() - maps.min() + 1e-12)
            picture = (0.4 * rgb[:h, :w] + 0.6 * 255 * heat.cpu().numpy()[..., None]).astype(np.uint8)
            if writer is None:
                writer = sink.add_stream("libx264", rate=CLIP_FPS)
                writer.height, writer.width, writer.pix_fmt = h, w, "yuv420p"
            sink.mux(writer.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
            count += 1
        if writer is not None:
            sink.mux(writer.encode(None))
    return count / (time.perf_counter() - start)


def ours(clip: Path, out: Path, url: str, in_flight: int, short_side: int) -> float:
    """Our client against the server, at the clip's own resolution (as DINO's loop): frames/s."""
    sys.path.insert(0, str(REPO / "client"))  # the client's package, where it is not installed
    from vitscope_client import AttentionClient  # the client (and PyAV): only this section needs them
    from vitscope_client.video import VideoOptions, explain_video

    client = AttentionClient(url, timeout=600)
    summary = explain_video(clip, out, client.request, VideoOptions(in_flight=in_flight, short_side=short_side), progress=False)
    return summary.frames / summary.seconds


def worker_rss_mb(server_root: Path) -> float:
    """The max RSS (VmHWM, MB) of the model worker of the TorchServe whose files are in ``server_root``."""
    pattern = f"model_service_worker.*{server_root}"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    peaks = []
    for pid in out:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")]
    return max(peaks, default=float("nan"))


def bench_video(args: argparse.Namespace, store: Path, workdir: Path) -> list[VideoFigures]:
    """Each clip (``args.video_clips``: HxW:seconds) through ours and DINO's loop."""
    variant = get_variant(args.model, args.patch)
    rows = []
    for spec in args.video_clips:
        size, seconds = spec
        frames = round(seconds * CLIP_FPS)
        label = f"{size[0]}p ({size[1]}x{size[0]}), {seconds:g} s, {frames} frames"
        clip = write_clip(workdir / f"clip_{size[0]}.mp4", size, frames)
        tokens = (size[0] // variant.patch_size) * (size[1] // variant.patch_size) + 1
        nxn_gb = variant.num_heads * tokens**2 * 4 * 3 / 1e9
        dino_fps = dino_peak = None
        skipped = ""
        if nxn_gb > args.seed_budget_gb:
            skipped = f"its N x N attention needs ~{nxn_gb:.0f} GB > {args.seed_budget_gb:g} GB budget"
        else:
            logger.info("  DINO's loop over %s ...", label)
            cmd = [sys.executable, "-c", DINO_PROCESS, str(clip), str(workdir / "dino_out.mp4"), args.model, str(args.weights), args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                skipped = f"failed: {proc.stderr.strip().splitlines()[-1:]}"
            else:
                dino_fps, dino_peak = (float(v) for v in proc.stdout.split())
        logger.info("  ours over %s ...", label)
        with private_torchserve(store, variant.name) as server:
            ours_fps = ours(clip, workdir / "ours_out.mp4", server.url(variant.name), args.video_in_flight, min(size))
            ours_peak = worker_rss_mb(server.root)
        rows.append(VideoFigures(label, frames, ours_fps, dino_fps, ours_peak, dino_peak, skipped))
    return rows


# DINO's loop in a process of its own, so that its max RSS is its own: prints "frames/s peak_MB".
DINO_PROCESS = (
    "import resource, sys; from pathlib import Path; from bench.video import dino_loop; "
    "fps = dino_loop(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5]); "
    "print(fps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def parse_clip(text: str) -> tuple[tuple[int, int], float]:
    """'480x854:10' -> ((480, 854), 10.0): HxW and seconds."""
    size, _, seconds = text.partition(":")
    h, w = size.lower().split("x")
    return (int(h), int(w)), float(seconds or 10)


def video_table(rows: Sequence[VideoFigures], args: argparse.Namespace) -> Table:
    table = Table(
        f"Attention videos ({args.model}, fp32): our client against TorchServe ({args.video_in_flight} in flight) vs DINO's "
        "video_generation.py loop in process",
        (
            Column("clip"),
            Column("ours frames/s", "{:.2f}"),
            Column("DINO loop frames/s", "{:.2f}"),
            Column("speed-up", "{:.2f}x"),
            Column("ours: worker peak RSS MB", "{:.0f}"),
            Column("DINO loop: peak RSS MB", "{:.0f}"),
        ),
    )
    for r in rows:
        speedup = r.ours_fps / r.dino_fps if r.ours_fps and r.dino_fps else None
        dino: Cell = r.dino_fps if r.dino_fps is not None else Skipped(r.dino_skipped)
        table.add(r.clip, r.ours_fps, dino, speedup, r.ours_peak_mb, r.dino_peak_mb)
    return table


class Video:
    key = "video"
    title = "attention videos: our client against TorchServe vs DINO's video_generation.py loop in process (needs PyAV)"

    def measure(self, run: Run) -> list[VideoFigures]:
        logger.info("video: our client against the server vs DINO's video_generation.py loop in process ...")
        return bench_video(run.args, run.store, run.workdir)

    def tables(self, figures: list[VideoFigures], args: argparse.Namespace, machine: Machine) -> list[Table]:
        return [video_table(figures, args)]

    def targets(self, figures: list[VideoFigures], args: argparse.Namespace, machine: Machine) -> list[Target]:
        return []


SECTION = Video()
