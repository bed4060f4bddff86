"""The vitscope client: ask a vitscope server (TorchServe or KServe) for a ViT's attention and draw it
with matplotlib, from a notebook or the ``render-attention`` command. It needs nothing of the server.

    api       AttentionClient (explain, explain_many, describe, explain_video), the HTTP calls, ClientError
    response  the parsed answer: Response, Responses; decoding JSON, .npy and .npz answers
    mirrors   the client's copies of the server's maths and facts (masks, image alignment, protocol constants)
    views     how each method's outputs are drawn (MethodView, METHOD_VIEWS, generic_view), as data
    draw      the matplotlib figures of a parsed answer, as its view says
    cli       the command line (``render-attention``, ``python client/render_attention.py``)
    video     videos frame by frame (VideoOptions, explain_video); PyAV and tqdm, the ``video`` extra,
              are imported only when a video is explained: ``pip install 'vitscope-client[video]'``
"""

from __future__ import annotations

from .api import AttentionClient
from .errors import ClientError
from .mirrors import META_HEADER, decode_masks, threshold_masks
from .response import Response, Responses, decode_body, parse_response
from .video import MissingVideoExtra, Requester, VideoError, VideoOptions, VideoSummary, explain_video

__all__ = [
    "META_HEADER",
    "AttentionClient",
    "ClientError",
    "MissingVideoExtra",
    "Requester",
    "Response",
    "Responses",
    "VideoError",
    "VideoOptions",
    "VideoSummary",
    "decode_body",
    "decode_masks",
    "explain_video",
    "parse_response",
    "threshold_masks",
]
