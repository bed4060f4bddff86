"""What the guide tests share: the guide's code blocks, a copy of the package to apply them to, what
the copy changes, and a fresh interpreter that imports the copy."""

from __future__ import annotations

import difflib
import filecmp
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO

PACKAGE = REPO / "vitscope"


def code_blocks(guide: Path, language: str) -> list[str]:
    """The guide's fenced blocks of ``language`` (```python, ```diff), in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", guide.read_text(), re.MULTILINE | re.DOTALL)


def package_copy(root: Path) -> Path:
    """A copy of vitscope/ under ``root`` (put first on the path of a fresh interpreter by ``run_fresh``)."""
    return Path(shutil.copytree(PACKAGE, root / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


@dataclass(frozen=True)
class Changes:
    """What a copy of the package changes, file names relative to the package."""

    added_files: list[str]
    missing_files: list[str]
    added_lines: dict[str, list[str]]  # every changed file -> the lines it gains, in order
    removed_lines: dict[str, list[str]]  # every changed file -> the lines it loses, in order


def changes(copy: Path) -> Changes:
    """The files ``copy`` adds or lacks against vitscope/, and the lines each changed file gains and loses."""
    ours = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    theirs = {p.relative_to(copy).as_posix() for p in copy.rglob("*.py")}
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    for name in sorted(ours & theirs):
        if not filecmp.cmp(PACKAGE / name, copy / name, shallow=False):
            diff = list(difflib.ndiff((PACKAGE / name).read_text().splitlines(), (copy / name).read_text().splitlines()))
            added[name] = [line[2:] for line in diff if line.startswith("+ ")]
            removed[name] = [line[2:] for line in diff if line.startswith("- ")]
    return Changes(sorted(theirs - ours), sorted(ours - theirs), added, removed)


def run_fresh(root: Path, script: str, *args: str) -> str:
    """``script`` (with ``args``) in a fresh interpreter that imports vitscope from ``root``, the rest
    from the repository; its standard output. ``AssertionError`` with its output if it fails."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PYTHONPATH": f"{root}:{REPO}:{REPO / 'client'}", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout
