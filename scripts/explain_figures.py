"""The pictures of docs/explain.md: each explanation method's maps on the constructed models of
``testkit/constructed.py``, whose class k (and prompt k) is driven by region k's patches only.

    python -m scripts.explain_figures                 # writes docs/explain_regions.png

Rows: ``legrad``, ``chefer``, ``gradcam``. Columns: the image (left half red: region 0, right half
blue: region 1), then the map of each target, titled with the target and the score the server
answered: the region classifier's class 0 and class 1, the region CLIP's ``text:red`` and
``text:blue``; each map on its own scale, bright where relevant. Needs open_clip (a test
dependency) for CLIP's BPE file; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scripts import REPO
from testkit.checkpoints import encode
from testkit.constructed import (
    REGION_CLASSIFIER,
    REGION_CLIP,
    REGION_PROMPTS,
    REGION_TEXT,
    SIZE,
    region_classifier,
    region_clip,
    region_image,
)
from vitscope.errors import RequestError
from vitscope.model.tokenizer import OPENCLIP_BPE, ClipTokenizer
from vitscope.model.variants import Variant
from vitscope.model.vit import VisionTransformer
from vitscope.precision import PrecisionPlan
from vitscope.predictions import Predictor
from vitscope.schema import AttentionResult, ImageRequest
from vitscope.service import AttentionService, ServiceConfig

logger = logging.getLogger("scripts.explain_figures")

METHODS = ("legrad", "chefer", "gradcam")
OUT = REPO / "docs" / "explain_regions.png"


def service(variant: Variant, model: VisionTransformer, predictor: Predictor | None = None) -> AttentionService:
    """The constructed model served exactly (fp32), its image taken as it is (32 x 32)."""
    config = ServiceConfig.from_mapping({"model": variant.name, "weights": "constructed", "short_side": SIZE})
    return AttentionService(model, variant, config, precisions=PrecisionPlan.fp32_only(), predictor=predictor)


def explain(served: AttentionService, image: bytes, method: str, targets: list[str]) -> AttentionResult:
    (result,) = served.explain([ImageRequest(image, {"method": method, "target": targets})])
    if isinstance(result, RequestError):
        raise RuntimeError(f"{served.variant.name} refused method={method} target={targets}: {result}")
    return result


def draw(out: Path, seed: int = 0) -> Path:
    """The figure, written to ``out``."""
    import open_clip

    tokenizer = ClipTokenizer.from_bpe_file(Path(open_clip.__file__).parent / OPENCLIP_BPE, REGION_TEXT.context_length)
    clip = region_clip(tokenizer)
    models = (
        (service(REGION_CLASSIFIER, region_classifier()), ["0", "1"], "region classifier"),
        (service(REGION_CLIP, clip, Predictor(clip, (), tokenizer)), [f"text:{p}" for p in REGION_PROMPTS], "region CLIP"),
    )
    pixels = region_image(seed)
    image = encode(pixels)
    columns = 1 + sum(len(targets) for _, targets, _ in models)
    fig = Figure(figsize=(2.0 * columns, 2.1 * len(METHODS)), dpi=100, layout="constrained")
    fig.suptitle("Each method's map per target, on models whose target k is driven by region k only (constructed, not trained)", fontsize=9)
    axes = fig.subplots(len(METHODS), columns, squeeze=False)
    for row, method in enumerate(METHODS):
        axes[row, 0].imshow(pixels, interpolation="nearest")
        axes[row, 0].set_title(f"{method}\nimage: red | blue", fontsize=8)
        column = 1
        for served, targets, name in models:
            result = explain(served, image, method, targets)
            relevance = np.asarray(result.arrays["relevance"])  # (targets, H, W), in pixels
            for k, target in enumerate(result.targets or []):
                ax = axes[row, column]
                ax.imshow(relevance[k], cmap="inferno", interpolation="nearest")  # bright: relevant
                said = target.get("label") or target["target"]
                ax.set_title(f"{name}\n{said} ({float(str(target['score'])):.3g})", fontsize=8)
                column += 1
    for ax in axes.flat:
        ax.set_axis_off()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    logger.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG to write (default: {OUT.relative_to(REPO)})")
    parser.add_argument("--seed", type=int, default=0, help="the noise of the region image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draw(args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
