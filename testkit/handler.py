"""The TorchServe handler in process: TorchServe's own ``Context`` and ``RequestProcessor`` classes,
a metrics recorder, and ``answer`` (rows in, replies out as TorchServe would send them). No Java."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ts.context import Context, RequestProcessor

from handler.vitscope_handler import AttentionHandler
from testkit.checkpoints import TINY
from vitscope.protocols.base import Reply
from vitscope.service import AttentionService

MODEL_NAME = TINY.name  # dino_vitt16


@dataclass
class RecordedMetric:
    name: str
    unit: str
    kind: str  # "COUNTER" / "GAUGE"
    values: list[tuple[float, list[str]]] = field(default_factory=list)

    def add_or_update(self, value: float, dimension_values: list[str], request_id: str = "") -> None:
        self.values.append((value, list(dimension_values)))


class RecordingMetrics:
    """Stands in for TorchServe's metrics cache: remembers what the handler emits."""

    def __init__(self) -> None:
        self.metrics: dict[str, RecordedMetric] = {}

    def add_metric_to_cache(self, name: str, unit: str, dimension_names: list[str], metric_type: object) -> RecordedMetric:
        return self.metrics.setdefault(name, RecordedMetric(name, unit, getattr(metric_type, "name", str(metric_type))))


def mock_context(
    headers: Sequence[Mapping[str, str]] = ({},),
    *,
    model_dir: Path | None = None,
    serialized_file: str | None = None,
    handler_settings: Mapping[str, object] | None = None,
    gpu_id: int | None = None,
) -> Context:
    """A TorchServe ``Context`` for one batch whose request ``i`` carried ``headers[i]``."""
    manifest = {
        "model": {"modelName": MODEL_NAME, "modelVersion": "1.0", **({"serializedFile": serialized_file} if serialized_file else {})}
    }
    context = Context(
        MODEL_NAME,
        str(model_dir or ""),
        manifest,
        len(headers),
        gpu_id,
        "0.12.0",
        model_yaml_config={"handler": dict(handler_settings or {})},
    )
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    context.metrics = RecordingMetrics()
    return context


def reply_of(context: Context, idx: int, body: object) -> Reply:
    """Request ``idx``'s reply as TorchServe sends it: the status, content type and headers set on the context."""
    processor = context.request_processor[idx]
    headers = dict(processor.get_response_headers())
    content_type = headers.pop("content-type", "application/json")
    return Reply(processor.get_response_status_code(), body, content_type, headers)


def handler_for(service: AttentionService) -> AttentionHandler:
    handler = AttentionHandler()
    handler.service, handler.initialized = service, True
    return handler


def answer(
    service: AttentionService,
    rows: Sequence[object],
    accepts: Sequence[str | None] | None = None,
    headers: Sequence[Mapping[str, str]] | None = None,
) -> list[Reply]:
    """One TorchServe batch through the real handler, in process; each request's reply. ``accepts``:
    each request's Accept header; ``headers``: each request's headers (instead)."""
    headers = list(headers) if headers is not None else [{"Accept": a} if a else {} for a in (accepts or [None] * len(rows))]
    context = mock_context(headers)
    bodies = handler_for(service).handle(list(rows), context)
    return [reply_of(context, idx, body) for idx, body in enumerate(bodies)]


def client_requester(service: AttentionService) -> Callable[[Sequence[bytes], Mapping[str, str]], list]:
    """The video client's requester (``vitscope_client.video.Requester``), answered by the real handler in
    process: one image as a multipart row, several as a JSON ``images`` group; errors as the client's."""
    from vitscope_client.errors import ClientError  # the client package (client/ on the path, or installed)
    from vitscope_client.mirrors import META_HEADER
    from vitscope_client.response import decode_body, parse_response

    def request(images: Sequence[bytes], fields: Mapping[str, str]) -> list:
        if len(images) == 1:
            rows: list[object] = [{"data": images[0], **fields}]
        else:
            rows = [{"body": {"images": [base64.b64encode(i).decode() for i in images], **fields}}]
        (reply,) = answer(service, rows)
        if reply.status != 200:
            raise ClientError(f"server answered HTTP {reply.status}: {reply.body!r:.200}", reply.status)
        doc = decode_body(reply.body, reply.content_type, reply.headers.get(META_HEADER))  # type: ignore[arg-type]
        return [parse_response(d) for d in (doc["images"] if len(images) > 1 else [doc])]

    return request
