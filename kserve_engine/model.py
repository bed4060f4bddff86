"""A ``kserve.Model`` over ``AttentionService``: KServe decodes HTTP, our codecs do the rest.

    preprocess   KServe's InferRequest (v2) or dict (v1) -> our codec's Decoded (ImageRequests), with
                 the deadline counted from its arrival
    predict      AttentionService.explain, off the event loop, one forward pass at a time, behind a
                 bounded queue (full: 503 with Retry-After at once)
    postprocess  the codec's Reply: its exact bytes and headers, or an ``EngineError`` with its status

Reusing the codecs keeps one definition of the v1/v2 answer (tensors, metadata parameters, FP16,
binary tensor extension, error messages) for TorchServe and KServe alike.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import shutil
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import Response
from kserve import Model
from kserve.protocol.infer_type import InferRequest
from prometheus_client import Counter, Gauge, Histogram

from vitscope.errors import Overloaded, RequestError
from vitscope.layout import DEFAULT_JOB_QUEUE_SIZE, DEFAULT_RESPONSE_TIMEOUT_S, MANIFEST, MODEL_CONFIG, weights_in
from vitscope.methods import all_outputs
from vitscope.protocols import KSERVE_V1, KSERVE_V2
from vitscope.protocols.base import BINARY_HEADER, Codec, Decoded, Reply, Result, ServerInfo, error_reply
from vitscope.protocols.kserve import v2_datatype
from vitscope.service import AttentionService

logger = logging.getLogger(__name__)

PLATFORM = "pytorch_vitscope"  # the v2 metadata's platform


def v2_shape(axes: str) -> list[int]:
    """A v2 metadata shape from an output's axes, "[maps, 4]" -> [-1, 4]: -1 for every named axis."""
    return [int(a) if a.strip().isdigit() else -1 for a in axes.strip("[]").split(",")]


class EngineError(Exception):
    """A request our codecs answered with an error: its reply (status, JSON body) is sent as it is."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


async def engine_error_handler(_: Request, exc: Exception) -> Response:
    """FastAPI exception handler for ``EngineError``: the codec's own error reply (and its headers)."""
    if not isinstance(exc, EngineError):
        raise exc
    reply = exc.reply
    return Response(content=body_of(reply), status_code=reply.status, media_type=reply.content_type, headers=reply.headers)


def body_of(reply: Reply) -> bytes:
    if not isinstance(reply.body, bytes):
        raise TypeError(f"a KServe reply body must be bytes, not {type(reply.body).__name__}")
    return reply.body


class DefaultJsonContentType:
    """ASGI middleware: a v2 ``/infer`` POST with neither a Content-Type nor the binary extension's
    ``Inference-Header-Content-Length`` is JSON. tritonclient.http sends its JSON documents without a
    Content-Type, and KServe would otherwise take the body as binary and refuse it."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST" and str(scope.get("path", "")).endswith("/infer"):
            names = {name.lower() for name, _ in scope.get("headers", [])}
            if b"content-type" not in names and BINARY_HEADER.encode() not in names:
                scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


COST_BUCKETS = (0.1, 0.3, 1, 3, 10, 30, 60, 120)
# Prometheus metrics on KServe's /metrics (the TorchServe handler reports the same through metrics.yaml)
QUEUE_LENGTH = Gauge("dino_queue_length", "requests waiting for the forward pass", ["model_name"])
REJECTED = Counter(
    "dino_rejected_requests", "requests refused, by reason (queue_full, deadline, too_large, option, ...)", ["model_name", "reason"]
)
ADMITTED_COST = Histogram(
    "dino_admitted_cost_seconds",
    "estimated seconds of the admitted requests (vitscope/cost.py)",
    ["model_name"],
    buckets=COST_BUCKETS,
)


@dataclass(frozen=True)
class EngineSettings:
    """What the engine reads of an unpacked model (its model-config.yaml and manifest)."""

    handler: dict[str, object]  # the handler settings (vitscope/service/config.py ServiceConfig)
    weights: Path | None  # None: a random-weights archive
    version: str  # the archive's, as TorchServe reports it
    response_timeout_s: float  # responseTimeout, as TorchServe reads it: the cost budget derives from it
    queue_size: int  # jobQueueSize: requests that may wait for the forward pass; more get 503


@dataclass
class Pending:
    """One HTTP request between preprocess and postprocess."""

    codec: Codec
    decoded: Decoded
    results: list[Result] = field(default_factory=list)


class AttentionModel(Model):
    """Per-head [CLS] attention behind KServe's v1 and v2 REST protocols."""

    def __init__(self, name: str, service: AttentionService, version: str = "", queue_size: int = DEFAULT_JOB_QUEUE_SIZE) -> None:
        super().__init__(name, return_response_headers=True)
        self.service = service
        self.server = ServerInfo(model_name=name, model_version=version)
        self.forward_lock = asyncio.Lock()  # one forward pass at a time: it already uses every core
        self.queue_size = queue_size  # requests that may wait for the lock (jobQueueSize, as TorchServe's job queue)
        self.queued = 0
        self.seconds_per_request = 1.0  # running mean of the forward passes' time, for Retry-After
        self.ready = True

    def get_input_types(self) -> list[dict[str, object]]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, object]]:
        """Every output any method returns (``methods/``), float ones as FP32 (FP16 with dtype=float16)."""
        return [{"name": o.name, "datatype": v2_datatype(o, "float32"), "shape": v2_shape(o.axes)} for o in all_outputs()]

    def metadata(self) -> dict[str, object]:
        """KServe's v2 model metadata plus ``parameters.description``: the service's description (methods,
        their options and outputs, the model's facts) as JSON text, as TorchServe's ``customizedMetadata``."""
        return {
            "name": self.name,
            "versions": [self.server.model_version] if self.server.model_version else [],
            "platform": PLATFORM,
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "parameters": {"description": json.dumps(self.service.description())},
        }

    async def metadata_endpoint(self) -> Response:
        """``GET /v2/models/<name>``, registered ahead of KServe's own (whose response model drops ``parameters``)."""
        return Response(content=json.dumps(self.metadata()), media_type="application/json")

    async def preprocess(self, payload: InferRequest | Mapping[str, object], headers: dict[str, str] | None = None) -> Pending:
        received = time.time()
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        try:
            if isinstance(payload, InferRequest):  # KServe decoded it (binary inputs split into elements): taken as it is
                outputs = [(o.name, o.parameters) for o in payload.request_outputs or ()]
                codec: Codec = KSERVE_V2
                decoded = KSERVE_V2.decode_request(payload.inputs, payload.parameters, outputs, payload.id)
            else:
                codec, decoded = KSERVE_V1, KSERVE_V1.decode_document(payload)
            return Pending(codec, self.service.ingest(decoded.timed(lowered), received))
        except RequestError as e:
            raise self.refuse(e) from e

    def refuse(self, error: RequestError, headers: Mapping[str, str] | None = None) -> EngineError:
        REJECTED.labels(self.name, error.reason).inc()
        reply = error_reply(error)
        return EngineError(replace(reply, headers={**reply.headers, **(headers or {})}))

    async def predict(
        self, payload: Pending, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Pending:
        if self.queued >= self.queue_size:
            retry = max(1, math.ceil(self.queued * self.seconds_per_request))
            error = Overloaded(
                f"the queue is full: {self.queued} requests wait for this model's forward pass (jobQueueSize={self.queue_size}); "
                f"retry in ~{retry} s"
            )
            raise self.refuse(error, {"Retry-After": str(retry)})
        self.queued += 1
        QUEUE_LENGTH.labels(self.name).set(self.queued)
        try:
            await self.forward_lock.acquire()
        finally:
            self.queued -= 1
            QUEUE_LENGTH.labels(self.name).set(self.queued)
        try:
            start = time.perf_counter()
            (payload.results,) = await asyncio.to_thread(self.service.explain_together, [payload.decoded.requests])
            self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * (time.perf_counter() - start)
        finally:
            self.forward_lock.release()
        for result in payload.results:
            if isinstance(result, RequestError):
                REJECTED.labels(self.name, result.reason).inc()
            else:
                ADMITTED_COST.labels(self.name).observe(result.stats.get("cost_s", 0.0))
        return payload

    async def explain(self, payload: Pending, headers: dict[str, str] | None = None) -> Pending:
        """KServe's v1 ``:explain`` (``/v1/models/<name>:explain``): ``predict`` with ``method=legrad`` where a
        request names no method, as TorchServe's ``/explanations``."""
        payload.decoded = self.service.explaining(payload.decoded)
        return await self.predict(payload, headers)

    async def postprocess(
        self, result: Pending, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> bytes:
        reply = result.codec.encode(result.decoded, result.results, self.server)
        if reply.status != 200:
            raise EngineError(reply)
        if response_headers is not None:  # "Content-Type" in this case survives KServe's own header clean-up
            response_headers.update({**reply.headers, "Content-Type": reply.content_type})
        return body_of(reply)


def unpack_model_dir(model_dir: Path) -> Path:
    """The folder holding model-config.yaml (and the weights): ``model_dir`` itself, or the one .mar
    in it unpacked into a temporary folder (what a KServe storage URI delivers to /mnt/models)."""
    if (model_dir / MODEL_CONFIG).is_file():
        return model_dir
    archives = sorted(model_dir.glob("*.mar"))
    if len(archives) != 1:
        found = [p.name for p in model_dir.iterdir()] if model_dir.is_dir() else "no such folder"
        raise FileNotFoundError(f"{model_dir} holds neither {MODEL_CONFIG} nor exactly one .mar (found: {found}); make archive writes one")
    target = Path(tempfile.mkdtemp(prefix="dino-kserve-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)  # the server stops on SIGTERM, then this runs
    with zipfile.ZipFile(archives[0]) as mar:
        mar.extractall(target)
    return target


def load_settings(folder: Path) -> EngineSettings:
    """The settings of an unpacked model: model-config.yaml's handler section, ``responseTimeout`` and
    ``jobQueueSize`` (read as TorchServe reads them), the weights, and the archive's version
    (MAR-INF/MANIFEST.json), as TorchServe reports it."""
    config = yaml.safe_load((folder / MODEL_CONFIG).read_text()) or {}
    manifest_file = folder / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    version = str(manifest.get("model", {}).get("modelVersion", ""))
    return EngineSettings(
        dict(config.get("handler") or {}),
        weights_in(folder, manifest),
        version,
        float(config.get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT_S)),
        int(config.get("jobQueueSize", DEFAULT_JOB_QUEUE_SIZE)),
    )
