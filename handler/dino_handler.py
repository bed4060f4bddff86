"""TorchServe handler: a thin adapter over ``model.service`` (the engine-agnostic core).

TorchServe unpacks the .mar into ``model_dir`` (on the worker's ``sys.path``), so the ``model``
package archived beside this file is importable. Settings come from model-config.yaml's
``handler:`` section; the device from TorchServe's ``gpu_id``.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path

from model.service import AttentionService, create_service, select_device

logger = logging.getLogger(__name__)


class DinoAttentionHandler:
    """Per-head [CLS] attention of a DINO ViT, one JSON answer per request of a batch."""

    def __init__(self) -> None:
        self.service: AttentionService | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        properties = context.system_properties
        serialized = context.manifest.get("model", {}).get("serializedFile")
        weights = Path(properties["model_dir"]) / serialized if serialized else None
        settings = (context.model_yaml_config or {}).get("handler", {})
        self.service = create_service(settings, weights, select_device(properties.get("gpu_id")))
        self.initialized = True

    def handle(self, data: list[dict], context) -> list[bytes]:
        accepts = [context.get_request_header(idx, "Accept") or context.get_request_header(idx, "accept") for idx in range(len(data))]
        replies = self.service.handle(data, accepts)
        for idx, reply in enumerate(replies):
            context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, idx)
            context.set_response_content_type(idx, reply.content_type)
            for key, value in reply.headers.items():
                context.set_response_header(idx, key, value)
        return [reply.body for reply in replies]
