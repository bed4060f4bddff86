"""What a model archive holds, by name: written by ``scripts/archive.py``, read by both engines
(TorchServe unpacks it into ``model_dir``; ``kserve_engine`` unpacks it itself)."""

from __future__ import annotations

MODEL_CONFIG = "model-config.yaml"  # the handler's settings and TorchServe's worker/batch settings
WEIGHTS_FILE = "dino_backbone.pth"  # the filtered state_dict (the manifest's serializedFile); absent for random weights
MANIFEST = "MAR-INF/MANIFEST.json"  # torch-model-archiver's manifest: model name, version, serializedFile
