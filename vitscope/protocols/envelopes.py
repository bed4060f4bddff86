"""TorchServe's own envelopes (``service_envelope=kserve`` / ``kservev2``): TorchServe has already
unwrapped the request into one row per v1 instance / v2 input and will wrap our Python results itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus

import numpy as np

from ..errors import PayloadError, RequestError
from .base import Decoded, Headers, Reply, Result, ServerInfo, error_reply, main_array, precision_header
from .kserve import KServeV1Codec, KServeV2Codec, V2Input


class V1EnvelopeCodec(KServeV1Codec):
    """Under TorchServe's ``kserve`` envelope: a row is one v1 instance; the reply its prediction object."""

    envelope = True

    def decode_row(self, row: object, headers: Headers) -> Decoded:
        return Decoded([self.instance(row, 0)])

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        (result,) = results
        if isinstance(result, RequestError):
            return error_reply(result, envelope=True)
        prediction = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.prediction(result).items()}
        return Reply(int(HTTPStatus.OK), prediction, headers=precision_header([result]), stats=result.stats)


class V2EnvelopeCodec(KServeV2Codec):
    """Under TorchServe's ``kservev2`` envelope: a row is one v2 input whose ``data`` is one base64
    image; the reply the attention array (the envelope flattens it and drops all metadata, so the
    ``X-Attention-Precision`` header is where the precision that ran is named)."""

    envelope = True

    def decode_row(self, row: object, headers: Headers) -> Decoded:
        if not isinstance(row, Mapping):
            raise PayloadError("a v2 input must be an object")
        return Decoded(self.tensor(V2Input(row.get("datatype"), [row.get("data")], row.get("parameters")), {}))

    def encode(self, decoded: Decoded, results: Sequence[Result], server: ServerInfo) -> Reply:
        (result,) = results
        if isinstance(result, RequestError):
            return error_reply(result, envelope=True)
        return Reply(int(HTTPStatus.OK), main_array(result), headers=precision_header([result]), stats=result.stats)
