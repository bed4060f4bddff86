"""A ``kserve.Model`` over ``AttentionService``: KServe decodes HTTP, our codecs do the rest.

    preprocess   KServe's InferRequest (v2) or dict (v1) -> our codec's Decoded (ImageRequests)
    predict      AttentionService.explain, off the event loop, one forward pass at a time
    postprocess  the codec's Reply: its exact bytes and headers, or an ``EngineError`` with its status

Reusing the codecs keeps one definition of the v1/v2 answer (tensors, metadata parameters, FP16,
binary tensor extension, error messages) for TorchServe and KServe alike.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import Response
from kserve import Model
from kserve.protocol.infer_type import InferRequest

from dino_attention.errors import RequestError
from dino_attention.layout import DEFAULT_RESPONSE_TIMEOUT_S, MANIFEST, MODEL_CONFIG, weights_in
from dino_attention.methods import all_outputs
from dino_attention.protocols import BINARY_HEADER, KSERVE_V1, KSERVE_V2, Codec, Decoded, Reply, Result, ServerInfo, error_reply
from dino_attention.service import AttentionService

logger = logging.getLogger(__name__)

PLATFORM = "pytorch_dino_attention"  # the v2 metadata's platform


def v2_shape(axes: str) -> list[int]:
    """A v2 metadata shape from an output's axes, "[maps, 4]" -> [-1, 4]: -1 for every named axis."""
    return [int(a) if a.strip().isdigit() else -1 for a in axes.strip("[]").split(",")]


class EngineError(Exception):
    """A request our codecs answered with an error: its reply (status, JSON body) is sent as it is."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


async def engine_error_handler(_: Request, exc: Exception) -> Response:
    """FastAPI exception handler for ``EngineError``: the codec's own error reply."""
    if not isinstance(exc, EngineError):
        raise exc
    return Response(content=body_of(exc.reply), status_code=exc.reply.status, media_type=exc.reply.content_type)


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


@dataclass
class Pending:
    """One HTTP request between preprocess and postprocess."""

    codec: Codec
    decoded: Decoded
    results: list[Result] = field(default_factory=list)


def v2_document(request: InferRequest) -> dict[str, object]:
    """KServe's decoded v2 request as the JSON document our v2 codec reads (binary inputs arrive
    already split into elements, so their ``binary_data_size`` is dropped)."""
    inputs = [
        {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
            "data": tensor.data,
            "parameters": {k: v for k, v in (tensor.parameters or {}).items() if k != "binary_data_size"},
        }
        for tensor in request.inputs
    ]
    document: dict[str, object] = {"inputs": inputs, "parameters": dict(request.parameters or {})}
    if request.request_outputs:
        document["outputs"] = [{"name": o.name, "parameters": o.parameters or {}} for o in request.request_outputs]
    if request.id:
        document["id"] = request.id
    return document


class AttentionModel(Model):
    """Per-head [CLS] attention behind KServe's v1 and v2 REST protocols."""

    def __init__(self, name: str, service: AttentionService, version: str = "") -> None:
        super().__init__(name, return_response_headers=True)
        self.service = service
        self.server = ServerInfo(model_name=name, model_version=version)
        self.forward_lock = asyncio.Lock()  # one forward pass at a time: it already uses every core
        self.ready = True

    def get_input_types(self) -> list[dict[str, object]]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, object]]:
        """Every output any method returns (``methods/``), float ones as FP32 (FP16 with dtype=float16)."""
        return [{"name": o.name, "datatype": o.v2_datatype("float32"), "shape": v2_shape(o.axes)} for o in all_outputs()]

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
        codec, document = (KSERVE_V2, v2_document(payload)) if isinstance(payload, InferRequest) else (KSERVE_V1, payload)
        try:
            return Pending(codec, codec.decode({"body": document}, {}))
        except RequestError as e:
            raise EngineError(error_reply(e)) from e

    async def predict(
        self, payload: Pending, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Pending:
        async with self.forward_lock:
            (payload.results,) = await asyncio.to_thread(self.service.explain_together, [payload.decoded.requests])
        return payload

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


def load_settings(folder: Path) -> tuple[dict[str, object], Path | None, str, float]:
    """(handler settings, weights file or None for a random-weights archive, model version, response
    timeout in s) of an unpacked model; the version is the archive's (MAR-INF/MANIFEST.json), as
    TorchServe reports it; the timeout is model-config.yaml's ``responseTimeout``, as TorchServe reads it."""
    config = yaml.safe_load((folder / MODEL_CONFIG).read_text()) or {}
    manifest_file = folder / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    version = str(manifest.get("model", {}).get("modelVersion", ""))
    timeout = float(config.get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT_S))
    return dict(config.get("handler") or {}), weights_in(folder, manifest), version, timeout
