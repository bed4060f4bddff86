"""The docs' video frame strip (docs/video_strip.png): a synthetic clip of a bright square moving
right, explained frame by frame by a CONSTRUCTED model (its block-0 [CLS] seeks bright patches; no
trained weights), through the real handler in process and the video client, six frames of the
output shown side by side and labelled as such.

    python -m scripts.video_strip [--out docs/video_strip.png]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import av
import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from scripts import REPO
from vitscope.model.checkpoint import build_model
from vitscope.precision import PrecisionPlan
from vitscope.service import AttentionService, ServiceConfig

logger = logging.getLogger("video_strip")


def decoded(path: Path) -> list:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "video_strip.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(REPO / "client"))  # the client's package, as installed (pip install ./client)
    from testkit.checkpoints import TINY, brightness_seeking_state
    from testkit.clips import H, write_clip
    from testkit.handler import client_requester
    from vitscope_client import VideoOptions, explain_video

    model = build_model(TINY, brightness_seeking_state())
    service = AttentionService(model, TINY, ServiceConfig(model=TINY.name, weights="constructed"), precisions=PrecisionPlan.fp32_only())
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "square.mp4")
        options = VideoOptions(layer=0, short_side=H, mask=0.5)
        explain_video(clip, Path(tmp) / "out.mp4", client_requester(service), options, progress=False)
        rows = [decoded(clip), decoded(Path(tmp) / "out.mp4")]
    shown = list(range(0, len(rows[1]), 4))[:6]
    fig = Figure(figsize=(12, 2.6), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(shown))
    for r, (frames, label) in enumerate(zip(rows, ("input", "output"), strict=True)):
        for ax, k in zip(axes[r], shown, strict=True):
            ax.imshow(frames[k])
            ax.set_title(f"{label}, frame {k}", fontsize=8)
            ax.axis("off")
    fig.suptitle(
        "--video with a CONSTRUCTED model (block 0's [CLS] seeks bright patches; not trained weights): "
        "a bright square moving right, its attention and mask outline followed frame by frame",
        fontsize=9,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
