"""Hardening through the real TorchServe: a bad-input corpus, limits, load, worker faults, auth."""

from __future__ import annotations

import base64
import os
import signal
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import yaml
from PIL import Image

from bench.load import Probe, run_load
from scripts import REPO, serve
from scripts.serve import ServeError
from testkit.checkpoints import encode, random_rgb, smooth_rgb
from testkit.handler import answer
from testkit.torchserve import ModelApiServer, TorchServe, write_private_config
from tests.support.archives import archive_tiny, model_config

from .conftest import NAME, Served

TIMEOUT = 120
SMOOTH = smooth_rgb(48, 64)


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict  # for requests.post
    status: int
    message: str = ""  # expected in the error (or "" for 200)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 40000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb): a complete, valid
    black 1-bit PNG (the pixels of ``Image.new("1", (side, side))``, compressed at level 9 as Pillow's
    optimize=True does), its rows streamed through zlib (test time: Pillow would build the whole
    1.6 GB image in memory first, ~3 s; this takes ~0.6 s)."""
    row = bytes(1 + (side + 7) // 8)  # filter type 0, then the row's bits: all 0 (black)
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    full, rest = divmod(side, rows_per_block)
    idat = [compressor.compress(row * rows_per_block) for _ in range(full)]
    idat += [compressor.compress(row * rest), compressor.flush()]
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(idat)) + png_chunk(b"IEND", b"")


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(SMOOTH, "JPEG", exif=exif.tobytes())


def frames(fmt: str) -> bytes:
    imgs = [Image.fromarray(SMOOTH), Image.fromarray(255 - SMOOTH)]
    return encode(imgs[0], fmt, save_all=True, append_images=imgs[1:])


def multipart(fields: dict, image: bytes | None = None) -> dict:
    return {"files": {"data": ("img", image)} if image is not None else None, "data": fields}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def corpus() -> list[Case]:
    """Every kind of bytes a public image endpoint receives (>= 30 cases), with the answer each deserves."""
    png = encode(SMOOTH, "PNG")
    jpeg = encode(SMOOTH, "JPEG")
    pal = Image.new("P", (64, 48), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    return [
        Case("zero bytes", {"data": b""}, 400, "empty request body"),
        Case("text", {"data": b"hello world"}, 400, "not an image"),
        Case(
            "html", {"data": b"<!doctype html><html><body>hi</body></html>", "headers": {"Content-Type": "text/html"}}, 400, "body is text"
        ),
        Case(
            "svg",
            {"data": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "headers": {"Content-Type": "image/svg+xml"}},
            400,
            "not an image",
        ),
        Case("pdf", {"data": b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF"}, 400, "not an image"),
        Case("truncated jpeg", {"data": jpeg[: len(jpeg) // 2]}, 400, "truncated or corrupt"),
        Case("truncated png", {"data": png[:100]}, 400, "truncated or corrupt"),
        Case("corrupt png header", {"data": png[:16] + b"\xff" * 64 + png[80:]}, 400, "not an image"),
        Case("jpeg magic then junk", {"data": b"\xff\xd8\xff\xe0" + os.urandom(2000)}, 400, ""),
        Case("1x1", {"data": encode(np.zeros((1, 1, 3), np.uint8))}, 400, "smaller than one 16x16 patch"),
        Case("smaller than a patch", {"data": encode(random_rgb(10, 12))}, 400, "smaller than one 16x16 patch"),
        Case("extreme aspect 20000x2", {"data": encode(np.zeros((2, 20000, 3), np.uint8))}, 400, "smaller than one 16x16 patch"),
        Case("extreme aspect 16x20000", {"data": encode(np.zeros((16, 20000, 3), np.uint8))}, 413, "max_tokens"),
        Case("decompression bomb 40000x40000", {"data": png_bomb()}, 413, "decompression bomb"),
        Case("16-bit tiff", {"data": encode(Image.fromarray(SMOOTH[..., 0].astype(np.uint16) * 257), "TIFF")}, 200),
        Case("float tiff", {"data": encode(Image.fromarray(SMOOTH[..., 0].astype(np.float32) / 255), "TIFF")}, 200),
        Case("cmyk jpeg", {"data": encode(Image.fromarray(SMOOTH).convert("CMYK"), "JPEG")}, 200),
        Case("palette with transparency", {"data": encode(pal, "PNG", transparency=0)}, 200),
        Case("animated gif", {"data": frames("GIF")}, 200),
        Case("multi-page tiff", {"data": frames("TIFF")}, 200),
        Case("exif-rotated jpeg", {"data": exif_rotated()}, 200),
        Case("webp", {"data": encode(SMOOTH, "WEBP")}, 200),
        Case("png sent as text/plain", {"data": png, "headers": {"Content-Type": "text/plain"}}, 200),
        Case("png sent as application/json", {"data": png, "headers": {"Content-Type": "application/json"}}, 200),
        Case("text sent as image/jpeg", {"data": b"definitely not a jpeg", "headers": {"Content-Type": "image/jpeg"}}, 400, "not an image"),
        Case(
            "malformed multipart",
            {
                "data": b'--xyz\r\nContent-Disposition: form-data; name="data"\r\n\r\nabc',
                "headers": {"Content-Type": "multipart/form-data; boundary=abc"},
            },
            400,
            "",
        ),
        Case("multipart without image", multipart({"layer": "1"}), 400, "exactly one image field"),
        Case("json invalid base64", {"json": {"image": "%%%not base64%%%"}}, 400, "not valid base64"),
        Case("json with a url", {"json": {"image": "https://example.com/cat.jpg"}}, 400, "URLs are not fetched"),
        Case("json without image", {"json": {"short_side": 32}}, 400, '"image"'),
        Case("json list", {"json": [1, 2, 3]}, 400, "JSON body must be an object"),
        Case("json malformed", {"data": b'{"image": ', "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
        Case("json base64 of text", {"json": {"image": b64(b"plain text")}}, 400, "not an image"),
        Case("unknown option", multipart({"colour": "red"}, png), 400, "unknown option"),
        Case("ill-typed layer", multipart({"layer": "abc"}, png), 400, "layer='abc' is not an integer"),
        Case("short_side=0", multipart({"short_side": "0"}, png), 400, "must be a positive integer"),
        Case("heads out of range", multipart({"heads": "0,7"}, png), 400, "head indices in 0..2"),
        Case("negative scale", multipart({"scale": "-1"}, png), 400, "positive number"),
        Case("huge scale", multipart({"scale": "1e300"}, png), 400, "scale"),
        Case("huge size", multipart({"size": "100000x100000"}, png), 413, "max_tokens"),
        Case("two geometry options", multipart({"scale": "1", "size": "32x32"}, png), 400, "conflict"),
        Case("bad precision", multipart({"precision": "fp8"}, png), 400, "precision"),
        Case("over max_request_size", {"data": b"\0" * (31 * 1024 * 1024)}, 413, ""),
    ]


def worker_pids(served: Served) -> list[int]:
    reply = requests.get(f"{served.management}/models/{NAME}", timeout=TIMEOUT)
    return [w["pid"] for w in reply.json()[0]["workers"]]


def test_bad_input_corpus(served: Served) -> None:
    cases = corpus()
    assert len(cases) >= 30
    pids = worker_pids(served)
    good = encode(random_rgb(48, 64))
    problems = []
    for case in cases:
        reply = requests.post(served.url, timeout=TIMEOUT, **case.kwargs)
        if reply.status_code != case.status:
            problems.append(f"{case.name}: HTTP {reply.status_code} (expected {case.status}): {reply.text[:200]}")
        elif case.status != 200 and reply.headers.get("Content-Type", "").startswith("application/json"):
            if case.message not in reply.json().get("error", reply.json().get("message", "")):
                problems.append(f"{case.name}: message {reply.text[:200]!r} lacks {case.message!r}")
        elif case.status != 200 and case.message:
            problems.append(f"{case.name}: not a JSON error: {reply.headers.get('Content-Type')} {reply.text[:100]}")
        after = requests.post(served.url, files={"data": good}, data={"scale": "1"}, timeout=TIMEOUT)  # small: the probe is for liveness
        if after.status_code != 200:
            problems.append(f"after {case.name}: valid request got HTTP {after.status_code}")
    assert not problems, "\n".join(problems)
    assert worker_pids(served) == pids  # no worker restart
    assert "Backend worker process died" not in (served.log_dir / "ts_log.log").read_text()


def test_exif_rotation_is_visible_in_the_served_sizes(served: Served) -> None:
    doc = requests.post(served.url, files={"data": exif_rotated()}, data={"scale": "1"}, timeout=TIMEOUT).json()
    assert doc["input_size"] == [64, 48]  # stored 48x64 (HxW), EXIF orientation 6 turns it


def test_load_500_requests_concurrency_8(served: Served) -> None:
    """Bounded load: mixed valid/invalid, 0 lost, 0 5xx, every valid answer equal to the in-process one."""
    images = [encode(random_rgb(32 + 16 * i, 48, seed=i)) for i in range(4)]
    expected = {
        i: np.asarray(orjson.loads(answer(served.in_process, [{"data": img, "scale": "1"}])[0].body)["attention"])
        for i, img in enumerate(images)
    }

    def correct(i: int):
        return lambda reply: np.allclose(np.asarray(reply.json()["attention"]), expected[i], atol=1e-6)

    probes = [Probe(f"valid {i}", {"files": {"data": img}, "data": {"scale": "1"}}, 200, correct(i)) for i, img in enumerate(images)]
    probes += [Probe("junk", {"data": b"junk"}, 400), Probe("bad layer", {"files": {"data": images[0]}, "data": {"layer": "x"}}, 400)]
    report = run_load(served.url, probes, total=510, concurrency=8, time_limit=300)
    print("\nload:", report.summary())
    assert report.sent == 510 and report.answered == 510
    assert report.lost == 0 and report.server_errors == 0 and report.wrong == 0, report.failures[:5]
    assert report.statuses[200] == 340 and report.statuses[400] == 170


def test_load_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        run_load("http://example.com/predictions/x", [], 1, 1, 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A model store with the tiny random-weights archive, for servers of their own."""
    path = tmp_path_factory.mktemp("store")
    settings = model_config(path, {"attention_kernel": "sdpa"})  # a worker (re)started in seconds: no kernel measurement at load
    return archive_tiny(path, "random", settings)


def test_killed_worker_is_restarted_and_only_in_flight_requests_fail(store: Path, model_api: ModelApiServer) -> None:
    """On the session's model-API TorchServe (not the served fixture's: its log must stay free of dead workers)."""
    image = encode(random_rgb(64, 64))
    probes = [Probe("valid", {"files": {"data": image}, "data": {"scale": "1"}}, 200)]
    with model_api.register(store / f"{NAME}.mar"):
        management = model_api.props["management_address"]
        (pid,) = [w["pid"] for w in requests.get(f"{management}/models/{NAME}", timeout=10).json()[0]["workers"]]
        results = {}
        load = threading.Thread(target=lambda: results.update(report=run_load(model_api.url(NAME), probes, 300, 4, 240)))
        load.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        load.join()
        report = results["report"]
        print(f"\nworker {pid} killed during load: {report.summary()}")
        # only requests in flight at the kill fail (<= concurrency x TorchServe batch), and they fail cleanly
        assert report.lost == 0 and report.answered == 300
        assert 0 < report.server_errors <= 4 * 4
        workers = requests.get(f"{management}/models/{NAME}", timeout=10).json()[0]["workers"]
        assert workers[0]["pid"] != pid and workers[0]["status"] == "READY"
        after = run_load(model_api.url(NAME), probes, 20, 4, 60)
        assert after.statuses[200] == 20


def broken_archive(store: Path, tmp: Path) -> Path:
    """A copy of the tiny archive whose handler settings the worker must refuse (max_tokens: -5)."""
    broken = tmp / "store"
    broken.mkdir()
    with zipfile.ZipFile(store / f"{NAME}.mar") as src, zipfile.ZipFile(broken / f"{NAME}.mar", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data)
                config["handler"]["max_tokens"] = -5
                data = yaml.safe_dump(config).encode()
            dst.writestr(item, data)
    return broken


def test_model_that_fails_to_load_fails_fast_with_the_reason(store: Path, tmp_path: Path, torchserve: TorchServe) -> None:
    broken = broken_archive(store, tmp_path)
    start = time.monotonic()
    with pytest.raises(ServeError, match="max_tokens must be positive"), torchserve(broken, NAME, timeout=120):
        pass
    assert time.monotonic() - start < 60


def test_make_serve_fails_instead_of_hanging(store: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """`python -m scripts.serve start` (what `make serve` runs) exits 1 with the reason."""
    broken = broken_archive(store, tmp_path)
    private = Path(tempfile.mkdtemp(prefix="ts-"))  # pid file, sockets: not the developer's TorchServe
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setenv("TEMP", str(private))
    config = tmp_path / "config.properties"
    write_private_config(REPO / "config.properties", config, broken)
    args = [
        "start",
        "--model-name",
        NAME,
        "--config",
        str(config),
        "--model-store",
        str(broken),
        "--log-dir",
        str(tmp_path / "logs"),
        "--timeout",
        "120",
    ]
    assert serve.main(args) == 1
    assert "max_tokens must be positive" in caplog.text


def test_production_config_requires_the_key(store: Path, torchserve: TorchServe) -> None:
    image = encode(random_rgb(48, 48))
    with torchserve(store, NAME, config=REPO / "config.production.properties") as server:
        url = server.url(NAME)
        refused = requests.post(url, data=image, timeout=TIMEOUT)
        wrong = requests.post(url, data=image, headers={"Authorization": "Bearer not-the-key"}, timeout=TIMEOUT)
        for reply in (refused, wrong):  # TorchServe 0.12 answers 400 InvalidKeyException
            assert reply.status_code == 400 and "Token Authorization failed" in reply.text
        key = serve.api_key(server.key_file, "inference")
        assert key
        accepted = requests.post(url, data=image, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT)
        assert accepted.status_code == 200 and accepted.json()["weights"] == "random"
        management = requests.get(f"{server.props['management_address']}/models", timeout=TIMEOUT)
        assert management.status_code == 400 and "Token Authorization failed" in management.text
        register = requests.post(
            f"{server.props['management_address']}/models?url=https://example.com/evil.mar",
            headers=serve.auth_header(server.key_file, "management"),
            timeout=TIMEOUT,
        )
        assert register.status_code == 405, register.text  # the model-registration API is off: nothing is fetched
