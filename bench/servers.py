"""What the served sections (``served``, ``throughput``, ``engines``, ``coldstart``) share: the
percentiles of their latencies, and the KServe v2 JSON request both engines are sent."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import requests


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def v2_request(image: bytes) -> bytes:
    """One KServe v2 JSON request for ``image`` with default options: what both engines are sent."""
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor], "parameters": {}}).encode()


def post_v2(session: requests.Session, url: str, body: bytes) -> float:
    """Seconds of one v2 JSON POST of ``body`` to ``url`` (an error status raises)."""
    start = time.perf_counter()
    session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=600).raise_for_status()
    return time.perf_counter() - start
