"""Lay out an archive the way KServe's TorchServe runtime reads its storage URI.

    python -m scripts.kserve_bundle --model-name dino_vits8      # -> build/kserve/{config,model-store}

    build/kserve/config/config.properties   TorchServe config: port 8085 (KServe's runtime), model_snapshot, Prometheus metrics
    build/kserve/config/metrics.yaml        the handler's metrics declared (see metrics.yaml)
    build/kserve/model-store/dino_vits8.mar

Upload the folder (e.g. ``gsutil cp -r build/kserve gs://bucket/dino``) and point an
InferenceService's ``storageUri`` at it (deploy/kserve/inferenceservice*.yaml).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import yaml

from scripts import KSERVE_TORCHSERVE_PORT, REPO
from vitscope import layout
from vitscope.model.variants import DEFAULT_MODEL

logger = logging.getLogger("kserve_bundle")

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's contents
# model-config.yaml keys that TorchServe's model_snapshot also carries
SNAPSHOT_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")


def snapshot(model_name: str, model_config: dict) -> dict:
    """TorchServe's model_snapshot for one model, with the worker/batch settings of model-config.yaml."""
    settings = {key: model_config[key] for key in SNAPSHOT_KEYS if key in model_config}
    return {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {model_name: {"1.0": {"defaultVersion": True, "marName": f"{model_name}.mar", **settings}}},
    }


def config_properties(model_name: str, model_config: dict) -> str:
    lines = [
        "# TorchServe config for KServe's TorchServe runtime (written by `make kserve-bundle`).",
        f"# KServe sends v1 (/v1/models/{{m}}:predict) and v2 (/v2/models/{{m}}/infer) requests to port {KSERVE_TORCHSERVE_PORT}.",
        f"inference_address=http://0.0.0.0:{KSERVE_TORCHSERVE_PORT}",
        f"management_address=http://0.0.0.0:{KSERVE_TORCHSERVE_PORT}",
        "metrics_address=http://0.0.0.0:8082",
        "grpc_inference_port=7070",
        "grpc_management_port=7071",
        "# The handler speaks KServe v1/v2 itself (v2 outputs as [heads, H, W] tensors with metadata",
        "# parameters, batching kept). TorchServe's own envelopes flatten v2 outputs and answer only the",
        "# first request of a batch, so TS_SERVICE_ENVELOPE (set by KServe's controller) is ignored.",
        "enable_envvars_config=false",
        "# Inside the cluster KServe's ingress authenticates; the model API stays off.",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "allowed_urls=file://.*\\\\.mar",
        "install_py_dep_per_model=false",
        "metrics_mode=prometheus",
        f"metrics_config={MOUNT}/config/metrics.yaml",
        "max_response_size=268435456",
        "max_request_size=31457280",
        "disable_system_metrics=true",
        f"model_store={MOUNT}/model-store",
        f"model_snapshot={json.dumps(snapshot(model_name, model_config), separators=(',', ':'))}",
    ]
    return "\n".join(lines) + "\n"


def bundle(model_name: str, model_store: Path, out: Path) -> Path:
    """Write the KServe storage layout for ``model_store/<model_name>.mar`` into ``out``."""
    mar = model_store / f"{model_name}.mar"
    if not mar.is_file():
        raise FileNotFoundError(f"{mar} not found: run `make archive` first")
    model_config = yaml.safe_load((REPO / layout.MODEL_CONFIG).read_text())
    if out.exists():
        shutil.rmtree(out)
    (out / "config").mkdir(parents=True)
    (out / "model-store").mkdir()
    (out / "config" / "config.properties").write_text(config_properties(model_name, model_config))
    shutil.copy2(REPO / "metrics.yaml", out / "config" / "metrics.yaml")
    shutil.copy2(mar, out / "model-store" / mar.name)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default=DEFAULT_MODEL)
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "kserve")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        out = bundle(args.model_name, args.model_store, args.out)
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 2
    logger.info("wrote %s (config/config.properties, config/metrics.yaml, model-store/%s.mar)", out, args.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
