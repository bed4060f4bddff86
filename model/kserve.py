"""KServe inference protocols (v1 and v2 "open inference") on top of ``AttentionService``.

Two ways a KServe request reaches us:

* natively: TorchServe runs without a service envelope and forwards the JSON body of
  ``/v1/models/{m}:predict`` ({"instances": [...]}) or ``/v2/models/{m}/infer`` ({"inputs": [...]});
  ``kserve_protocol`` recognises it and ``handle_document`` answers in the same protocol, v2 with
  proper tensors (shape [heads, H, W], FP32/FP16, flat data, metadata as parameters);
* through TorchServe's own envelopes (``service_envelope=kserve``/``kservev2``, which KServe's
  controller sets): they unwrap the request and wrap our results, so ``envelope_results`` returns
  plain Python objects. TorchServe's v2 envelope flattens every output to 1-D and drops
  parameters; the native route keeps them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus

import numpy as np
import orjson

from .errors import PayloadError, RequestError
from .options import PRECISION_HEADER
from .request import BODY_FIELD
from .service import AttentionService, Reply

V1, V2 = "v1", "v2"
IMAGE_KEYS: tuple[str, ...] = ("data", "image", "b64")  # where a v1 instance may carry its base64 image
DATATYPES = {"float32": "FP32", "float16": "FP16"}


def kserve_protocol(row: Mapping[str, object]) -> str | None:
    """``"v1"``/``"v2"`` if a TorchServe row's body is a KServe request document, else None."""
    body = row.get(BODY_FIELD) if isinstance(row, Mapping) else None
    if isinstance(body, Mapping) and isinstance(body.get("instances"), list):
        return V1
    if isinstance(body, Mapping) and isinstance(body.get("inputs"), list):
        return V2
    return None


def v1_payload(instance: object) -> dict[str, object]:
    """A v1 instance ({"data"|"image"|"b64": "<base64>", options...} or a bare base64 string) as a payload."""
    if isinstance(instance, str):
        return {BODY_FIELD: {"image": instance}}
    if not isinstance(instance, Mapping):
        raise PayloadError(f'a v1 instance must be {{"data": "<base64 image>", ...}}, not a {type(instance).__name__}')
    fields = dict(instance)
    keys = [k for k in IMAGE_KEYS if k in fields]
    if len(keys) != 1:
        raise PayloadError(f"a v1 instance needs exactly one of {list(IMAGE_KEYS)} with the base64 image")
    image = fields.pop(keys[0])
    if isinstance(image, Mapping) and "b64" in image:  # TF-serving style {"b64": "..."}
        image = image["b64"]
    return {BODY_FIELD: {"image": image, **fields}}


def v2_payloads(document: Mapping[str, object]) -> list[dict[str, object]]:
    """Payloads of a v2 request: every element of every BYTES input is one base64 image.

    Options come from the request's ``parameters``, overridden by each input's ``parameters``.
    """
    shared = document.get("parameters") or {}
    payloads = []
    for tensor in document["inputs"]:
        if not isinstance(tensor, Mapping) or tensor.get("datatype") != "BYTES":
            raise PayloadError('v2 inputs must be {"name": ..., "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}')
        data = tensor.get("data")
        items = data if isinstance(data, list) else [data]
        params = {**shared, **(tensor.get("parameters") or {})}
        if not items or not isinstance(params, Mapping):
            raise PayloadError("a v2 input needs data (base64 images) and parameters as an object")
        payloads += [{BODY_FIELD: {"image": item, **params}} for item in items]
    return payloads


def _parameter(value: object) -> object:
    """v2 parameters are scalars: lists become comma-separated strings (e.g. image_size "480,640")."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def v2_tensor(name: str, document: Mapping[str, object]) -> dict[str, object]:
    """A v2 output tensor from a decoded attention response (with ``attention`` as an array)."""
    attention = np.asarray(document["attention"])
    return {
        "name": name,
        "shape": list(attention.shape),
        "datatype": DATATYPES[str(document["dtype"])],
        "data": attention.ravel(),
        "parameters": {k: _parameter(v) for k, v in document.items() if k != "attention"},
    }


def _documents(service: AttentionService, payloads: Sequence[Mapping[str, object]]) -> list[dict]:
    """Run payloads as one batch; each result as metadata plus ``attention`` (an array). First error raises."""
    documents = []
    for i, outcome in enumerate(service.run(payloads)):
        if outcome.error is not None:
            error = type(outcome.error)(f"item {i}: {outcome.error}")
            raise error
        meta, attention = service.describe(outcome.item, outcome.maps)
        dtype = outcome.item.options.dtype
        documents.append({**meta, "dtype": dtype, "attention": attention.astype(dtype, copy=False)})
    return documents


def handle_document(
    service: AttentionService, protocol: str, document: Mapping[str, object], model_name: str, model_version: str
) -> Reply:
    """Answer one native KServe request (v1 or v2) in its own protocol.

    The precision that ran is in each prediction / output's parameters, and in the
    ``X-Attention-Precision`` header (comma-separated if the images of one request differ).
    """
    try:
        if protocol == V1:
            documents = _documents(service, [v1_payload(instance) for instance in document["instances"]])
            body: dict[str, object] = {"predictions": documents}
        else:
            documents = _documents(service, v2_payloads(document))
            names = ["attention"] if len(documents) == 1 else [f"attention_{i}" for i in range(len(documents))]
            body = {
                "model_name": model_name,
                "model_version": model_version,
                "outputs": [v2_tensor(name, doc) for name, doc in zip(names, documents)],
            }
            if document.get("id"):
                body["id"] = document["id"]
    except RequestError as e:
        return Reply(int(e.status), orjson.dumps({"error": str(e)}), reason=e.reason)
    precisions = ",".join(dict.fromkeys(str(doc["precision"]) for doc in documents))
    return Reply(int(HTTPStatus.OK), orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), headers={PRECISION_HEADER: precisions})


def handle_rows(
    service: AttentionService,
    rows: Sequence[Mapping[str, object]],
    accepts: Sequence[str | None],
    model_name: str,
    model_version: str,
) -> list[Reply]:
    """A TorchServe batch where any row may be a native KServe v1/v2 document; the rest are plain."""
    protocols = [kserve_protocol(row) for row in rows]
    plain = [i for i, protocol in enumerate(protocols) if protocol is None]
    replies: list[Reply | None] = [None] * len(rows)
    for i, reply in zip(plain, service.handle([rows[i] for i in plain], [accepts[i] for i in plain])):
        replies[i] = reply
    for i, protocol in enumerate(protocols):
        if protocol is not None:
            replies[i] = handle_document(service, protocol, rows[i][BODY_FIELD], model_name, model_version)
    return replies  # type: ignore[return-value]  # every slot is filled above


def is_v1_envelope_batch(data: Sequence[object]) -> bool:
    """True when TorchServe's kserve (v1) envelope handed us instances instead of request rows.

    Request rows always carry a ``body`` or a file (bytes) field; instances are decoded JSON.
    """
    def is_row(item: object) -> bool:
        return isinstance(item, Mapping) and (
            BODY_FIELD in item or any(isinstance(v, (bytes, bytearray)) for v in item.values())
        )

    return bool(data) and not any(is_row(item) for item in data)


def envelope_results(
    service: AttentionService, data: Sequence[object], protocol: str
) -> tuple[list[object], int, dict[str, str]]:
    """Results for TorchServe's own envelopes (which JSON-encode them), the HTTP status and headers.

    v1: one dict per instance (metadata + attention as nested lists). v2: one array per input
    (TorchServe flattens it and drops all metadata, so the ``X-Attention-Precision`` header is
    the one place that names the precision that ran); its first element of ``data`` is the base64
    image, its ``parameters`` the options. An error gives ``{"error": ...}`` in its place and status 400/413.
    """
    results: list[object] = []
    status = int(HTTPStatus.OK)
    precisions: dict[str, None] = {}
    for item in data:
        try:
            payload = v1_payload(item) if protocol == V1 else v2_payloads({"inputs": [{**item, "data": [item.get("data")]}]})[0]
            (document,) = _documents(service, [payload])
        except RequestError as e:
            status = max(status, int(e.status))
            results.append({"error": str(e)})
            continue
        precisions[str(document["precision"])] = None
        results.append({**document, "attention": document["attention"].tolist()} if protocol == V1 else document["attention"])
    return results, status, {PRECISION_HEADER: ",".join(precisions)} if precisions else {}
