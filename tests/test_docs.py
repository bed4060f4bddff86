"""The documentation: the site builds with mkdocs --strict (a broken link or anchor, or a page left out
of the nav, fails it), README is a front door that links every page of docs/, and the generated
parts (the registry's tables, the benchmark's figures) are what they are made of."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from scripts import REPO, docs

README = REPO / "README.md"
README_MAX_LINES = 250
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2.0
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if "WARNING" in line], output
    assert (tmp_path / "site" / "index.html").is_file()
    for page in docs.pages():  # a table that did not render (a stray "|" in a cell) is left as a paragraph of pipes
        html = (tmp_path / "site" / page.relative_to(docs.DOCS)).with_suffix(".html").read_text()
        assert "<p>| " not in html, f"{page.relative_to(REPO)}: a Markdown table did not render"
    for result in docs.results_pages():  # the hook's pages: bench/results/*.md in the site
        assert (tmp_path / "site" / docs.SITE_RESULTS / result.with_suffix(".html").name).is_file(), result


def test_strict_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """The strict settings do catch what they are for: a link to an anchor no heading makes."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[nowhere](api.md#no-such-heading)\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config |= {"docs_dir": str(tmp_path / "docs"), "hooks": [str(REPO / path) for path in config["hooks"]]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-heading" in done.stdout + done.stderr


def test_readme_is_a_front_door() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move the manual's part into docs/"


def readme_links() -> list[str]:
    return [target for target in _LINK.findall(README.read_text()) if "://" not in target and not target.startswith("mailto:")]


def test_readme_links_every_docs_page() -> None:
    linked = {(REPO / target.split("#")[0]).resolve() for target in readme_links() if target.split("#")[0].endswith(".md")}
    missing = [page.relative_to(REPO).as_posix() for page in docs.pages() if page.resolve() not in linked]
    assert not missing, f"README.md's documentation index does not link {missing}"


def test_readme_links_resolve() -> None:
    """README is not built by mkdocs: its own links and anchors are checked here."""
    for target in readme_links():
        path, _, anchor = target.partition("#")
        file = REPO / path if path else README
        assert file.exists(), f"README.md links {target}: no such file"
        if anchor:
            assert anchor in docs.anchors(file.read_text()), f"README.md links {target}: {path or 'README.md'} has no such heading"


def test_generated_parts_are_current() -> None:
    """``python -m scripts.docs --check``: every generated block of docs/ is what the registry and bench/results say."""
    assert docs.main(["--check"]) == 0, "docs/ is out of date: run python -m scripts.docs"


def test_benchmark_figures_are_never_typed_by_hand() -> None:
    """Every results file feeds a page, and no row of a results table appears outside a generated block."""
    texts = {page: page.read_text() for page in [README, *docs.pages()]}
    names = [name for text in texts.values() for name in docs.generated_names(text)]
    for result in sorted(docs.RESULTS.glob("*.json")):
        assert any(name.split(":")[0].strip() == result.stem for name in names), f"no page shows {result.relative_to(REPO)}"
        for table in docs.results_report(result.stem)["tables"]:
            rows = [line for line in docs.results_table(table) if line.startswith("| ") and any(ch.isdigit() for ch in line)]
            for page, text in texts.items():
                outside = docs.without_generated(text)
                copied = [row for row in rows if row in outside]
                assert not copied, f"{page.relative_to(REPO)} copies rows of {result.name} by hand: {copied[:2]}"
