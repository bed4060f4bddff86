"""The matplotlib client: rendering from saved JSON and from the live TorchServe, masks, errors."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from scripts import REPO
from testkit.checkpoints import brightness_seeking_state, encode, random_rgb, save, smooth_rgb, tiny_replica
from testkit.handler import answer
from tests.support.services import tiny_service
from vitscope import options
from vitscope.image import prepare_image
from vitscope.methods import METHODS
from vitscope.methods.explain import ExplainMethod
from vitscope.service import create_service
from vitscope_client import api, cli, draw, mirrors, response, views

from .conftest import Served


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def dark_square(tmp_path_factory) -> tuple[Path, Path, tuple[slice, slice]]:
    """A bright non-square image with an off-centre dark square, and the JSON a dark-seeking model returns."""
    root = tmp_path_factory.mktemp("dark")
    image = np.full((96, 160, 3), 255, np.uint8)
    square = (slice(48, 80), slice(16, 48))
    image[square] = 0
    (root / "square.png").write_bytes(encode(image))
    service = create_service({"model": "dino_vitt16"}, save(brightness_seeking_state(-1.0), root / "dark.pth"))
    (reply,) = answer(service, [{"data": encode(image), "layer": "0", "scale": "1", "upsample": "false"}])
    (root / "square.json").write_bytes(reply.body)
    return root / "square.png", root / "square.json", square


def test_threshold_masks_keep_the_stated_mass() -> None:
    grid = np.random.default_rng(0).random((4, 7, 9)).astype(np.float32)
    for threshold in (0.1, 0.6, 0.9):
        masks = mirrors.threshold_masks(grid, threshold)
        for head, mask in zip(grid, masks, strict=True):
            total, kept = head.sum(), head[mask].sum()
            assert kept / total >= threshold - 1e-6  # holds the mass ...
            assert (kept - head[mask].min()) / total < threshold  # ... with no patch to spare
            assert head[mask].min() >= head[~mask].max()  # the highest patches


def test_render_from_json(dark_square, tmp_path: Path) -> None:
    image_path, json_path, square = dark_square
    rc = cli.main(["--from-json", str(json_path), "--image", str(image_path), "--out", str(tmp_path), "--threshold", "0.6", "--save-heads"])
    assert rc == 0
    figure = png(tmp_path / "square_attention.png")
    # 3 heads -> 3 columns, each a map and its colour bar; rows: summary, heads, masks; 100 dpi
    width, height = draw.figure_size(3, 3, 96 / 160)  # before fit_height takes the white space out
    assert figure.shape[1] == round(width * 100) and 0.7 * height * 100 < figure.shape[0] < height * 100
    assert figure.std() > 20  # not blank
    heads = tmp_path / "square"
    for name in ["img.png", "overlay.png", *(f"attn-head{j}.png" for j in range(3)), *(f"mask_th0.6_head{j}.png" for j in range(3))]:
        arr = png(heads / name)
        assert arr.shape[:2] == (96, 160), name
        assert arr.std() > 1, name
    # the overlay's hottest pixel sits on the dark square (background is white, so only the heat map can make it bright)
    luminance = png(heads / "overlay.png").mean(axis=2)
    y, x = np.unravel_index(np.argmax(luminance), luminance.shape)
    assert square[0].start <= y < square[0].stop and square[1].start <= x < square[1].stop
    mask = png(heads / "mask_th0.6_head0.png")[..., 0] > 127
    inside = np.zeros_like(mask)
    inside[square] = True
    assert mask.any() and not mask[~inside].any()  # 60% of the mass lies within the square's patches


def test_render_upsampled_json_matches_grid_json(dark_square, tmp_path: Path) -> None:
    _, json_path, _ = dark_square
    doc = orjson.loads(json_path.read_bytes())
    grid = response.parse_response(doc)
    p = doc["patch_size"]
    upsampled = {**doc, "upsampled": True, "attention": np.kron(np.asarray(doc["attention"]), np.ones((p, p))).tolist()}
    again = response.parse_response(upsampled)
    np.testing.assert_array_equal(grid.pixels, again.pixels)
    np.testing.assert_array_equal(grid.grid, again.grid)


def test_render_from_npz_file(dark_square, tmp_path: Path) -> None:
    image_path, json_path, _ = dark_square
    doc = orjson.loads(json_path.read_bytes())
    np.savez(tmp_path / "square.npz", attention=np.asarray(doc.pop("attention"), np.float16), meta=np.array(orjson.dumps(doc).decode()))
    assert cli.main(["--from-file", str(tmp_path / "square.npz"), "--image", str(image_path), "--out", str(tmp_path)]) == 0
    assert png(tmp_path / "square_attention.png").std() > 20


@pytest.mark.parametrize("fmt", ["json", "npy", "npz"])
def test_every_served_format_decodes_alike(served: Served, tmp_path: Path, fmt: str) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(encode(random_rgb(48, 80)))
    doc = api.request_attention(served.url, image, {"format": fmt, "scale": "1", "upsample": "false"}, 120, {})
    reference = api.request_attention(served.url, image, {"scale": "1", "upsample": "false"}, 120, {})
    assert doc["image_size"] == reference["image_size"] == [48, 80] and doc["dtype"] == "float32"
    np.testing.assert_allclose(np.asarray(doc["attention"]), np.asarray(reference["attention"]), atol=1e-7)


def test_render_from_live_server(served: Served, tmp_path: Path, capsys) -> None:
    images = []
    for i, (h, w) in enumerate(((120, 90), (64, 200))):
        images.append(tmp_path / f"img{i}.jpg")
        images[-1].write_bytes(encode(random_rgb(h, w, seed=i), "JPEG"))
    rc = cli.main(
        [*map(str, images), "--url", served.url, "--out", str(tmp_path / "out"), "--short-side", "64", "--heads", "0,2", "--layer", "3"]
    )
    assert rc == 0
    assert "rendered 2/2" in capsys.readouterr().out
    for image in images:
        figure = png(tmp_path / "out" / f"{image.stem}_attention.png")
        assert figure.std() > 20


def test_several_images_with_one_bad(served: Served, tmp_path: Path, capsys) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(encode(random_rgb(64, 64)))
    bad.write_bytes(b"this is not a png")
    rc = cli.main([str(good), str(bad), "--url", served.url, "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "rendered 1/2 image(s)" in out and "1 failed" in out
    assert "HTTP 400" in err and "not an image" in err and "Traceback" not in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda d, img, srv: [img, "--url", f"http://127.0.0.1:{closed_port()}/predictions/x"], "cannot reach"),
        (lambda d, img, srv: [img, "--url", srv.url, "--layer", "99"], "HTTP 400 for .*layer=99 is out of range"),
        (lambda d, img, srv: [str(d / "missing.jpg"), "--url", srv.url], "cannot read"),
        (lambda d, img, srv: ["--from-json", str(d / "broken.json"), "--image", img], "malformed response"),
        (lambda d, img, srv: ["--from-json", str(d / "error.json"), "--image", img], "not an attention response"),
        (lambda d, img, srv: ["--from-json", str(d / "other.json"), "--image", img], "wrong --image"),
    ],
)
def test_errors_exit_nonzero_with_one_line(served: Served, dark_square, tmp_path: Path, args, message: str) -> None:
    img = tmp_path / "img.png"
    img.write_bytes(encode(random_rgb(50, 70)))
    (tmp_path / "broken.json").write_text('{"model": ')
    (tmp_path / "error.json").write_text('{"error": "boom"}')
    (tmp_path / "other.json").write_bytes(dark_square[1].read_bytes())  # made for a 96x160 image
    proc = subprocess.run(
        [sys.executable, "client/render_attention.py", *args(tmp_path, str(img), served), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr


def test_http_timeout(tmp_path: Path) -> None:
    """A server that accepts but never answers: the client gives up after --timeout."""
    img = tmp_path / "img.png"
    img.write_bytes(encode(random_rgb(20, 20)))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/predictions/x"
        with pytest.raises(api.ClientError, match=r"no answer .* within 0.5 s"):
            api.request_attention(url, img, {}, timeout=0.5, headers={})


def test_client_runs_alone_from_any_directory(dark_square, tmp_path: Path) -> None:
    """client/ copied alone: runs as a script and imports nothing of the server (nor torch)."""
    image_path, json_path, _ = dark_square
    alone = tmp_path / "elsewhere"
    shutil.copytree(REPO / "client", alone / "client")
    args = ["--from-json", str(json_path), "--image", str(image_path), "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "client/render_attention.py", *args], cwd=alone, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "square_attention.png").stat().st_size > 1000
    code = (
        "import sys; sys.path.insert(0, 'client'); import vitscope_client, vitscope_client.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'vitscope', 'handler', 'scripts')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=alone, check=True, timeout=60)


@pytest.mark.parametrize("kind", ["rgb_jpeg", "rgba_png", "exif_rotated", "palette_transparency", "grey"])
def test_client_aligns_the_image_as_the_server(kind: str) -> None:
    """The client's resize and crop of the original equal the server's, pixel for pixel."""
    rgb = smooth_rgb(70, 110)
    if kind == "rgb_jpeg":
        data = encode(rgb, "JPEG", quality=90)
    elif kind == "rgba_png":
        rgba = np.dstack([rgb, np.linspace(0, 255, 110, dtype=np.uint8)[None].repeat(70, 0)])
        data = encode(Image.fromarray(rgba, "RGBA"))
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        data = encode(rgb, "JPEG", exif=exif)
    elif kind == "palette_transparency":
        data = encode(Image.fromarray(rgb).convert("P"), "PNG", transparency=3)
    else:
        data = encode(Image.fromarray(rgb).convert("L"))
    server = prepare_image(data, patch_size=16, max_pixels=10**8, max_tokens=10**6, short_side=48)
    meta = {"input_size": list(server.input_size), "resized_size": list(server.resized_size), "image_size": list(server.image_size)}
    np.testing.assert_array_equal(mirrors.aligned_image(data, meta), np.asarray(server.image))


def test_figure_is_compact(dark_square) -> None:
    """No gap between rows of the figure is taller than a panel title."""
    image_path, json_path, _ = dark_square
    att = response.parse_response(orjson.loads(json_path.read_bytes())).with_image(image_path)
    fig = att.figure(mask=0.6)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    axes = [ax for ax in fig.axes if ax.images]  # the maps (colour bars hold no image)
    rows: dict[float, list] = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y0, 2), []).append(ax)
    ordered = [rows[y] for y in sorted(rows, reverse=True)]
    assert len(ordered) == 3  # summary, heads, masks
    title = max(ax.title.get_window_extent(renderer).height for ax in axes)
    for upper, lower in itertools.pairwise(ordered):
        bottom_of_upper = min(ax.get_window_extent(renderer).y0 for ax in upper)
        top_of_lower = max(ax.title.get_window_extent(renderer).y1 for ax in lower)
        assert bottom_of_upper - top_of_lower <= title
    assert "dino_vitt16" in fig.get_suptitle() and "layer 0" in fig.get_suptitle()


def test_notebook_api_against_the_server(served: Served) -> None:
    result = api.AttentionClient(served.url).explain(random_rgb(40, 72), heads="0,2", scale=1)
    assert result.grid.shape == (2, 2, 4) and result.meta["heads"] == [0, 2] and result.image.shape == (32, 64, 3)
    rows = [{"data": encode(random_rgb(40, 72)), "heads": "0,2", "scale": "1", "upsample": "false"}]
    expected = orjson.loads(answer(served.in_process, rows)[0].body)["attention"]
    np.testing.assert_allclose(result.grid, np.asarray(expected), atol=1e-6)
    assert result.figure().get_suptitle().startswith("dino_vitt16  layer 11") and result._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(api.ClientError, match=r"HTTP 400 .*layer"):
        api.AttentionClient(served.url).explain(random_rgb(40, 72), layer=99)


@pytest.mark.parametrize(
    "options, files",
    [
        (
            {"layers": "0,11", "mask": "0.6", "boxes": "true"},
            ["attn-layer0-head0.png", "attn-layer11-head2.png", "mask_th0.6_layer11-head2.png"],
        ),
        ({"method": "rollout", "head_fusion": "max", "mask": "0.5", "boxes": "true"}, ["rollout.png", "mask_th0.5_rollout.png"]),
    ],
)
def test_render_layers_grid_and_rollout_with_server_masks(dark_square, tmp_path: Path, options: dict, files: list[str]) -> None:
    image_path, _, _ = dark_square
    service = create_service({"model": "dino_vitt16"}, save(brightness_seeking_state(-1.0), tmp_path / "dark.pth"))
    (reply,) = answer(service, [{"data": image_path.read_bytes(), "scale": "1", "upsample": "false", **options}])
    (tmp_path / "reply.json").write_bytes(reply.body)
    att = response.parse_response(orjson.loads(reply.body))
    assert att.masks is not None and att.masks.shape == att.grid.shape and att.boxes is not None
    rc = cli.main(["--from-json", str(tmp_path / "reply.json"), "--image", str(image_path), "--out", str(tmp_path), "--save-heads"])
    assert rc == 0 and png(tmp_path / "square_attention.png").std() > 20
    for name in files:
        assert png(tmp_path / "square" / name).shape[:2] == (96, 160), name


def test_cli_passes_the_method_options() -> None:
    args = cli.parse_args(["img.png", "--layers", "all", "--mask", "0.6", "--boxes", "--heads", "0"])
    assert cli.option_fields(args) == {"upsample": "false", "heads": "0", "layers": "all", "mask": "0.6", "boxes": "true"}
    args = cli.parse_args(["img.png", "--method", "rollout", "--head-fusion", "min", "--discard-ratio", "0.9"])
    assert cli.option_fields(args) == {"upsample": "false", "method": "rollout", "head_fusion": "min", "discard_ratio": "0.9"}


def test_registers_in_the_titles(tmp_path: Path) -> None:
    """A DINOv2 _reg response with registers=true: the client reads them and titles each head with
    its share on the registers; the patch grid is on multiples of 14 and aligns with the image."""
    variant = tiny_replica("dinov2_vits14_reg")
    service = tiny_service(variant, weights="t")
    data = encode(smooth_rgb(100, 150))
    (reply,) = answer(service, [{"data": data, "registers": "true", "upsample": "false"}])
    att = response.parse_response(orjson.loads(reply.body)).with_image(data)
    assert att.registers is not None and att.registers.shape == (3, 4) and att.grid.shape == (3, 34, 51)
    assert att.image is not None and att.image.shape == (476, 714, 3) and att.pixels.shape == (3, 476, 714)
    titles = draw.map_titles(att, "layer 2", 3)
    assert titles == [f"head {h}, registers {att.registers[h].sum():.0%}" for h in range(3)]
    att.figure().savefig(tmp_path / "reg.png")


@pytest.mark.parametrize("fmt", ["json", "npz", "npz-file"])
def test_registers_survive_every_format_the_client_reads(fmt: str, tmp_path: Path) -> None:
    """The arrays an answer carries (here attention, masks, boxes, registers) reach the client whole,
    whether it asked for JSON or npz or reads a saved .npz (--from-file)."""
    variant = tiny_replica("dinov2_vits14_reg")
    service = tiny_service(variant, weights="t")
    data = encode(smooth_rgb(56, 84))
    options = {"registers": "true", "upsample": "false", "layers": "0,2", "mask": "0.6", "boxes": "true"}
    (reference,) = answer(service, [{"data": data, **options}])
    expected = orjson.loads(reference.body)
    (reply,) = answer(service, [{"data": data, **options, "format": "json" if fmt == "json" else "npz"}])
    if fmt == "npz-file":
        saved = tmp_path / "answer.npz"
        saved.write_bytes(reply.body)
        rc = cli.main(["--from-file", str(saved), "--image", str(_write(tmp_path / "img.png", data)), "--out", str(tmp_path)])
        assert rc == 0 and (tmp_path / "img_attention.png").is_file()
        doc = response.decode_body(saved.read_bytes())
    else:
        doc = response.decode_body(reply.body, reply.content_type)
    att = response.parse_response(doc)
    assert att.registers is not None and att.masks is not None and att.boxes is not None
    np.testing.assert_allclose(att.registers, np.asarray(expected["registers"], np.float32))
    np.testing.assert_array_equal(att.masks, mirrors.decode_masks(expected["masks"]))
    np.testing.assert_array_equal(att.boxes, np.asarray(expected["boxes"]))
    np.testing.assert_allclose(att.grid, np.asarray(expected["attention"], np.float32))
    assert att.meta == {k: v for k, v in expected.items() if k not in mirrors.ARRAY_FIELDS}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_client_installs_alone_and_runs_against_the_server(served: Served, tmp_path: Path) -> None:
    """``pip install ./client`` into a fresh venv (no torch, nothing of the server): the
    ``render-attention`` command and ``AttentionClient.explain()``/``describe()`` against TorchServe."""
    source = shutil.copytree(REPO / "client", tmp_path / "client")  # pip builds in the source folder: not in the repository
    venv = tmp_path / "venv"
    # test time: the venv gets no pip of its own (ensurepip takes seconds); this interpreter's pip installs
    # into it (--python), with the same build isolation and dependency resolution, without compiling every
    # installed module to bytecode up front
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python, command = venv / "bin" / "python", venv / "bin" / "render-attention"
    pip_into_venv = [sys.executable, "-m", "pip", "--python", str(python)]
    pip = subprocess.run([*pip_into_venv, "install", "--quiet", "--no-compile", str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = subprocess.run([*pip_into_venv, "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    assert "vitscope-client==" in installed and "torch" not in installed
    image = tmp_path / "cat.png"
    image.write_bytes(encode(smooth_rgb(40, 72)))
    management = served.management
    cli = [
        str(command),
        str(image),
        "--url",
        served.url,
        "--management",
        management,
        "--layer",
        "3",
        "--mask",
        "0.6",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert png(tmp_path / "cat_attention.png").std() > 10
    code = (
        "import sys, json; from vitscope_client import AttentionClient; "
        "c = AttentionClient(sys.argv[1], management=sys.argv[2]); r = c.explain(sys.argv[3], heads='0,2', scale=1); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'vitscope')]; "
        "print(json.dumps({'shape': list(r.grid.shape), 'methods': [m['name'] for m in c.describe()['methods']], 'bad': bad}))"
    )
    out = subprocess.run(
        [str(python), "-c", code, served.url, management, str(image)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"shape": [2, 2, 4], "methods": list(METHODS), "bad": []}


def test_cli_passes_any_option_the_server_describes() -> None:
    """A method the client has never heard of, with its own options: sent as they are; the server validates."""
    args = cli.parse_args(["img.png", "--method", "head_mean", "--option", "reduce=max", "--option", "layer=3"])
    assert cli.option_fields(args) == {"upsample": "false", "method": "head_mean", "reduce": "max", "layer": "3"}
    with pytest.raises(SystemExit):
        cli.parse_args(["img.png", "--option", "no-equals-sign"])


def test_explain_many_shares_the_colours_and_the_point(served: Served, tmp_path: Path) -> None:
    """Images sent together through TorchServe: one PCA basis (pca_fit=joint), similarity against the
    first image's patch; one figure, one row per image; the CLI's --together does the same."""
    remote = api.AttentionClient(served.url)
    images = [random_rgb(64, 96, seed=1), random_rgb(48, 48, seed=2)]
    joint = remote.explain_many(images, method="pca", pca_fit="joint", foreground="none", short_side=64)
    assert len(joint) == 2 and [r.meta["pca_fit"] for r in joint] == ["joint", "joint"]
    np.testing.assert_array_equal(joint[0].arrays["pca_basis"], joint[1].arrays["pca_basis"])
    colours = np.concatenate([r.grid.reshape(3, -1) for r in joint], axis=1)
    assert colours.min() == 0.0 and colours.max() == 1.0 and joint[1].grid.shape == (3, 4, 4)  # scaled over both images
    fig = joint.figure()
    assert len(fig.axes) == 6 and fig.get_suptitle().endswith("(one basis)") and joint._repr_png_().startswith(b"\x89PNG")
    alone = [remote.explain(image, method="pca", foreground="none", short_side=64) for image in images]
    assert not np.array_equal(alone[1].arrays["pca_basis"], joint[1].arrays["pca_basis"])
    pair = remote.explain_many(images, method="similarity", point="80,20", short_side=64)  # a pixel of the first image only
    assert [r.meta["patch"] for r in pair] == [[1, 5], [1, 5]] and pair[0].grid[0, 1, 5] == pytest.approx(1.0, abs=1e-5)
    assert pair[1].grid.max() < 1.0 - 1e-3  # the second image's map is against the first's patch
    with pytest.raises(api.ClientError, match=r"HTTP 400 .*pca_fit=joint fits one basis on several images"):
        remote.explain_many(images[:1], method="pca", pca_fit="joint")
    paths = [_write(tmp_path / f"{i}.png", encode(image)) for i, image in enumerate(images)]
    argv = [
        *map(str, paths),
        "--url",
        served.url,
        "--together",
        "--method",
        "pca",
        "--option",
        "pca_fit=joint",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 0
    assert Image.open(tmp_path / "out" / "0_together.png").size[1] > 200


def test_a_method_the_client_has_no_view_for_is_drawn_from_its_outputs(dark_square, tmp_path: Path, monkeypatch) -> None:
    """A made-up method, with no client edit: its main output's maps (leading axes flattened to panels,
    DINO's masks of them with --mask), or its colour image when the server describes it so (rgb: true),
    with the point it carries; the CLI draws a saved answer of it, and an .npy answer of it decodes."""
    image_path, json_path, _ = dark_square
    doc = orjson.loads(json_path.read_bytes())
    assert "head_mean" not in views.METHOD_VIEWS and "colour_pca" not in views.METHOD_VIEWS
    heads = np.asarray(doc.pop("attention"), np.float32)  # (3, h, w)
    made_up = {**doc, "method": "head_mean", "reduce": "max", "head_mean_maps": np.stack([heads, heads**2]).tolist()}  # [2, 3, h, w]
    att = response.parse_response(made_up).with_image(image_path)
    assert att.view.output == "head_mean_maps" and att.grid.shape == (2, 3, *doc["grid"]) and not att.arrays
    assert att.meta == {k: v for k, v in made_up.items() if k != "head_mean_maps"}  # its own field "reduce" among them
    assert att.view.map_names(att.meta) == [f"head_mean_maps {i},{j}" for i in range(2) for j in range(3)]
    fig = att.figure(mask=0.6)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert fig.get_suptitle() == f"dino_vitt16  head_mean of layer 0  weights: {doc['weights']}"
    assert titles[:3] == ["image 96x160", "layer 0 mean", "layer 0 mean over image"] and len(titles) == 3 + 6 + 6
    assert "head_mean_maps 1,2" in titles and "head_mean_maps 1,2: 60% of mass" in titles  # each map, and its mask
    (tmp_path / "made_up.json").write_text(json.dumps(made_up))
    argv = ["--from-file", str(tmp_path / "made_up.json"), "--image", str(image_path), "--out", str(tmp_path), "--mask", "0.6"]
    assert cli.main([*argv, "--save-heads"]) == 0 and png(tmp_path / "square_attention.png").std() > 20
    assert png(tmp_path / "square" / "head_mean_maps1,2.png").shape[:2] == (96, 160)
    npy = io.BytesIO()
    np.save(npy, heads[:1])
    meta = {k: v for k, v in made_up.items() if k != "head_mean_maps"}
    body = response.decode_body(npy.getvalue(), "application/x-npy", json.dumps(meta))  # its one array under its method's name
    single = response.parse_response(body)
    assert "head_mean" in body and single.view.fused and single.grid.shape == (1, *doc["grid"])

    described = [{"name": "colours", "dtype": "float", "axes": "[3, H, W]", "help": "colours", "rgb": True}]
    colours = np.random.default_rng(0).random((3, *doc["grid"]))
    made_up_rgb = {**doc, "method": "colour_pca", "point": [40, 20], "colours": colours.tolist()}
    att = response.parse_response(made_up_rgb, described).with_image(image_path)
    assert att.view.rgb and att.view.output == "colours"
    axes = [ax for ax in att.figure().axes if ax.images]
    assert [ax.get_title() for ax in axes] == ["image 96x160", "colours", "over image"] and all(ax.lines for ax in axes)  # the point
    np.testing.assert_array_equal(axes[1].images[0].get_array(), draw.colours_of(att))

    asked: list[str] = []  # AttentionClient.explain: the description comes from the server, asked once

    def describe(self: api.AttentionClient) -> dict:
        asked.append("describe")
        return {"methods": [{"name": "colour_pca", "outputs": described}]}

    monkeypatch.setattr(api.AttentionClient, "describe", describe)
    monkeypatch.setattr(api, "post_image", lambda *args: dict(made_up_rgb))
    remote = api.AttentionClient("http://127.0.0.1:9")
    assert remote.outputs_of("pca") is None and remote.outputs_of(None) is None and not asked  # its own views: no question
    for _ in range(2):
        assert remote.explain(image_path, method="colour_pca").view.rgb
    assert asked == ["describe"]


def test_every_method_the_server_registers_is_drawn_without_a_view(tmp_path: Path) -> None:
    """Every registered method's real answer (each output it can send asked for), under a name the
    client has no view for: drawn from the outputs the server describes, its metadata and arrays split
    as the server sent them."""
    variant = tiny_replica("dinov2_vits14_reg")
    backbone, classifier = tiny_service(variant, weights="t"), tiny_service(replace(variant, num_classes=3), weights="t")
    data = encode(smooth_rgb(56, 84))
    given = {"boolean": "true", "number": "0.6", "point": "8,8"}  # a value of each type the options asking for outputs take
    every_option = options.all_options()
    for name, method in METHODS.items():
        asked = {o.asked_by: given[every_option[o.asked_by].type] for o in method.outputs if o.asked_by}
        required = {option: given[every_option[option].type] for option in method.requires}
        service = classifier if isinstance(method, ExplainMethod) else backbone  # a decision to explain (target=top)
        (reply,) = answer(service, [{"data": data, "method": name, "upsample": "false", **asked, **required}])
        assert reply.status == 200, reply.body
        doc = {**orjson.loads(reply.body), "method": f"new_{name}"}
        sent = [o.name for o in method.outputs if o.name in doc]
        assert sent == [o.name for o in method.outputs]  # each output was asked for
        described = method.describe()["outputs"]  # as the describe API serves them
        assert isinstance(described, list)
        att = response.parse_response(doc, described).with_image(data)
        assert att.view.output == sent[0] and att.view.rgb == method.outputs[0].rgb, name
        assert set(att.meta) == set(doc) - set(sent) and set(att.arrays) == set(sent) - {sent[0], "masks", "boxes", "registers"}, name
        att.figure(mask=0.6).savefig(tmp_path / f"{name}.png")
        assert png(tmp_path / f"{name}.png").std() > 10, name


def test_videos_without_the_video_extra_say_which_extra_to_install(tmp_path: Path) -> None:
    """`pip install ./client` without `[video]`: the client imports (PyAV and tqdm are not imported with
    it), and a video fails with one line naming the extra, an ImportError and a ClientError alike."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["av"] = None  # `import av` fails as where PyAV is not installed
        sys.path.insert(0, "client")
        from vitscope_client import AttentionClient, ClientError, VideoOptions, cli, explain_video
        assert "tqdm" not in sys.modules, "tqdm imported with the client"
        try:
            AttentionClient().explain_video("in.mp4", "out.mp4")
        except ImportError as e:
            assert isinstance(e, ClientError), type(e).__mro__
            print(e)
        try:
            explain_video("in.mp4", "out.mp4", lambda images, fields: [], VideoOptions())
        except ImportError as e:
            print(e)
        sys.exit(cli.main(["--video", sys.argv[1], "--out", sys.argv[2]]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    extra = "pip install 'vitscope-client[video]'"
    printed = proc.stdout.splitlines()
    assert len(printed) == 2 and all(extra in line for line in printed), proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: videos need PyAV") and extra in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def curves(entry_target: str, score: str, aucs: dict[str, tuple[float, float]], steps: int = 4) -> dict:
    """A faithfulness entry as the server answers it: per metric asked, the map's curve and AUC and the random order's."""
    entry: dict = {"target": entry_target, "score": score, "random": {}}
    for i, (metric, (auc, random_auc)) in enumerate(aucs.items()):
        ramp = np.linspace(1, 0, steps + 1) if metric == "deletion" else np.linspace(0, 1, steps + 1)
        entry[metric] = {"auc": auc, "curve": (ramp * auc).tolist()}
        entry["random"][metric] = {"auc": random_auc, "curve": (ramp * random_auc + 0.01 * i).tolist()}
    return entry


def legrad_answer(faithfulness: list[dict] | None) -> dict:
    """A legrad answer of two targets for a 32x48 image (patch 16), built by hand as the schema says."""
    targets = [
        {"target": "class 281", "index": 281, "label": "tabby", "score": 0.91},
        {"target": "text:a dog", "score": 0.3},
    ]
    relevance = np.random.default_rng(0).random((2, 2, 3)).tolist()
    doc = {
        "model": "vit_b16",
        "method": "legrad",
        "patch_size": 16,
        "layer": 11,
        "heads": [0, 1, 2],
        "weights": "test",
        "input_size": [32, 48],
        "resized_size": [32, 48],
        "image_size": [32, 48],
        "grid": [2, 3],
        "targets": targets,
        "relevance": relevance,
    }
    return doc if faithfulness is None else {**doc, "faithfulness": faithfulness}


def curve_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_xlabel() == "fraction of patches"]


def test_faithfulness_curves_are_drawn_beside_the_maps(tmp_path: Path) -> None:
    """An answer with ``faithfulness``: one axes per curve set beside the maps, each metric's curve solid
    and its random order's dashed in the same colour against k/S, the AUCs in the title, the score as
    the y label; only the metrics asked for; a KServe v2 answer's JSON text alike; the CLI draws them,
    ``faithfulness=False`` (``--no-faithfulness``) leaves them out."""
    entries = [
        curves("class 281", "probability", {"deletion": (0.21, 0.58), "insertion": (0.74, 0.37)}),
        curves("text:a dog", "cosine", {"deletion": (0.125, 0.5), "insertion": (0.5, 0.25)}),
    ]
    image = smooth_rgb(32, 48)
    att = response.parse_response(legrad_answer(entries)).with_image(image)
    fig = att.figure()
    axes = curve_axes(fig)
    assert [ax.get_title() for ax in axes] == [
        "class 281 (tabby):\ndel 0.21 (random 0.58) · ins 0.74 (random 0.37)",
        "text:a dog:\ndel 0.12 (random 0.50) · ins 0.50 (random 0.25)",
    ]
    assert [ax.get_ylabel() for ax in axes] == ["probability", "cosine"]
    top = [{"index": 3, "label": "dog", "probability": 0.4}]  # a map without a target on a classifier: scored on its top class
    assert draw.curve_set_name({"target": "class 3"}, [], top) == "class 3 (dog)"
    assert draw.curve_set_name({"target": "image"}, []) == "image"
    for ax, entry in zip(axes, entries, strict=True):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["deletion", "random deletion", "insertion", "random insertion"]
        assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
        assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
        expected = [entry["deletion"], entry["random"]["deletion"], entry["insertion"], entry["random"]["insertion"]]
        for line, metric in zip(lines, expected, strict=True):
            np.testing.assert_allclose(line.get_xdata(), [0, 0.25, 0.5, 0.75, 1])  # k/S, S = 4: five points
            np.testing.assert_allclose(line.get_ydata(), metric["curve"])
        assert ax.get_xlim() == (0, 1)
    maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert min(ax.get_position().x0 for ax in axes) > max(ax.get_position().x1 for ax in maps)  # beside the maps
    assert curve_axes(att.figure(faithfulness=False)) == []
    deletion = curves("class 281", "probability", {"deletion": (0.5, 0.625)})  # one metric asked for
    kserve = response.parse_response({**legrad_answer(None), "faithfulness": json.dumps([deletion])})  # KServe v2: JSON text
    assert kserve.faithfulness == [deletion] and draw.auc_title(deletion, "class 281") == "class 281:\ndel 0.50 (random 0.62)"
    draw.draw_curves(ax := Figure().add_subplot(), deletion, "")
    assert [line.get_label() for line in ax.get_lines()] == ["deletion", "random deletion"]
    (tmp_path / "answer.json").write_text(json.dumps(legrad_answer(entries)))
    (tmp_path / "img.png").write_bytes(encode(image))
    argv = ["--from-file", str(tmp_path / "answer.json"), "--image", str(tmp_path / "img.png"), "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert Image.open(tmp_path / "img_attention.png").size[0] == round(draw.figure_size(2, 3 + 1, 32 / 48)[0] * 100)  # a column more
    assert cli.parse_args([*argv, "--no-faithfulness"]).no_faithfulness and not cli.parse_args(argv).no_faithfulness


def test_no_faithfulness_no_curve_axes() -> None:
    """An answer without ``faithfulness`` gets no curve axes: its figure is the maps alone."""
    att = response.parse_response(legrad_answer(None)).with_image(smooth_rgb(32, 48))
    fig = att.figure()
    rows, cols = draw.figure_layout(att, None)
    assert att.faithfulness == [] and curve_axes(fig) == [] and fig.get_size_inches()[0] == draw.figure_size(rows, cols, 1)[0]
