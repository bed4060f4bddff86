"""The one way tests write a changed model-config.yaml for ``make archive``'s ``--config``, and archive
the tiny vit_tiny/16 with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from scripts import REPO, archive


def model_config(folder: Path, handler: dict[str, object] | None = None, **frontend: object) -> Path:
    """The shipped model-config.yaml with ``frontend`` settings (``jobQueueSize=1``, ...) and ``handler``
    settings (``{"attention_kernel": "sdpa"}``, ...) changed, written as ``folder/model-config.yaml``: its path."""
    config = yaml.safe_load((REPO / "model-config.yaml").read_text())
    config.update(frontend)
    config["handler"].update(handler or {})
    path = folder / "model-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def archive_tiny(store: Path, weights: str | Path, settings: Path) -> Path:
    """vit_tiny/16 from ``weights`` (a checkpoint, or ``random``) archived into ``store`` with ``settings``
    (``model_config``); the store."""
    args = ["--model", "vit_tiny", "--patch", "16", "--weights", str(weights), "--export-path", str(store), "--config", str(settings)]
    if archive.main(args) != 0:
        raise AssertionError(f"make archive failed: {args}")
    return store
