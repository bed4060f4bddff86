"""Facts with one home, checked where they are repeated: the response schema (README, client),
the client's protocol constants, the shipped defaults (model-config.yaml), what the .mar ships."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import yaml

from client import render_attention as client
from dino_attention import image, options
from dino_attention.masks import encode_masks, threshold_masks
from dino_attention.methods import METHODS
from dino_attention.options import DEFAULTS
from dino_attention.schema import response_fields
from scripts import REPO


def readme_field_table() -> list[str]:
    """The field names of README's response table, in order (``a``, ``b`` rows give several)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| field | meaning |") :].split("\n\n")[0]
    names: list[str] = []
    for row in table.splitlines()[2:]:
        names += re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])
    return names


def test_readme_field_table_is_the_schema() -> None:
    assert sorted(readme_field_table()) == sorted(response_fields())


def test_client_reads_only_schema_fields() -> None:
    assert set(client.REQUIRED_KEYS) <= set(response_fields())


def test_client_protocol_constants_match_the_server() -> None:
    assert client.CONTENT_TYPES == options.CONTENT_TYPES and client.FORMATS == options.FORMATS
    assert client.META_HEADER == options.META_HEADER and client.PRECISIONS == options.PRECISIONS
    assert client.BACKGROUND == image.BACKGROUND and client.RESAMPLE == image.RESAMPLE
    assert tuple(METHODS) == client.METHODS and options.ALL_OPTIONS["head_fusion"].choices == client.HEAD_FUSIONS
    assert set(client.SERVER_OPTIONS) <= set(options.OPTION_NAMES)


def test_client_decodes_the_server_masks() -> None:
    masks = np.random.default_rng(0).random((2, 3, 5, 9)) > 0.4
    np.testing.assert_array_equal(client.decode_masks(encode_masks(masks)), masks)
    grid = np.random.default_rng(1).random((3, 7, 9)).astype(np.float32)
    np.testing.assert_array_equal(client.threshold_masks(grid, 0.6), threshold_masks(grid, 0.6))


def test_shipped_model_config_states_the_defaults() -> None:
    handler = yaml.safe_load((REPO / "model-config.yaml").read_text())["handler"]
    for name in ("short_side", "upsample", "precision"):
        assert handler[name] == getattr(DEFAULTS, name), name


def test_readme_layout_matches_the_tree() -> None:
    """Every path README's layout table names exists, and every top-level folder of the tree is named."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| path | what |") :].split("\n\n")[0]
    named = [p for row in table.splitlines()[2:] for p in re.findall(r"`([^`]+)`", row.split("|")[1])]
    for path in named:
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    folders = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    assert folders <= {p.rstrip("/").split("/")[0] for p in named}, folders - {p.split("/")[0] for p in named}
