"""Fetch the official DINO / DINOv2 weights once into a local cache, verified; find them for archiving.

    python -m scripts.weights fetch --model vit_small --patch 8       # DINO's dino_vits8, its default checkpoint
    python -m scripts.weights fetch --model dinov2_vits14_reg
    python -m scripts.weights fetch --checkpoint dino_vitbase16_pretrain_full_checkpoint --model dino_vitb16
    python -m scripts.weights list

Each file is verified against the size/sha256 in ``vitscope.model.catalogue.CHECKPOINTS`` where
published, and against the sha256 prefix in its name where it has one (DINOv3); otherwise the sha256
of the first verified download is recorded beside it (``<file>.sha256``) and checked on every later
use. Every file must also load strictly into its model. DINOv3's weights are gated behind Meta's
request form: fetching them says how to get them (or set $DINO_WEIGHTS_URL to your mirror).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from scripts import REPO
from scripts.download import DownloadError, download, partial_path
from vitscope.model.catalogue import CHECKPOINTS, DEFAULT_CHECKPOINTS, WEIGHTS_URL_ENV, Checkpoint, get_checkpoint, official_checkpoint
from vitscope.model.checkpoint import CheckpointError, build_model, filter_state_dict, read_checkpoint, sha256_of
from vitscope.model.towers import OPEN_CLIP_SPEC, TIMM_SPEC
from vitscope.model.variants import DINO_ARCHS, DINO_PATCH_SIZES, VARIANTS, Variant, get_variant

logger = logging.getLogger("weights")

CACHE_ENV = "DINO_WEIGHTS_DIR"


class WeightsError(RuntimeError):
    """Weights could not be fetched or verified; the message says what to do."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / "weights")


def record_path(path: Path) -> Path:
    """The sha256 recorded at the first verified download of ``path``."""
    return path.with_name(path.name + ".sha256")


def verify_hash_in_name(path: Path, digest: str) -> None:
    """A file named as an official checkpoint with a hash in its name (DINOv3's ``-<sha256 prefix>.pth``)
    must have that hash (``digest``, its sha256), so a truncated or substituted download fails here
    rather than in a worker."""
    checkpoint = official_checkpoint(path.name)
    prefix = checkpoint.hash_prefix if checkpoint is not None else None
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"{path}: its sha256 does not start with {prefix}, the hash in the official file name; download it again")


def verify_cached(path: Path, checkpoint: Checkpoint) -> None:
    """Check a cached file against the hash in its name, and the published sha256, else the recorded one."""
    digest = sha256_of(path)
    verify_hash_in_name(path, digest)
    expected = checkpoint.sha256
    if expected is None and record_path(path).exists():
        expected = record_path(path).read_text().split()[0]
    if expected is not None and digest != expected:
        raise WeightsError(f"{path} does not match its sha256 {expected} (corrupted or replaced?); delete it and run `make weights` again")


def cached_weights(variant: Variant, cache_dir: Path, name: str | None = None) -> Path | None:
    """The verified cached checkpoint of the variant (its default one unless ``name``), or None.

    ``ValueError`` if ``name`` is not a checkpoint of this variant.
    """
    if name is None and variant.name not in DEFAULT_CHECKPOINTS:
        return None  # no official weights for it
    checkpoint = get_checkpoint(variant, name)
    path = cache_dir / checkpoint.filename
    if not path.is_file():
        return None
    verify_cached(path, checkpoint)
    return path


def fetch(variant: Variant, checkpoint: Checkpoint, cache_dir: Path, progress=None) -> Path:
    """Download (or find) ``checkpoint`` in ``cache_dir``, verify it and return its path."""
    dest = cache_dir / checkpoint.filename
    if dest.is_file():
        verify_cached(dest, checkpoint)
        logger.info("%s is already in the cache", dest)
        return dest
    if checkpoint.gated_message() and not os.environ.get(WEIGHTS_URL_ENV):
        raise WeightsError(checkpoint.gated_message())
    url = checkpoint.url()
    try:
        download(url, dest, expected_size=checkpoint.size, expected_sha256=checkpoint.sha256, progress=progress)
    except DownloadError as e:
        kept = partial_path(dest)
        raise WeightsError(
            f"{e}\n"
            f"  To fetch it by other means, put the file at {dest} (or set {WEIGHTS_URL_ENV} to a mirror).\n"
            + (f"  The partial download {kept} is kept: `make weights` again resumes it.\n" if kept.exists() else "")
            + "  To try the pipeline without it: make archive WEIGHTS=random (an untrained model)."
        ) from e
    digest = sha256_of(dest)
    try:
        verify_hash_in_name(dest, digest)
        build_model(variant, filter_state_dict(read_checkpoint(dest)))
    except (CheckpointError, WeightsError) as e:
        dest.unlink()
        raise WeightsError(f"{url} is not the {variant.name} checkpoint (removed): {e}") from e
    if checkpoint.sha256 is None:
        record_path(dest).write_text(f"{digest}  {dest.name}\n")
    logger.info("verified %s", dest)
    return dest


def progress_bar(done: int, total: int | None) -> None:
    mb = done / 1e6
    text = f"{mb:8.1f} / {total / 1e6:.1f} MB {100 * done / total:3.0f}%" if total else f"{mb:8.1f} MB"
    sys.stderr.write(f"\r  {text}")
    if total and done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


DEFAULT_MODEL_ARG = "vit_small"  # MODEL= when none is given (with PATCH=8: dino_vits8, DEFAULT_MODEL)


LIBRARY_SPECS = (TIMM_SPEC, OPEN_CLIP_SPEC)  # --model timm:<model name> / open_clip:<config>: the library describes the model


def model_name(value: str) -> str:
    """A --model value of the archiver: a hub name, DINO's size, or a library spec (``LIBRARY_SPECS``)."""
    if value in VARIANTS or value in DINO_ARCHS or (value.startswith(LIBRARY_SPECS) and value.split(":", 1)[1]):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a hub name {sorted(VARIANTS)}, DINO's {sorted(DINO_ARCHS)}, or timm:<model name> / open_clip:<config>"
    )


def add_model_arguments(parser: argparse.ArgumentParser, specs: bool = False) -> None:
    """--model (a hub name, or DINO's vit_tiny/small/base with --patch 8|16; default ``DEFAULT_MODEL_ARG``;
    with ``specs``, also timm:<model name> and open_clip:<config>) and --patch."""
    if specs:
        parser.add_argument(
            "--model",
            default=None,
            type=model_name,
            help=f"hub name, DINO's size with --patch (default {DEFAULT_MODEL_ARG}), timm:<model name> or open_clip:<config>",
        )
    else:
        parser.add_argument(
            "--model",
            default=None,
            choices=sorted(VARIANTS) + sorted(DINO_ARCHS),
            help=f"hub name, or DINO's size with --patch (default {DEFAULT_MODEL_ARG})",
        )
    parser.add_argument("--patch", type=int, default=None, choices=DINO_PATCH_SIZES, help="DINO's patch size (default 8) for --model vit_*")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("fetch", "list"))
    add_model_arguments(parser)
    parser.add_argument("--checkpoint", choices=sorted(CHECKPOINTS), help="default: the variant's default checkpoint")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: ${CACHE_ENV} or ./weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "list":
        for c in CHECKPOINTS.values():
            state = "cached" if (cache_dir / c.filename).is_file() else "-"
            kind = "full" if c.full else "gated" if c.gated_message() else "backbone"
            print(f"{c.name:48} {c.model:18} {kind:9} {state:7} {c.url()}")
        return 0
    try:
        variant = get_variant(args.model or DEFAULT_MODEL_ARG, args.patch)
        checkpoint = get_checkpoint(variant, args.checkpoint)
        logger.info("fetching %s from %s into %s", checkpoint.filename, checkpoint.url(), cache_dir)
        fetch(variant, checkpoint, cache_dir, progress=progress_bar if sys.stderr.isatty() else None)
    except (ValueError, WeightsError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
