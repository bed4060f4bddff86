"""Fetching weights from a local HTTP server (never the internet): download, resume, verify, archive."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from scripts import archive, weights
from scripts.download import DownloadError, download, partial_path
from testkit.checkpoints import TINY, backbone_state, full_checkpoint, save, tiny_replica
from vitscope.model import catalogue, variants
from vitscope.model.catalogue import Checkpoint

TEST_CKPT = Checkpoint("dino_vittiny16_test", "dino_vitt16", "dino_vittiny16_test")
TEST_FULL = Checkpoint("dino_vittiny16_test_full_checkpoint", "dino_vitt16", "dino_vittiny16_test", full=True)


@dataclass
class FileServer:
    """Serves ``files`` (URL path -> bytes) with Range support; can cut the first N transfers short."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # bytes sent before dropping the connection ...
    cuts_left: int = 0  # ... for this many responses
    honour_range: bool = True
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            state.requests.append({"path": self.path, **dict(self.headers)})
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range") and state.honour_range:
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.cuts_left > 0:
                state.cuts_left -= 1
                self.wfile.write(payload[: state.cut_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every test's teardown
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of the tiny checkpoints (made once: bytes are immutable, each test gets its own server)."""
    root = tmp_path_factory.mktemp("ckpt")
    return {
        TEST_CKPT.name: save(backbone_state(seed=7), root / "a.pth").read_bytes(),
        TEST_FULL.name: save(full_checkpoint(backbone_state(seed=8)), root / "b.pth").read_bytes(),
    }


@pytest.fixture
def table(monkeypatch, server: FileServer, checkpoint_bytes: dict[str, bytes]) -> dict[str, bytes]:
    """Register tiny checkpoints in the table, served by ``server`` under DINO's URL layout."""
    monkeypatch.setitem(catalogue.CHECKPOINTS, TEST_CKPT.name, TEST_CKPT)
    monkeypatch.setitem(catalogue.CHECKPOINTS, TEST_FULL.name, TEST_FULL)
    monkeypatch.setitem(catalogue.DEFAULT_CHECKPOINTS, "dino_vitt16", TEST_CKPT.name)
    monkeypatch.setenv(catalogue.WEIGHTS_URL_ENV, server.url + "/dino/")
    blobs = dict(checkpoint_bytes)
    for checkpoint in (TEST_CKPT, TEST_FULL):
        server.files[f"/dino/dino_vittiny16_test/{checkpoint.filename}"] = blobs[checkpoint.name]
    return blobs


def test_url_layout_and_override(monkeypatch) -> None:
    monkeypatch.delenv(catalogue.WEIGHTS_URL_ENV, raising=False)
    ckpt = catalogue.CHECKPOINTS["dino_deitsmall8_300ep_pretrain_full_checkpoint"]
    assert (
        ckpt.url()
        == "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain_full_checkpoint.pth"
    )
    monkeypatch.setenv(catalogue.WEIGHTS_URL_ENV, "http://mirror.local/dino")
    assert ckpt.url() == "http://mirror.local/dino/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain_full_checkpoint.pth"
    assert catalogue.get_checkpoint(variants.get_variant("vit_small", 8)).name == "dino_deitsmall8_300ep_pretrain"
    with pytest.raises(ValueError, match="no official weights for dino_vitt8"):
        catalogue.get_checkpoint(variants.get_variant("vit_tiny", 8))
    with pytest.raises(ValueError, match="is a dino_vitb16 checkpoint, not dino_vits16"):
        catalogue.get_checkpoint(variants.get_variant("vit_small", 16), "dino_vitbase16_pretrain")


@pytest.mark.parametrize("checkpoint", [TEST_CKPT, TEST_FULL], ids=["backbone", "full"])
def test_fetch_downloads_verifies_and_records(table, server: FileServer, tmp_path: Path, checkpoint: Checkpoint) -> None:
    path = weights.fetch(TINY, checkpoint, tmp_path)
    assert path == tmp_path / checkpoint.filename and path.read_bytes() == table[checkpoint.name]
    assert not partial_path(path).exists()
    digest = hashlib.sha256(table[checkpoint.name]).hexdigest()
    assert weights.record_path(path).read_text().split()[0] == digest
    assert weights.fetch(TINY, checkpoint, tmp_path) == path  # cached: no second download
    assert len(server.requests) == 1


def test_resume_after_cut_connection_across_calls(table, server: FileServer, tmp_path: Path) -> None:
    url = f"{server.url}/dino/dino_vittiny16_test/{TEST_CKPT.filename}"
    blob = table[TEST_CKPT.name]
    server.cut_after, server.cuts_left = len(blob) // 3, 1
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match=r"interrupted at .* run again to resume"):
        download(url, dest, retries=0)
    kept = partial_path(dest).stat().st_size  # whole chunks received before the cut
    assert 0 < kept <= len(blob) // 3 and not dest.exists()
    download(url, dest, retries=0)
    assert dest.read_bytes() == blob
    assert server.requests[-1]["Range"] == f"bytes={kept}-"


def test_resume_within_one_call(table, server: FileServer, tmp_path: Path) -> None:
    blob = table[TEST_CKPT.name]
    server.cut_after, server.cuts_left = len(blob) // 4, 2
    path = weights.fetch(TINY, TEST_CKPT, tmp_path)
    assert path.read_bytes() == blob
    ranges = [r.get("Range") for r in server.requests]
    assert ranges[0] is None and len(ranges) == 3
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert 0 < offsets[0] < offsets[1] < len(blob)  # each retry resumed where the last one stopped


def test_server_without_range_support_restarts(table, server: FileServer, tmp_path: Path) -> None:
    blob = table[TEST_CKPT.name]
    server.cut_after, server.cuts_left, server.honour_range = 1000, 1, False
    assert weights.fetch(TINY, TEST_CKPT, tmp_path).read_bytes() == blob


def test_checksum_mismatch_leaves_nothing(table, server: FileServer, tmp_path: Path) -> None:
    url = f"{server.url}/dino/dino_vittiny16_test/{TEST_CKPT.filename}"
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match=r"sha256 .* does not match"):
        download(url, dest, expected_sha256="0" * 64)
    with pytest.raises(DownloadError, match="expected 5 \\(size\\)"):
        download(url, dest, expected_size=5)
    assert list(tmp_path.iterdir()) == []


def test_recorded_hash_is_checked_later(table, tmp_path: Path) -> None:
    path = weights.fetch(TINY, TEST_CKPT, tmp_path)
    state = torch.load(path, weights_only=True)
    state["cls_token"] += 1
    torch.save(state, path)  # the cached file changed after its first verified download
    with pytest.raises(weights.WeightsError, match="does not match its sha256"):
        weights.fetch(TINY, TEST_CKPT, tmp_path)


def test_404_names_url_manual_path_and_random(table, server: FileServer, tmp_path: Path, monkeypatch) -> None:
    missing = Checkpoint("dino_vittiny16_missing", "dino_vitt16", "dino_vittiny16_missing")
    with pytest.raises(weights.WeightsError) as err:
        weights.fetch(TINY, missing, tmp_path)
    message = str(err.value)
    assert f"{server.url}/dino/dino_vittiny16_missing/dino_vittiny16_missing.pth answered HTTP 404" in message
    assert str(tmp_path / "dino_vittiny16_missing.pth") in message and "WEIGHTS=random" in message
    assert list(tmp_path.iterdir()) == []


def test_refused_connection(monkeypatch, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv(catalogue.WEIGHTS_URL_ENV, f"http://127.0.0.1:{port}/dino")
    with pytest.raises(weights.WeightsError, match=f"cannot connect to http://127.0.0.1:{port}/dino/"):
        weights.fetch(TINY, TEST_CKPT, tmp_path)


def test_wrong_file_at_url_is_rejected_and_removed(table, server: FileServer, tmp_path: Path) -> None:
    server.files[f"/dino/dino_vittiny16_test/{TEST_CKPT.filename}"] = save(
        backbone_state(variants.get_variant("vit_tiny", 8)), tmp_path / "p8.pth"
    ).read_bytes()
    (tmp_path / "p8.pth").unlink()
    with pytest.raises(weights.WeightsError, match="not the dino_vitt16 checkpoint"):
        weights.fetch(TINY, TEST_CKPT, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch_then_archive_from_cache(table, tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    assert weights.main(["fetch", "--model", "vit_tiny", "--patch", "16", "--cache-dir", str(cache)]) == 0
    assert archive.main(["--model", "vit_tiny", "--patch", "16", "--cache-dir", str(cache), "--export-path", str(store)]) == 0
    with zipfile.ZipFile(store / "dino_vitt16.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        assert "dino_backbone.pth" in mar.namelist()
    digest = hashlib.sha256(table[TEST_CKPT.name]).hexdigest()[:12]
    assert config["handler"]["weights"] == f"{TEST_CKPT.filename}@sha256:{digest}"


def test_archive_a_named_cached_checkpoint(table, tmp_path: Path, caplog) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    args = ["--model", "vit_tiny", "--patch", "16", "--cache-dir", str(cache)]
    assert weights.main(["fetch", *args, "--checkpoint", TEST_FULL.name]) == 0
    assert archive.main([*args, "--export-path", str(store), "--checkpoint", TEST_FULL.name]) == 0
    with zipfile.ZipFile(store / "dino_vitt16.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["weights"].startswith(TEST_FULL.filename)
    assert (
        archive.main(
            ["--model", "vit_small", "--patch", "8", "--cache-dir", str(cache), "--export-path", str(store), "--checkpoint", TEST_FULL.name]
        )
        == 2
    )
    assert "is a dino_vitt16 checkpoint, not dino_vits8" in caplog.text


def test_demo_fallback_without_cache(tmp_path: Path, caplog) -> None:
    rc = archive.main(
        ["--model", "vit_tiny", "--patch", "16", "--cache-dir", str(tmp_path), "--export-path", str(tmp_path), "--fallback-random"]
    )
    assert rc == 0 and "NO DINO WEIGHTS" in caplog.text
    with zipfile.ZipFile(tmp_path / "dino_vitt16.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["weights"] == "random"


def test_dinov2_fetch_and_archive_from_the_local_mirror(server: FileServer, tmp_path: Path, monkeypatch) -> None:
    """DINOv2's URL layout (<base>/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth) through the same
    fetch/verify/archive path, with a small model in dinov2_vits14_reg's layout standing in for it."""
    replica = replace(tiny_replica("dinov2_vits14_reg"), name="dinov2_vits14_reg")
    monkeypatch.setitem(variants.VARIANTS, replica.name, replica)
    checkpoint = catalogue.CHECKPOINTS["dinov2_vits14_reg4_pretrain"]
    server.files["/mirror/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = save(backbone_state(replica), tmp_path / "w.pth").read_bytes()
    monkeypatch.setenv(catalogue.WEIGHTS_URL_ENV, server.url + "/mirror")
    cache, store = tmp_path / "cache", tmp_path / "store"
    assert weights.main(["fetch", "--model", "dinov2_vits14_reg", "--cache-dir", str(cache)]) == 0
    assert (cache / checkpoint.filename).is_file() and weights.record_path(cache / checkpoint.filename).is_file()
    assert archive.main(["--model", "dinov2_vits14_reg", "--cache-dir", str(cache), "--export-path", str(store)]) == 0
    with zipfile.ZipFile(store / "dinov2_vits14_reg.mar") as mar:
        handler = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
    assert handler["model"] == "dinov2_vits14_reg" and handler["weights"].startswith("dinov2_vits14_reg4_pretrain.pth@sha256:")


def test_dinov3_weights_are_gated(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv(catalogue.WEIGHTS_URL_ENV, raising=False)
    assert weights.main(["fetch", "--model", "dinov3_vits16", "--cache-dir", str(tmp_path)]) == 1
    assert "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in caplog.text
    assert "make archive MODEL=dinov3_vits16 WEIGHTS=path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in caplog.text
    assert list(tmp_path.iterdir()) == []
    caplog.clear()
    assert archive.main(["--model", "dinov3_vits16", "--cache-dir", str(tmp_path), "--export-path", str(tmp_path)]) == 2
    assert "no cached weights for dinov3_vits16" in caplog.text and "request access" in caplog.text and "WEIGHTS=random" in caplog.text


def test_hash_in_an_official_file_name_is_checked(tmp_path: Path, monkeypatch, caplog) -> None:
    """A file named as an official DINOv3 checkpoint must have the sha256 its name carries."""
    replica = replace(tiny_replica("dinov3_vits16"), name="dinov3_vits16")
    monkeypatch.setitem(variants.VARIANTS, replica.name, replica)
    blob = save(backbone_state(replica), tmp_path / "w.pth").read_bytes()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    good = Checkpoint(f"dinov3_vits16_pretrain_lvd1689m-{prefix}", "dinov3_vits16", "dinov3_vits16")
    bad = Checkpoint("dinov3_vits16_pretrain_lvd1689m-00000000", "dinov3_vits16", "dinov3_vits16")
    for checkpoint in (good, bad):
        monkeypatch.setitem(catalogue.CHECKPOINTS, checkpoint.name, checkpoint)
        (tmp_path / checkpoint.filename).write_bytes(blob)
    store = tmp_path / "store"
    args = ["--model", "dinov3_vits16", "--export-path", str(store), "--weights"]
    assert archive.main([*args, str(tmp_path / good.filename)]) == 0
    with zipfile.ZipFile(store / "dinov3_vits16.mar") as mar:
        assert (
            yaml.safe_load(mar.read("model-config.yaml"))["handler"]["weights"]
            == f"{good.filename}@sha256:{hashlib.sha256(blob).hexdigest()[:12]}"
        )
    assert archive.main([*args, str(tmp_path / bad.filename)]) == 2
    assert "does not start with 00000000" in caplog.text
