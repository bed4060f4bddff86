"""Facts with one home, checked where they are repeated: the response schema (README, client),
the client's protocol constants, the shipped defaults (model-config.yaml), what the .mar ships."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from scripts import KSERVE_ENGINE_PORT, KSERVE_TORCHSERVE_PORT, REPO, VIEWER_PORT, docs, kserve_bundle
from scripts.serve import read_properties
from vitscope import faithfulness, image, options
from vitscope.masks import encode_masks, threshold_masks
from vitscope.methods import METHODS, all_outputs
from vitscope.model.variants import DEFAULT_MODEL
from vitscope.options import DEFAULTS
from vitscope.protocols.base import CONTENT_TYPES, META_HEADER, TIMEOUT_HEADER
from vitscope.protocols.plain import NPZ_META
from vitscope.schema import response_fields
from vitscope.vocab import DEFAULT_METHOD
from vitscope_client import mirrors as client  # the client's copies of the server's maths and facts
from vitscope_client import response, views


def docs_field_table() -> list[str]:
    """The field names of docs/api.md's response table, in order (``a``, ``b`` rows give several)."""
    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("| field | meaning |") :].split("\n\n")[0]
    names: list[str] = []
    for row in table.splitlines()[2:]:
        names += re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])
    return names


def test_docs_field_table_is_the_schema() -> None:
    assert sorted(docs_field_table()) == sorted(response_fields())


def test_client_reads_only_schema_fields() -> None:
    assert set(client.REQUIRED_KEYS) <= set(response_fields())


def test_client_protocol_constants_match_the_server() -> None:
    assert client.CONTENT_TYPES == CONTENT_TYPES and client.FORMATS == options.FORMATS
    assert client.META_HEADER == META_HEADER and client.PRECISIONS == options.PRECISIONS
    assert client.BACKGROUND == image.BACKGROUND and client.RESAMPLE == image.RESAMPLE
    assert set(views.METHOD_VIEWS) <= set(METHODS)  # the client's own views are of the server's methods (any other: generic)
    assert tuple(name for name in METHODS if name in views.METHOD_VIEWS) == views.METHODS  # and in the registry's order
    assert options.all_options()["head_fusion"].choices == client.HEAD_FUSIONS
    assert set(client.SERVER_OPTIONS) <= set(options.option_names())


def test_client_facts_match_the_server() -> None:
    """The standalone client's copies of the server's names (it may not import the server), and every
    registered method's outputs drawn by it as the describe API declares them (dtype, axes, rgb), under
    a method name it has no view for: a new method needs no client edit."""
    assert set(client.ARRAY_FIELDS) <= {output.name for output in all_outputs()}  # the outputs it knows by name are the server's
    assert client.NPZ_META == NPZ_META and client.DEFAULT_MODEL == DEFAULT_MODEL
    assert client.TIMEOUT_HEADER.lower() == TIMEOUT_HEADER  # the client says how long it waits
    assert client.DEFAULT_METHOD == DEFAULT_METHOD
    assert (client.FAITHFULNESS_METRICS, client.FAITHFULNESS_RANDOM) == (faithfulness.METRICS, faithfulness.RANDOM)
    viewer = (REPO / "viewer" / "js" / "faithfulness.js").read_text()  # the viewer's copy, likewise
    assert re.search(r"^const METRICS = (\[.*\]);$", viewer, re.MULTILINE)[1] == json.dumps(list(faithfulness.METRICS))
    p, (h, w) = 16, (32, 48)
    sizes = {"H": h, "W": w, "H/p": h // p, "W/p": w // p}  # any other axis (maps, D, R): 2
    rng = np.random.default_rng(3)

    def sample(spec: dict) -> object:
        """One output as a JSON answer carries it, shaped and typed as declared."""
        shape = [int(a) if a.isdigit() else sizes.get(a, 2) for a in str(spec["axes"]).strip("[]").split(", ")]
        if spec["dtype"] == "bool":
            return encode_masks(rng.random(shape) > 0.5)
        return (rng.integers(0, 8, shape) if spec["dtype"] == "int32" else rng.random(shape)).tolist()

    for name, method in METHODS.items():
        outputs = method.describe()["outputs"]
        assert isinstance(outputs, list)
        meta = {"model": "m", "patch_size": p, "layer": 0, "num_heads": 2, "heads": [0, 1], "weights": "w", "method": f"new_{name}"}
        meta |= {"input_size": [h, w], "resized_size": [h, w], "image_size": [h, w], "grid": [h // p, w // p]}
        assert set(meta) - {"method"} >= set(client.REQUIRED_KEYS)
        arrays = {str(spec["name"]): sample(spec) for spec in outputs}
        for output, value in arrays.items():  # found an array by its value, whatever its name
            assert client.is_array_field(f"unheard_of_{output}", value), output
        main = outputs[0]
        for described in (outputs, None):  # with the server's description (explain), without (a saved answer)
            att = response.parse_response({**meta, **arrays}, described).with_image(np.zeros((h, w, 3), np.uint8))
            assert att.view.output == main["name"] and att.view.rgb == (described is not None and main.get("rgb") is True), name
            assert att.meta == meta and set(att.arrays) == set(arrays) - {main["name"], "masks", "boxes", "registers"}, name
            fig = att.figure(mask=0.6)
            assert [ax for ax in fig.axes if ax.images] and fig.get_suptitle().startswith(f"m  new_{name} of layer 0"), name


def test_client_decodes_the_server_masks() -> None:
    masks = np.random.default_rng(0).random((2, 3, 5, 9)) > 0.4
    np.testing.assert_array_equal(client.decode_masks(encode_masks(masks)), masks)


def mask_cases() -> list[np.ndarray]:
    """Maps that stress the threshold: random, float32 sums, ties, zeros, one hot, several leading axes."""
    rng = np.random.default_rng(1)
    ties = np.repeat(rng.integers(0, 4, (3, 7, 1)), 9, axis=2).astype(np.float32)
    one_hot = np.zeros((2, 5, 5), np.float32)
    one_hot[:, 2, 3] = 1.0
    return [
        rng.random((3, 7, 9)).astype(np.float32),
        rng.dirichlet(np.ones(60 * 60), size=6).reshape(6, 60, 60).astype(np.float32),  # real maps: 3600 small values
        ties,
        np.zeros((2, 4, 4), np.float32),
        one_hot,
        rng.random((2, 3, 4, 6)).astype(np.float32),
    ]


@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.9, 1.0])
def test_client_masks_are_the_servers_element_by_element(t: float) -> None:
    for maps in mask_cases():
        np.testing.assert_array_equal(client.threshold_masks(maps, t), threshold_masks(maps, t))


def mode_cases() -> dict[str, Image.Image]:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (9, 13), dtype=np.uint8)])
    return {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba[..., 2:], "LA"),
        "L": Image.fromarray(rgb[..., 0]),
        "P+transparency": _with_transparency(Image.fromarray(rgb).convert("P"), 3),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "1": Image.fromarray(rgb[..., 0] > 127),
        "I;16": Image.fromarray(rng.integers(0, 65536, (9, 13), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(-5000, 90000, (9, 13), dtype=np.int32)),
        "I small": Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.int32)),
        "F unit": Image.fromarray(rng.random((9, 13), dtype=np.float32)),
        "F": Image.fromarray((rng.random((9, 13)) * 1e3 - 50).astype(np.float32)),
        "F nan": Image.fromarray(np.full((9, 13), np.nan, np.float32)),
    }


def _with_transparency(img: Image.Image, index: int) -> Image.Image:
    img.info["transparency"] = index
    return img


@pytest.mark.parametrize("mode", list(mode_cases()))
def test_client_converts_images_as_the_server_pixel_for_pixel(mode: str) -> None:
    img = mode_cases()[mode]
    np.testing.assert_array_equal(np.asarray(client.to_rgb(img.copy())), np.asarray(image.to_rgb(img.copy())))


def test_shipped_model_config_states_the_defaults() -> None:
    handler = yaml.safe_load((REPO / "model-config.yaml").read_text())["handler"]
    for name in ("short_side", "upsample", "precision"):
        assert handler[name] == getattr(DEFAULTS, name), name


def test_docs_layout_matches_the_tree() -> None:
    """Every path docs/architecture.md's layout table names exists, and every top-level folder of the tree is named."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("| path | what |") :].split("\n\n")[0]
    named = [p for row in table.splitlines()[2:] for p in re.findall(r"`([^`]+)`", row.split("|")[1])]
    for path in named:
        assert (REPO / path).exists(), f"docs/architecture.md names {path}, which does not exist"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    folders = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    assert folders <= {p.rstrip("/").split("/")[0] for p in named}, folders - {p.split("/")[0] for p in named}


def test_docs_tables_are_the_registrys() -> None:
    """docs/api.md's options and docs/methods.md's methods tables are what ``python -m scripts.docs`` makes of the registry."""
    api, methods = REPO / "docs" / "api.md", REPO / "docs" / "methods.md"
    text, methods_text = api.read_text(), methods.read_text()
    assert "<!-- generated: options -->" in text and "<!-- generated: methods -->" in methods_text
    for page, page_text in ((api, text), (methods, methods_text)):
        assert docs.render(page_text, page) == page_text, f"{page} is out of date with the method registry: run python -m scripts.docs"
    for name, spec in options.all_options().items():
        assert f"| `{name}` | {docs.default_cell(spec)} |" in text


def test_files_that_repeat_a_fact_agree_with_its_home() -> None:
    """The default model and the ports, where files that cannot import them repeat them."""
    for manifest in sorted((REPO / "deploy" / "kserve").glob("*.yaml")):
        names = re.findall(r'"--model_name", "([^"]+)"', manifest.read_text())
        assert all(name == DEFAULT_MODEL for name in names), manifest
    props = read_properties(REPO / "config.properties")
    assert props["cors_allowed_origin"] == f"http://127.0.0.1:{VIEWER_PORT}"
    assert kserve_bundle.config_properties(DEFAULT_MODEL, {}).count(f"0.0.0.0:{KSERVE_TORCHSERVE_PORT}") == 2
    assert KSERVE_ENGINE_PORT not in {8080, 8081, 8082, KSERVE_TORCHSERVE_PORT, VIEWER_PORT}  # one number, one server
