"""TorchServe handler: a thin adapter over ``vitscope`` (the engine-agnostic core).

TorchServe unpacks the .mar into ``model_dir`` (on the worker's ``sys.path``), so the
``vitscope`` package archived beside this file is importable. Settings come from
model-config.yaml's ``handler:`` section; the device from TorchServe's ``gpu_id``.

One batch, in the shape of TorchServe's ``BaseHandler``:

    preprocess   each row -> its protocol codec -> ImageRequests (or the row's error)
    inference    every ImageRequest of every row, in one ``AttentionService.explain`` call
    postprocess  each row's results -> its codec's Reply: status, content type, headers, metrics

and ``describe_handle`` for TorchServe's describe API (``GET /models/<name>?customized=true``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ts.metrics.metric_type_enum import MetricTypes

from vitscope import layout
from vitscope.errors import RequestError
from vitscope.layout import DEFAULT_RESPONSE_TIMEOUT_S
from vitscope.protocols import route
from vitscope.protocols.base import Codec, Decoded, Reply, Result, ServerInfo, error_reply
from vitscope.service import AttentionService, create_service, select_device

logger = logging.getLogger(__name__)

# Reply.stats key -> (metric name, unit); gauges with dimensions ModelName, Level (as metrics.yaml).
GAUGES = {
    "preprocess_ms": ("DinoPreprocessTime", "ms"),
    "forward_ms": ("DinoForwardTime", "ms"),
    "encode_ms": ("DinoEncodeTime", "ms"),
    "tokens": ("DinoTokens", "count"),
    "response_bytes": ("DinoResponseBytes", "B"),
    "cost_s": ("DinoAdmittedCost", "s"),  # the admitted request's estimated seconds (vitscope/cost.py)
}
REJECTED = "DinoRejectedRequests"  # counter with dimensions ModelName, Level, Reason
DIMENSIONS = ["ModelName", "Level"]


# One request of the batch: its codec, and what decoding it gave (its image requests, or the error).
# A tuple, not a class: TorchServe wants exactly one class in the handler module.
Row = tuple[Codec, Decoded | RequestError]


def request_headers(context: Any, idx: int) -> dict[str, str]:
    """Request ``idx``'s HTTP headers, names in lower case (clients differ); none for the rows
    TorchServe's envelopes split out of one request (only request 0 has headers then)."""
    if idx >= len(context.request_processor or ()):
        return {}
    return {k.lower(): v for k, v in context.get_all_request_header(idx).items()}


def is_describe(context: Any) -> bool:
    """Whether TorchServe's frontend asks for the model's description (its ``describe`` header), as
    ``BaseHandler._is_describe`` reads it."""
    return bool(context.request_processor) and context.get_request_header(0, "describe") == "True"


def is_explain(context: Any, idx: int) -> bool:
    """Whether request ``idx`` came by ``/explanations/<model>`` (TorchServe's ``explain`` header, as
    ``BaseHandler._is_explain`` reads it): its images default to ``method=legrad``."""
    return request_headers(context, idx).get("explain") == "True"


class AttentionHandler:
    """Per-head [CLS] attention of a DINO ViT, one answer per request of a batch."""

    def __init__(self) -> None:
        self.service: AttentionService | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        weights = layout.weights_in(model_dir, context.manifest)
        config = context.model_yaml_config or {}
        timeout = config.get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT_S)  # past it, TorchServe kills this worker
        device = select_device(properties.get("gpu_id"))
        self.service = create_service(config.get("handler", {}), weights, device, float(timeout), model_dir)
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[object]:
        if is_describe(context):
            return [self.describe_handle()]
        rows = self.preprocess(data, context)
        return self.postprocess(rows, self.inference(rows), context)

    def describe_handle(self) -> str:
        """``GET /models/<name>?customized=true``: the service's description (methods, their options and
        outputs, the model's facts) as JSON text; TorchServe sends it as ``customizedMetadata``."""
        assert self.service is not None, "initialize() first"
        return json.dumps(self.service.description())

    def preprocess(self, data: Sequence[object], context: Any) -> list[Row]:
        """Pick each row's codec and decode it; a row that cannot be decoded keeps its error."""
        assert self.service is not None, "initialize() first"
        received = time.time()  # TorchServe does not say when a request arrived: its queue wait is bounded by jobQueueSize
        rows: list[Row] = []
        for idx, raw in enumerate(data):
            headers = request_headers(context, idx)
            codec, row = route(raw, headers)
            try:
                decoded = codec.decode(row, headers)
                if is_explain(context, idx):
                    decoded = self.service.explaining(decoded)
                rows.append((codec, self.service.ingest(decoded, received)))
            except RequestError as e:
                logger.info("request rejected (%d): %s", e.status, e)
                rows.append((codec, e))
        return rows

    def inference(self, rows: Sequence[Row]) -> list[list[Result]]:
        """Every image of every row in one batch (rows of any protocol share forward passes)."""
        assert self.service is not None, "initialize() first"
        groups = [decoded.requests for _, decoded in rows if isinstance(decoded, Decoded)]  # the images of each request
        results = iter(self.service.explain_together(groups))
        return [next(results) if isinstance(decoded, Decoded) else [] for _, decoded in rows]

    def postprocess(self, rows: Sequence[Row], results: Sequence[Sequence[Result]], context: Any) -> list[object]:
        """Each row's reply, with its status, content type and headers set on TorchServe's context."""
        manifest = context.manifest.get("model", {})
        server = ServerInfo(context.model_name, manifest.get("modelVersion", ""))
        replies = []
        for (codec, decoded), row_results in zip(rows, results, strict=True):
            if isinstance(decoded, RequestError):
                replies.append(error_reply(decoded, codec.envelope))
                continue
            start = time.perf_counter()
            reply = codec.encode(decoded, row_results, server)
            if reply.status == HTTPStatus.OK and isinstance(reply.body, bytes):
                encoded = {"encode_ms": (time.perf_counter() - start) * 1000, "response_bytes": float(len(reply.body))}
                reply = replace(reply, stats={**reply.stats, **encoded})
            replies.append(reply)
        enveloped = bool(rows) and all(codec.envelope for codec, _ in rows)
        for idx, reply in enumerate(replies):
            target = 0 if enveloped else idx  # an envelope's rows are the parts of one HTTP request
            status = max(r.status for r in replies) if enveloped else reply.status
            context.set_response_status(status, HTTPStatus(status).phrase, target)
            if not enveloped:
                context.set_response_content_type(idx, reply.content_type)
            for key, value in reply.headers.items():
                context.set_response_header(target, key, value)
        self.report(context, replies)
        return [reply.body for reply in replies]

    @staticmethod
    def report(context: Any, replies: Sequence[Reply]) -> None:
        """Emit each reply's timings and sizes, or its rejection reason, as TorchServe metrics."""
        metrics, dims = context.metrics, [context.model_name, "Model"]
        for reply in replies:
            if reply.reason:
                counter = metrics.add_metric_to_cache(REJECTED, "count", [*DIMENSIONS, "Reason"], MetricTypes.COUNTER)
                counter.add_or_update(1, [*dims, reply.reason])
            for key, value in reply.stats.items():
                name, unit = GAUGES[key]
                metrics.add_metric_to_cache(name, unit, DIMENSIONS, MetricTypes.GAUGE).add_or_update(value, dims)
