"""Archive a DINO, DINOv2 or DINOv3 ViT into ``model_store/<name>.mar`` with torch-model-archiver.

    python -m scripts.archive --model vit_small --patch 8                     # DINO's dino_vits8, cached official weights
    python -m scripts.archive --model dino_vits8 --weights dino_deitsmall8_pretrain.pth
    python -m scripts.archive --model dinov2_vits14_reg --weights random
    python -m scripts.archive --model dinov3_vits16 --weights dinov3_vits16_pretrain_lvd1689m-08c60483.pth
    python -m scripts.archive --weights path/to/hf_model_dir --name rad_dino     # a Hugging Face directory: its config.json
    python -m scripts.archive --model dinov2_vits14_reg --weights timm_model.safetensors --name my_vit

The checkpoint (a hub, timm or Hugging Face layout; a plain backbone or a training checkpoint) is
converted to the hub's layout and checked strictly against the model here
(``vitscope/model/sources.py``), so a mismatched checkpoint fails the archive, not the server,
and nothing is written to the export path.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from scripts import REPO
from scripts.weights import DEFAULT_MODEL_ARG, WeightsError, add_model_arguments, cached_weights, default_cache_dir, verify_hash_in_name
from vitscope import layout
from vitscope.model.catalogue import CHECKPOINTS, DEFAULT_CHECKPOINTS
from vitscope.model.checkpoint import RANDOM_WEIGHTS, CheckpointError, weights_tag
from vitscope.model.sources import default_name, load_checkpoint
from vitscope.model.variants import VARIANTS, Variant, get_variant, variant_to_mapping
from vitscope.service import ConfigError, ServiceConfig

logger = logging.getLogger("archive")

PACKAGE = REPO / "vitscope"  # the core: everything the worker imports, nothing else
HANDLER = REPO / "handler" / "vitscope_handler.py"
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
    parser.add_argument(
        "--name", default=None, help="the served name (model_store/<name>.mar, /predictions/<name>); default: the model's hub name"
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Staged:
    """The weights written for the archive (None: random), with what the archive records of them."""

    path: Path | None
    tag: str  # "file@sha256:<prefix>" or "random": every response's ``weights``
    variant: Variant  # the model that serves them (``architecture:`` where it is not a hub variant as is)
    source: str = ""  # what they were read from: "huggingface dinov2 (model.safetensors)", ...


def handler_config(config_path: Path, staged: Staged) -> dict:
    """model-config.yaml contents with the handler's model, weights tag, source and (for a model
    built from its checkpoint) architecture filled in."""
    config = yaml.safe_load(config_path.read_text()) or {}
    variant = staged.variant
    handler = {**config.get("handler", {}), "model": variant.name, "weights": staged.tag}
    if staged.source:
        handler["source"] = staged.source
    if VARIANTS.get(variant.name) != variant:  # derived from the checkpoint, or renamed: the worker cannot look it up
        handler["architecture"] = variant_to_mapping(variant)
    config["handler"] = handler
    ServiceConfig.from_mapping(handler)  # fail here, not in the worker
    return config


def base_variant(args: argparse.Namespace) -> Variant | None:
    """The hub variant MODEL= names; None for a Hugging Face directory given without MODEL= (its
    config.json says); DINO's vit_small/8 when neither says."""
    if args.model is None and args.weights and Path(args.weights).is_dir():
        return None
    return get_variant(args.model or DEFAULT_MODEL_ARG, args.patch)


def served_name(args: argparse.Namespace, base: Variant | None) -> str:
    """NAME=, else a Hugging Face directory's name, else the hub name."""
    if args.name:
        return args.name
    if base is None or (args.weights and Path(args.weights).is_dir()):
        return default_name(Path(args.weights))
    return base.name


def stage_weights(args: argparse.Namespace, base: Variant | None, stage: Path) -> Staged:
    """Write the strictly-checked backbone state_dict (in the hub's layout) into ``stage``."""
    name = served_name(args, base)
    if args.weights == RANDOM_WEIGHTS:
        if base is None:
            raise CheckpointError("WEIGHTS=random needs MODEL= (the architecture to initialise)")
        logger.warning("archiving %s with RANDOM weights: attention maps will be noise", name)
        return Staged(None, RANDOM_WEIGHTS, replace(base, name=name))
    if base is not None and Path(args.weights).is_dir() and args.model:
        logger.warning("MODEL=%s ignored: %s/config.json describes the model", args.model, args.weights)
    loaded = load_checkpoint(args.weights, base, name, args.checkpoint_key)
    verify_hash_in_name(loaded.file, loaded.sha256)
    path = stage / layout.WEIGHTS_FILE
    torch.save(loaded.state, path)
    return Staged(path, weights_tag(loaded.file, loaded.sha256), loaded.variant, loaded.source)


# Modules of the package used only while archiving (other libraries' checkpoints are converted to the
# hub layout here): the worker never imports them, so the .mar does not ship them.
ARCHIVE_TIME_MODULES = ("keymaps.py", "sources.py")


def archive(args: argparse.Namespace, base: Variant | None) -> Path:
    """Stage the package, weights and config, then run torch-model-archiver; return the .mar path."""
    with tempfile.TemporaryDirectory(prefix="dino-archive-") as tmp:
        stage = Path(tmp)
        # --extra-files copies a directory's *contents* into the archive root, so the package is
        # staged one level down to arrive as vitscope/ (importable from TorchServe's model_dir).
        ignored = shutil.ignore_patterns("__pycache__", "*.pyc", *ARCHIVE_TIME_MODULES)
        shutil.copytree(PACKAGE, stage / "extra" / PACKAGE.name, ignore=ignored)
        staged = stage_weights(args, base, stage)
        variant = staged.variant
        config_path = stage / layout.MODEL_CONFIG
        config_path.write_text(yaml.safe_dump(handler_config(args.config, staged), sort_keys=False))
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
        if staged.path is not None:
            cmd += ["--serialized-file", str(staged.path)]
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
        base = base_variant(args)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    if args.print_name:
        print(served_name(args, base))
        return 0
    try:
        cache_dir = args.cache_dir or default_cache_dir()
        if not args.weights:
            args.weights = resolve_cached(
                get_variant(args.model or DEFAULT_MODEL_ARG, args.patch), cache_dir, args.fallback_random, args.checkpoint
            )
        mar = archive(args, base)
    except (CheckpointError, ConfigError, WeightsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    except subprocess.CalledProcessError as e:
        logger.error("torch-model-archiver failed with exit code %d", e.returncode)
        return 1
    logger.info("wrote %s (weights: %s)", mar, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
