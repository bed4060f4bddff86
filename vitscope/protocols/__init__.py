"""Protocol codecs: one per way a request reaches us, each ``decode(row, headers) -> Decoded`` and
``encode(decoded, results, server) -> Reply``. The service never sees a protocol; an engine picks
a codec per row (``route``).

    base        the Codec interface, Reply and Decoded, content types, headers, deadlines, JSON helpers
    plain       raw image bytes, multipart, JSON {"image"} / {"images"}; JSON, .npy or .npz answers
    kserve      KServe v1 {"instances"} and v2 {"inputs"} (the Open Inference Protocol, binary tensors)
    envelopes   the same under TorchServe's kserve / kservev2 envelopes (one row per instance/input)

To add a protocol whose requests are JSON documents: a module with a ``Codec`` subclass whose
``claims`` recognises its documents, and its instance in ``CODECS`` (docs/guides/protocol.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import BODY_FIELD, Codec, Headers, json_body
from .envelopes import V1EnvelopeCodec, V2EnvelopeCodec
from .kserve import KServeV1Codec, KServeV2Codec
from .plain import PlainCodec

PLAIN, KSERVE_V1, KSERVE_V2 = PlainCodec(), KServeV1Codec(), KServeV2Codec()
V1_ENVELOPE, V2_ENVELOPE = V1EnvelopeCodec(), V2EnvelopeCodec()
# The codecs that recognise a request's JSON body (``Codec.claims``), asked in order; JSON none of
# them claims is a plain request.
CODECS: list[Codec] = [
    KSERVE_V1,
    KSERVE_V2,
]


def route(row: object, headers: Headers | None = None) -> tuple[Codec, object]:
    """The codec of one row, from its shape (and the binary extension's header) alone (pure), and the
    row as that codec is to take it: a JSON body parsed here is handed on parsed, never parsed twice.

    Rows TorchServe builds from an HTTP request always carry a ``body`` or a file (bytes) field;
    a body that is a document of one of ``CODECS`` (decoded or not) picks that protocol. Rows without
    either were unwrapped by TorchServe's envelopes: v2 inputs carry a ``datatype``, v1 instances do not.
    """
    if isinstance(row, Mapping) and (BODY_FIELD in row or any(isinstance(v, (bytes, bytearray)) for v in row.values())):
        parsed = json_body(row, headers or {})
        if parsed is None:
            return PLAIN, row
        for codec in CODECS:
            if codec.claims(parsed.document):
                return codec, parsed
        # a plain JSON request: handed on parsed when the body is all there is (anything else, extra
        # fields or bytes after the JSON, is left as it came for the plain codec to reject)
        return PLAIN, {BODY_FIELD: parsed.document} if len(row) == 1 and not parsed.binary else row
    if isinstance(row, Mapping) and "datatype" in row:
        return V2_ENVELOPE, row
    return V1_ENVELOPE, row


__all__ = ["CODECS", "KSERVE_V1", "KSERVE_V2", "PLAIN", "V1_ENVELOPE", "V2_ENVELOPE", "route"]
