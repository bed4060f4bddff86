"""The server, from Python: ``AttentionClient`` and the HTTP calls under it (TorchServe's inference API,
multipart or a JSON ``images`` group, and its management API for ``describe``)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from .errors import ClientError
from .mirrors import DEFAULT_METHOD, DEFAULT_MODEL, META_HEADER, TIMEOUT_HEADER, form_value
from .response import ImageLike, OutputDescription, Response, Responses, decode_body, image_bytes, parse_response
from .views import METHOD_VIEWS

if TYPE_CHECKING:
    from .video import VideoSummary

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_KEY_FILE",
    "MANAGEMENT_PORT",
    "AttentionClient",
    "ClientError",
    "auth_headers",
    "post",
    "post_image",
    "request_attention",
    "request_many",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "http://127.0.0.1:8080"
MANAGEMENT_PORT = 8081  # TorchServe's management API, beside the inference API (describe)
DEFAULT_KEY_FILE = Path("key_file.json")  # where `make serve` (token auth on) leaves TorchServe's keys


class AttentionClient:
    """The server, from Python: ``AttentionClient(url).explain(image, layer=5)`` -> ``Response``.

    ``management``: TorchServe's management API, for ``describe()`` (default: the inference URL's
    host on port 8081).
    """

    def __init__(
        self,
        url: str = DEFAULT_HOST,
        model: str = DEFAULT_MODEL,
        *,
        key_file: Path | None = None,
        timeout: float = 120.0,
        management: str | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if "/predictions/" in base else f"{base}/predictions/{model}"
        self.model = self.url.rsplit("/predictions/", 1)[1].split("/")[0]
        parts = urlsplit(self.url)
        self.management = (management or f"{parts.scheme}://{parts.hostname}:{MANAGEMENT_PORT}").rstrip("/")
        self.headers = {**auth_headers(key_file), TIMEOUT_HEADER: f"{timeout:g}"}  # no answer is computed for nobody
        self.timeout = timeout
        self._described: dict | None = None

    def describe(self) -> dict:
        """What the server offers for this model: its facts, its methods with their options (defaults,
        ranges) and outputs, the formats. TorchServe's ``GET /models/<name>?customized=true``."""
        url = f"{self.management}/models/{self.model}"
        try:
            reply = requests.get(url, params={"customized": "true"}, timeout=self.timeout, headers=self.headers)
        except requests.RequestException as e:
            raise ClientError(f"cannot reach {url}: is the server running (make serve), with its management API there?") from e
        if reply.status_code != 200:
            raise ClientError(f"server answered HTTP {reply.status_code} for {url}: {reply.text[:200]}")
        try:
            described = reply.json()[0]["customizedMetadata"]  # TorchServe parses the handler's JSON text when it can
            return json.loads(described) if isinstance(described, str) else dict(described)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ClientError(f"{url} holds no description of this model's methods (an older server?): {e}") from e

    def outputs_of(self, method: object) -> list[OutputDescription] | None:
        """The outputs the server describes for ``method`` when the client has no view of its own for it
        (which is the main one, which is a colour image); None for the methods it draws its own way, or
        when the server cannot say (no management API): its answer is then drawn as maps."""
        name = str(method or DEFAULT_METHOD)
        if name in METHOD_VIEWS:
            return None
        if self._described is None:
            try:
                self._described = self.describe()
            except ClientError as e:
                logger.warning("%s: drawing method %s's first array as maps", e, name)
                self._described = {}
        for described in self._described.get("methods", ()):
            if isinstance(described, dict) and described.get("name") == name:
                return list(described.get("outputs", ()))
        return None

    def explain(self, image: ImageLike, **options: object) -> Response:
        """Ask for the attention over ``image`` (path, bytes, PIL image or uint8 array); ``options`` as
        the server's (layer=5, heads="0,2", short_side=320, precision="auto", ...)."""
        data, name = image_bytes(image)
        fields = {"upsample": "false", **{k: form_value(k, v) for k, v in options.items() if v is not None}}
        doc = post_image(self.url, data, name, fields, self.timeout, self.headers)
        return parse_response(doc, self.outputs_of(options.get("method"))).with_image(data)

    def request(self, images: Sequence[bytes], fields: Mapping[str, str]) -> list[Response]:
        """One request of encoded ``images`` (sent together when several) with the form ``fields``."""
        if len(images) == 1:
            return [parse_response(post_image(self.url, images[0], "frame", dict(fields), self.timeout, self.headers))]
        return request_many(self.url, [(data, f"frame {i}") for i, data in enumerate(images)], fields, self.timeout, self.headers)

    def explain_video(
        self,
        video: str | Path,
        out: str | Path,
        *,
        maps: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        **options: Any,
    ) -> VideoSummary:
        """Every frame of ``video`` through the server, written to ``out`` (an .mp4, ...) as they go;
        ``options`` as ``vitscope_client.VideoOptions`` (method, layer, head, point, every, max_frames,
        short_side, in_flight, mask, pca_fit, ...). Needs the client's video extra (PyAV, tqdm):
        ``pip install 'vitscope-client[video]'``."""
        from .video import VideoOptions, explain_video

        return explain_video(video, out, self.request, VideoOptions(**options), maps, resume, progress)

    def explain_many(self, images: Sequence[ImageLike], **options: object) -> Responses:
        """Send several images together (one request, ``options`` shared): what a method does with
        images seen together applies, e.g. ``method="pca", pca_fit="joint"`` (one basis: shared
        colours) or ``method="similarity", point="x,y"`` (every map against the first image's patch)."""
        images_sent = [image_bytes(image) for image in images]
        outputs = self.outputs_of(options.get("method"))
        return Responses(request_many(self.url, images_sent, options, self.timeout, self.headers, outputs))


def request_many(
    url: str,
    images: Sequence[tuple[bytes, str]],
    options: Mapping[str, object],
    timeout: float,
    headers: dict[str, str],
    outputs: Sequence[OutputDescription] | None = None,
) -> list[Response]:
    """POST ``{"images": [...], ...options}`` (JSON) and parse the ``{"images": [...]}`` answer
    (``outputs``: as ``parse_response``'s)."""
    if not images:
        raise ClientError("give at least one image")
    fields = {"upsample": "false", **{k: str(v) for k, v in options.items() if v is not None}}
    document = {"images": [base64.b64encode(data).decode("ascii") for data, _ in images], **fields}
    names = ", ".join(name for _, name in images)
    doc = post(url, names, timeout, headers, json=document)
    docs = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(docs, list) or len(docs) != len(images):
        raise ClientError(f'expected {{"images": [...]}} with {len(images)} responses, got {str(doc)[:200]}')
    return [parse_response(d, outputs).with_image(data) for d, (data, _) in zip(docs, images, strict=True)]


def post_image(url: str, data: bytes, name: str, fields: dict[str, str], timeout: float, headers: dict[str, str]) -> dict:
    """POST the image as multipart (options as fields); the server's answer as a dict, or ``ClientError``."""
    return post(url, name, timeout, headers, files={"data": (name, data)}, data=fields)


def post(url: str, name: str, timeout: float, headers: dict[str, str], **body: object) -> dict:
    """POST ``body`` (requests' files/data/json) about the image(s) ``name``; the answer as a dict."""
    try:
        reply = requests.post(url, timeout=timeout, headers=headers, **body)  # type: ignore[arg-type]
    except requests.ConnectionError as e:
        raise ClientError(f"cannot reach {url}: is the server running? (make serve)") from e
    except requests.Timeout as e:
        raise ClientError(f"no answer from {url} within {timeout:g} s (--timeout)") from e
    if reply.status_code != 200:
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        detail = doc.get("error", doc.get("message")) if isinstance(doc, dict) else reply.text[:200]
        raise ClientError(f"server answered HTTP {reply.status_code} for {name}: {detail}", reply.status_code)
    return decode_body(reply.content, reply.headers.get("Content-Type"), reply.headers.get(META_HEADER))


def request_attention(url: str, image: Path, fields: dict[str, str], timeout: float, headers: dict[str, str]) -> dict:
    """``post_image`` for an image file."""
    data, name = image_bytes(image)
    return post_image(url, data, name, fields, timeout, headers)


def auth_headers(key_file: Path | None) -> dict[str, str]:
    """Bearer token from TorchServe's key_file.json (inference key), when one is given."""
    if key_file is None:
        return {}
    try:
        key = json.loads(Path(key_file).read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClientError(f"cannot read the inference key from {key_file}: {e}") from e
    return {"Authorization": f"Bearer {key}"}
