"""Synthetic video clips for the video tests and the docs' frame strip (docs/client.md)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .checkpoints import TINY

P = TINY.patch_size  # 16
H, W, FRAMES, FPS = 6 * P, 24 * P, 24, 12  # the square crosses 24 patch columns in 24 frames
ROW = 2  # the square's patch row


def write_clip(path: Path, frames: int = FRAMES, fps: int = FPS, size: tuple[int, int] = (H, W), square: bool = True) -> Path:
    """A dark clip in which a bright patch-sized square moves one patch right per frame (H.264)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for k in range(frames):
            rgb = np.full((*size, 3), 20, dtype=np.uint8)
            if square:
                col = k % (size[1] // P)
                rgb[ROW * P : (ROW + 1) * P, col * P : (col + 1) * P] = 235
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path
