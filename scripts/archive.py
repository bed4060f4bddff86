"""Archive a DINO, DINOv2 or DINOv3 ViT into ``model_store/<name>.mar`` with torch-model-archiver.

    python -m scripts.archive --model vit_small --patch 8                     # DINO's dino_vits8, cached official weights
    python -m scripts.archive --model dino_vits8 --weights dino_deitsmall8_pretrain.pth
    python -m scripts.archive --model dinov2_vits14_reg --weights random
    python -m scripts.archive --model dinov3_vits16 --weights dinov3_vits16_pretrain_lvd1689m-08c60483.pth

The checkpoint (plain backbone or full DINO checkpoint) is filtered to the backbone and checked
strictly against the model here, so a mismatched checkpoint fails the archive, not the server.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from dino_attention import layout
from dino_attention.model.checkpoint import (
    RANDOM_WEIGHTS,
    CheckpointError,
    build_model,
    filter_state_dict,
    read_checkpoint,
    sha256_of,
    weights_tag,
)
from dino_attention.model.variants import CHECKPOINTS, DEFAULT_CHECKPOINTS, Variant, get_variant
from dino_attention.service import ConfigError, ServiceConfig
from scripts import REPO
from scripts.weights import WeightsError, add_model_arguments, cached_weights, default_cache_dir, verify_hash_in_name

logger = logging.getLogger("archive")

PACKAGE = REPO / "dino_attention"  # the core: everything the worker imports, nothing else
HANDLER = REPO / "handler" / "dino_handler.py"
MODEL_CONFIG = REPO / layout.MODEL_CONFIG  # the shipped settings, the template of every archive's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument(
        "--weights", default="", help=f"checkpoint path, or '{RANDOM_WEIGHTS}'; default: the cached official weights (make weights)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default: $DINO_WEIGHTS_DIR or ./weights)")
    parser.add_argument("--fallback-random", action="store_true", help="without cached weights, archive random ones (make demo)")
    parser.add_argument("--checkpoint-key", default=None, help="entry of a full checkpoint (default: teacher, then student)")
    parser.add_argument("--checkpoint", choices=sorted(CHECKPOINTS), help="cached official checkpoint (default: the variant's)")
    parser.add_argument("--export-path", type=Path, default=REPO / "model_store")
    parser.add_argument("--config", type=Path, default=MODEL_CONFIG, help="model-config.yaml to archive")
    parser.add_argument("--print-name", action="store_true", help="print the archive name (e.g. dino_vits8) and exit")
    return parser.parse_args(argv)


def handler_config(config_path: Path, variant: Variant, weights: str) -> dict:
    """model-config.yaml contents with the handler's model and weights tag filled in."""
    config = yaml.safe_load(config_path.read_text()) or {}
    config["handler"] = {**config.get("handler", {}), "model": variant.name, "weights": weights}
    ServiceConfig.from_mapping(config["handler"])  # fail here, not in the worker
    return config


def stage_weights(weights: str, variant: Variant, checkpoint_key: str | None, stage: Path) -> tuple[Path | None, str]:
    """Write the strictly-checked backbone state_dict into ``stage``; return (path or None, weights tag)."""
    if weights == RANDOM_WEIGHTS:
        logger.warning("archiving %s with RANDOM weights: attention maps will be noise", variant.name)
        return None, RANDOM_WEIGHTS
    digest = sha256_of(weights) if Path(weights).is_file() else None  # once: for the name's hash and the tag
    if digest is not None:
        verify_hash_in_name(Path(weights), digest)
    state = filter_state_dict(read_checkpoint(weights), checkpoint_key)
    build_model(variant, state)  # strict key/shape check; raises CheckpointError listing keys
    path = stage / layout.WEIGHTS_FILE
    torch.save(state, path)
    return path, weights_tag(weights, digest)


# Modules of the package used only while archiving (other libraries' checkpoints are converted to the
# hub layout here): the worker never imports them, so the .mar does not ship them.
ARCHIVE_TIME_MODULES = ("keymaps.py",)


def archive(args: argparse.Namespace, variant: Variant) -> Path:
    """Stage the package, weights and config, then run torch-model-archiver; return the .mar path."""
    with tempfile.TemporaryDirectory(prefix="dino-archive-") as tmp:
        stage = Path(tmp)
        # --extra-files copies a directory's *contents* into the archive root, so the package is
        # staged one level down to arrive as dino_attention/ (importable from TorchServe's model_dir).
        ignored = shutil.ignore_patterns("__pycache__", "*.pyc", *ARCHIVE_TIME_MODULES)
        shutil.copytree(PACKAGE, stage / "extra" / PACKAGE.name, ignore=ignored)
        weights_path, tag = stage_weights(args.weights, variant, args.checkpoint_key, stage)
        config_path = stage / layout.MODEL_CONFIG
        config_path.write_text(yaml.safe_dump(handler_config(args.config, variant, tag), sort_keys=False))
        args.export_path.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name",
            variant.name,
            "--version",
            "1.0",
            "--handler",
            str(HANDLER),
            "--extra-files",
            str(stage / "extra"),
            "--config-file",
            str(config_path),
            "--export-path",
            str(args.export_path),
            "--force",
        ]
        if weights_path is not None:
            cmd += ["--serialized-file", str(weights_path)]
        subprocess.run(cmd, check=True)
    return args.export_path / f"{variant.name}.mar"


BANNER_LINES = (
    "NO DINO WEIGHTS: archiving an UNTRAINED model (WEIGHTS=random).",
    'Attention maps will be noise and every response says "weights": "random".',
    "Fetch the real ones with `make weights`, then `make archive` again.",
)
RANDOM_BANNER = "\n".join(["", "#" * 84, *(f"#  {line:<78}  #" for line in BANNER_LINES), "#" * 84])


def resolve_cached(variant: Variant, cache_dir: Path, fallback_random: bool, name: str | None = None) -> str:
    """Path of the variant's cached official checkpoint; 'random' (loudly) or ``WeightsError`` without one."""
    path = cached_weights(variant, cache_dir, name)
    if path is not None:
        return str(path)
    if fallback_random:
        logger.warning("%s", RANDOM_BANNER)
        return RANDOM_WEIGHTS
    official = DEFAULT_CHECKPOINTS.get(variant.name)
    gated = CHECKPOINTS[official].gated_message() if official else ""
    raise WeightsError(
        f"no cached weights for {variant.name} in {cache_dir}: "
        + (gated if gated else f"run `make weights MODEL={variant.name}`, or pass WEIGHTS=path/to/checkpoint.pth")
        + " (or WEIGHTS=random for an untrained model)"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        variant = get_variant(args.model, args.patch)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    if args.print_name:
        print(variant.name)
        return 0
    try:
        cache_dir = args.cache_dir or default_cache_dir()
        args.weights = args.weights or resolve_cached(variant, cache_dir, args.fallback_random, args.checkpoint)
        mar = archive(args, variant)
    except (CheckpointError, ConfigError, WeightsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    except subprocess.CalledProcessError as e:
        logger.error("torch-model-archiver failed with exit code %d", e.returncode)
        return 1
    logger.info("wrote %s (%s, weights: %s)", mar, variant.name, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
