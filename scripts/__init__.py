"""Repository tools behind the Makefile: weights, archive, serve, kserve_bundle (not shipped in the .mar)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root: the one place that knows it
