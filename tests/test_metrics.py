"""The handler's own metrics reach TorchServe's Prometheus endpoint with plausible values."""

from __future__ import annotations

import re
import time

import requests

from testkit.checkpoints import encode, random_rgb

from .conftest import Served

TIMEOUT = 120


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric ``name`` in Prometheus text format."""
    found = []
    for match in re.finditer(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        found.append((labels, float(match.group(2))))
    return found


def test_custom_metrics_on_the_prometheus_endpoint(served: Served) -> None:
    image = encode(random_rgb(64, 96))  # scale=1: 4 x 6 = 24 patch tokens at patch 16
    ok = requests.post(served.url, files={"data": image}, data={"scale": "1"}, timeout=TIMEOUT)
    assert ok.status_code == 200
    assert requests.post(served.url, data=b"not an image", timeout=TIMEOUT).status_code == 400
    assert requests.post(served.url, files={"data": image}, data={"layer": "99"}, timeout=TIMEOUT).status_code == 400
    deadline = time.monotonic() + 30
    while True:  # the frontend picks backend metrics up asynchronously
        text = requests.get(served.metrics, timeout=TIMEOUT).text
        rejected = {labels["Reason"]: value for labels, value in samples(text, "DinoRejectedRequests")}
        if {"image", "option"} <= set(rejected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rejected.get("image", 0) >= 1 and rejected.get("option", 0) >= 1, text[-2000:]
    for name, low, high in (
        ("DinoPreprocessTime", 0.0, 60_000),
        ("DinoForwardTime", 0.01, 60_000),
        ("DinoEncodeTime", 0.0, 60_000),
        ("DinoTokens", 1, 10**6),
        ("DinoResponseBytes", 100, 10**9),
        ("DinoAdmittedCost", 1e-6, 60),  # the estimate of a 24-token request, within the budget (half of 120 s)
    ):
        values = samples(text, name)
        assert values, f"{name} missing from /metrics"
        labels, value = values[0]
        assert labels["ModelName"] == "dino_vitt16" and low <= value <= high, (name, labels, value)
    # gauges hold the last successful request: ours
    assert samples(text, "DinoTokens")[0][1] == 24.0
    assert samples(text, "DinoResponseBytes")[0][1] == len(ok.content)
