"""TorchServe handler: a thin adapter over ``model.service`` (the engine-agnostic core).

TorchServe unpacks the .mar into ``model_dir`` (on the worker's ``sys.path``), so the ``model``
package archived beside this file is importable. Settings come from model-config.yaml's
``handler:`` section; the device from TorchServe's ``gpu_id``. Per-request metrics go to
TorchServe's metrics (declared in metrics.yaml, so they reach the Prometheus endpoint).
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path

from ts.metrics.metric_type_enum import MetricTypes

from model import kserve
from model.service import AttentionService, Reply, create_service, select_device

logger = logging.getLogger(__name__)

# Reply.stats key -> (metric name, unit); gauges with dimensions ModelName, Level (as metrics.yaml).
GAUGES = {
    "preprocess_ms": ("DinoPreprocessTime", "ms"),
    "forward_ms": ("DinoForwardTime", "ms"),
    "encode_ms": ("DinoEncodeTime", "ms"),
    "tokens": ("DinoTokens", "count"),
    "response_bytes": ("DinoResponseBytes", "B"),
}
REJECTED = "DinoRejectedRequests"  # counter with dimensions ModelName, Level, Reason
DIMENSIONS = ["ModelName", "Level"]


def header(context, idx: int, name: str) -> str | None:
    """Request header ``name`` of request ``idx``, case-insensitively (clients differ)."""
    wanted = name.lower()
    return next((v for k, v in context.get_all_request_header(idx).items() if k.lower() == wanted), None)


class DinoAttentionHandler:
    """Per-head [CLS] attention of a DINO ViT, one answer per request of a batch."""

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

    def handle(self, data: list, context) -> list:
        if hasattr(context, "input_names") or kserve.is_v1_envelope_batch(data):
            return self.handle_envelope(data, context)
        accepts = [header(context, idx, "Accept") for idx in range(len(data))]
        version = context.manifest.get("model", {}).get("modelVersion", "")
        replies = kserve.handle_rows(self.service, data, accepts, context.model_name, version)
        for idx, reply in enumerate(replies):
            context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, idx)
            context.set_response_content_type(idx, reply.content_type)
            for key, value in reply.headers.items():
                context.set_response_header(idx, key, value)
        self.report(context, replies)
        return [reply.body for reply in replies]

    def handle_envelope(self, data: list, context) -> list:
        """Under TorchServe's kserve/kservev2 envelope, which unwraps requests and JSON-encodes our results."""
        protocol = kserve.V2 if hasattr(context, "input_names") else kserve.V1  # the v2 envelope sets input_names
        results, status, headers = kserve.envelope_results(self.service, data, protocol)
        context.set_response_status(status, HTTPStatus(status).phrase, 0)
        for key, value in headers.items():
            context.set_response_header(0, key, value)
        return results

    @staticmethod
    def report(context, replies: list[Reply]) -> None:
        """Emit each reply's timings and sizes, or its rejection reason, as TorchServe metrics."""
        metrics, dims = context.metrics, [context.model_name, "Model"]
        for reply in replies:
            if reply.reason:
                counter = metrics.add_metric_to_cache(REJECTED, "count", [*DIMENSIONS, "Reason"], MetricTypes.COUNTER)
                counter.add_or_update(1, [*dims, reply.reason])
            for key, value in reply.stats.items():
                name, unit = GAUGES[key]
                metrics.add_metric_to_cache(name, unit, DIMENSIONS, MetricTypes.GAUGE).add_or_update(value, dims)
