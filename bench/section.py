"""What every benchmark section is: one ``key`` (its ``--sections`` value, the ``section`` of its tables
and targets in the JSON, the anchor of its first heading in the Markdown), what it measures, and how
its figures are written (tables) and judged (targets). ``bench/cli.py`` runs the registry in order."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from bench.tables import Table, Target
from bench.timing import Machine
from vitscope.precision import AUTOCAST_DTYPES, FP32


@dataclass
class Run:
    """What a section measures with: the arguments, the machine probed, a scratch folder, the random
    weights (``args.weights``), the served sections' request and the archived model."""

    args: argparse.Namespace
    machine: Machine
    workdir: Path
    image: bytes  # the served sections' request (a JPEG)

    @property
    def weights(self) -> Path:
        return Path(self.args.weights)

    @property
    def native(self) -> list[str]:
        """The precisions that run natively here (fp32 always)."""
        return [p for p in AUTOCAST_DTYPES if p == FP32 or self.machine.speeds[p].fast]

    @cached_property
    def store(self) -> Path:
        """A model store holding the benchmark model's .mar: archived once, for the first section that serves it."""
        from scripts import archive  # only the served sections archive (not the worker processes that import a section)

        store = self.workdir / "store"
        if archive.main(["--model", self.args.model, "--weights", str(self.weights), "--export-path", str(store)]):
            raise RuntimeError("archiving the benchmark model failed")
        return store


class Section(Protocol):
    key: str  # the one name of the section: --sections, the JSON's "section", the Markdown anchor
    title: str  # what it measures, in a line (python -m bench --help)

    def measure(self, run: Run) -> Any:
        """The section's figures (data); empty or None when there is nothing to report."""
        ...

    def tables(self, figures: Any, args: argparse.Namespace, machine: Machine) -> list[Table]:
        """The figures as tables, in the order the report shows them."""
        ...

    def targets(self, figures: Any, args: argparse.Namespace, machine: Machine) -> list[Target]:
        """The figures judged against the section's targets (none for most)."""
        ...
