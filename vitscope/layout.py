"""What a model archive holds, by name: written by ``scripts/archive.py``, read by both engines
(TorchServe unpacks it into ``model_dir``; ``kserve_engine`` unpacks it itself)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MODEL_CONFIG = "model-config.yaml"  # the handler's settings and TorchServe's worker/batch settings
WEIGHTS_FILE = "dino_backbone.pth"  # the filtered state_dict (the manifest's serializedFile); absent for random weights
TOKENIZER_DIR = "tokenizer"  # a text tower's tokenizer files (model/tokenizer.py), for CLIP and SigLIP archives
MANIFEST = "MAR-INF/MANIFEST.json"  # torch-model-archiver's manifest: model name, version, serializedFile
DEFAULT_RESPONSE_TIMEOUT_S = 120.0  # s: TorchServe's responseTimeout when model-config.yaml sets none
DEFAULT_JOB_QUEUE_SIZE = 100  # TorchServe's job_queue_size when model-config.yaml sets no jobQueueSize


def weights_in(folder: Path, manifest: Mapping[str, object]) -> Path | None:
    """The weights file of an archive unpacked into ``folder``: its manifest's ``serializedFile``, as
    TorchServe finds it; None for a random-weights archive. ``FileNotFoundError`` if it is missing."""
    model = manifest.get("model")
    serialized = model.get("serializedFile") if isinstance(model, Mapping) else None
    if not serialized:
        return None
    weights = Path(folder) / str(serialized)
    if not weights.is_file():
        raise FileNotFoundError(
            f"the archive's manifest names the weights {serialized}, which {folder} lacks: archive again (make archive)"
        )
    return weights
