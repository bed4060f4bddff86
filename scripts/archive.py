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
import json
import logging
import os
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
from vitscope.model.sources import base_from_spec, default_name, load_checkpoint
from vitscope.model.tokenizer import TokenizerError, load_tokenizer
from vitscope.model.towers import open_clip_bpe
from vitscope.model.variants import VARIANTS, Variant, get_variant, variant_to_mapping
from vitscope.service import ConfigError, ServiceConfig

logger = logging.getLogger("archive")
IMAGENET_CLASSES = 1000

PACKAGE = REPO / "vitscope"  # the core: everything the worker imports, nothing else
HANDLER = REPO / "handler" / "vitscope_handler.py"
MODEL_CONFIG = REPO / layout.MODEL_CONFIG  # the shipped settings, the template of every archive's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, specs=True)
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
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="class names of the model's head: a text file with one per line, or a JSON list (default: the checkpoint's id2label, "
        "or ImageNet's for a 1000-class head)",
    )
    parser.add_argument(
        "--head",
        type=Path,
        default=None,
        help="DINOv2's official linear-classifier head (dinov2_vits14_linear4_head.pth, ...) for a DINOv2 backbone: "
        "served as the hub's dinov2_vit*14_lc",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="folder with the text tower's tokenizer files (tokenizer.json, or vocab.json + merges.txt); default: the Hugging Face "
        "directory's own, or open_clip's BPE vocabulary for CLIP",
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Staged:
    """The weights written for the archive (None: random), with what the archive records of them."""

    path: Path | None
    tag: str  # "file@sha256:<prefix>" or "random": every response's ``weights``
    variant: Variant  # the model that serves them (``architecture:`` where it is not a hub variant as is)
    source: str = ""  # what they were read from: "huggingface dinov2 (model.safetensors)", ...
    labels: tuple[str, ...] = ()  # the head's class names (``handler: labels``)
    tokenizer: tuple[Path, ...] = ()  # the text tower's tokenizer files, archived into TOKENIZER_DIR


def handler_config(config_path: Path, staged: Staged) -> dict:
    """model-config.yaml contents with the handler's model, weights tag, source and (for a model
    built from its checkpoint) architecture filled in."""
    config = yaml.safe_load(config_path.read_text()) or {}
    variant = staged.variant
    handler = {**config.get("handler", {}), "model": variant.name, "weights": staged.tag}
    if staged.source:
        handler["source"] = staged.source
    if staged.labels:
        handler["labels"] = list(staged.labels)
    if staged.tokenizer:
        handler["tokenizer"] = layout.TOKENIZER_DIR
    if VARIANTS.get(variant.name) != variant:  # derived from the checkpoint, or renamed: the worker cannot look it up
        handler["architecture"] = variant_to_mapping(variant)
    config["handler"] = handler
    ServiceConfig.from_mapping(handler).check_heads(variant)  # fail here, not in the worker
    return config


def base_variant(args: argparse.Namespace) -> Variant | None:
    """The model MODEL= names: a hub variant, or what timm / open_clip say of ``timm:<name>`` /
    ``open_clip:<config>``; None for a Hugging Face directory given without MODEL= (its config.json
    says); DINO's vit_small/8 when neither says."""
    if args.model is None and args.weights and Path(args.weights).is_dir():
        return None
    spec = base_from_spec(args.model or "", args.name)
    return spec if spec is not None else get_variant(args.model or DEFAULT_MODEL_ARG, args.patch)


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
        if args.head is not None:
            raise CheckpointError("HEAD= joins DINOv2's linear head to a backbone: give the backbone as WEIGHTS=, not random")
        logger.warning("archiving %s with RANDOM weights: attention maps will be noise", name)
        variant = replace(base, name=name)
        return Staged(None, RANDOM_WEIGHTS, variant, "", head_labels(args, variant, ()), tokenizer_files(args, variant))
    if base is not None and Path(args.weights).is_dir() and args.model:
        logger.warning("MODEL=%s ignored: %s/config.json describes the model", args.model, args.weights)
    loaded = load_checkpoint(args.weights, base, name, args.checkpoint_key, args.head)
    verify_hash_in_name(loaded.file, loaded.sha256)
    path = stage / layout.WEIGHTS_FILE
    labels, tokenizer = head_labels(args, loaded.variant, loaded.labels), tokenizer_files(args, loaded.variant)
    torch.save(loaded.state, path)
    return Staged(path, weights_tag(loaded.file, loaded.sha256), loaded.variant, loaded.source, labels, tokenizer)


def head_labels(args: argparse.Namespace, variant: Variant, own: tuple[str, ...]) -> tuple[str, ...]:
    """The class names of the model's head: LABELS=, else the checkpoint's own (id2label), else ImageNet's
    for a 1000-class head (timm's list); () for a model without a head. ``CheckpointError`` if they disagree with it."""
    if args.labels is None and not variant.num_classes:
        return ()
    if args.labels is not None:
        if not variant.num_classes:
            raise CheckpointError(f"LABELS={args.labels} given, but {variant.name} has no classifier head (its checkpoint holds none)")
        labels = read_labels(args.labels)
    elif own:
        labels = own
    elif variant.num_classes == IMAGENET_CLASSES:
        try:
            from timm.data import ImageNetInfo  # archive time only: the worker reads the archived names
        except ImportError as e:
            raise CheckpointError("ImageNet's class names come from timm: pip install timm, or name the classes with LABELS=") from e
        info = ImageNetInfo()
        labels = tuple(info.index_to_description(i) for i in range(IMAGENET_CLASSES))
    else:
        logger.warning("%s: no class names for its %d classes (LABELS= names them): 'class <i>'", variant.name, variant.num_classes)
        return ()
    if len(labels) != variant.num_classes:
        raise CheckpointError(f"{len(labels)} labels for a head of {variant.num_classes} classes: give one name per class, in order")
    return labels


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names from a file: a JSON list, or one per line (blank lines at the end ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read LABELS={path}: {e}") from e
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"LABELS={path} is not a JSON list of names: {e}") from e
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CheckpointError(f"LABELS={path} must be a JSON list of strings")
        return tuple(value)
    return tuple(text.rstrip("\r\n").splitlines())


def tokenizer_files(args: argparse.Namespace, variant: Variant) -> tuple[Path, ...]:
    """The tokenizer files a text tower needs, checked by loading them (``CheckpointError`` when there are none):
    TOKENIZER=, else those of the Hugging Face directory, else open_clip's BPE vocabulary (CLIP)."""
    if variant.text is None:
        if args.tokenizer is not None:
            raise CheckpointError(f"TOKENIZER={args.tokenizer} given, but {variant.name} has no text tower")
        return ()
    folder = args.tokenizer or (Path(args.weights) if args.weights and Path(args.weights).is_dir() else None)
    if folder is None and variant.text.tokenizer == "clip":
        folder = open_clip_bpe().parent  # the BPE vocabulary in open_clip's wheel
    if folder is None:
        raise CheckpointError(
            f"{variant.name} has a text tower but no tokenizer files: give TOKENIZER=<folder with tokenizer.json> (transformers' "
            "save_pretrained of its tokenizer writes one)"
        )
    text = variant.text
    try:
        tokenizer = load_tokenizer(folder, text.tokenizer, text.context_length, canonicalize=text.canonicalize)
    except TokenizerError as e:
        raise CheckpointError(f"{variant.name}'s text tower: {e}") from e
    return tuple(folder / name for name in tokenizer.files)


# Modules of the package used only while archiving (other libraries' checkpoints are converted to the
# hub layout here): the worker never imports them, so the .mar does not ship them.
ARCHIVE_TIME_MODULES = ("keymaps.py", "sources.py", "towers.py")
# The device decode routes and the size grouping / encode pool (issue 34): built and tested, not yet in
# the request path, so the worker does not import them and the .mar does not ship them yet.
NOT_YET_SERVED_MODULES = ("decoding.py", "batching.py")


def archive(args: argparse.Namespace, base: Variant | None) -> Path:
    """Stage the package, weights and config, then run torch-model-archiver; return the .mar path."""
    with tempfile.TemporaryDirectory(prefix="dino-archive-") as tmp:
        stage = Path(tmp)
        # --extra-files copies a directory's *contents* into the archive root, so the package is
        # staged one level down to arrive as vitscope/ (importable from TorchServe's model_dir).
        ignored = shutil.ignore_patterns("__pycache__", "*.pyc", *ARCHIVE_TIME_MODULES, *NOT_YET_SERVED_MODULES)
        shutil.copytree(PACKAGE, stage / "extra" / PACKAGE.name, ignore=ignored)
        staged = stage_weights(args, base, stage)
        variant = staged.variant
        if staged.tokenizer:
            (stage / "extra" / layout.TOKENIZER_DIR).mkdir()
            for file in staged.tokenizer:
                shutil.copy2(file, stage / "extra" / layout.TOKENIZER_DIR / file.name)
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
        # torch-model-archiver packs in $TMPDIR/<model name>: a folder of this run's own, so that two
        # archives of the same name made at once (two shells, two test workers) do not collide
        (stage / "tmp").mkdir()
        subprocess.run(cmd, check=True, env={**os.environ, "TMPDIR": str(stage / "tmp")})
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
