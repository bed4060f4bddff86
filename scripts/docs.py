"""The documentation's generated parts, and the mkdocs hook that puts bench/results/ into the site.

    python -m scripts.docs            # rewrite every generated block of docs/*.md
    python -m scripts.docs --check    # exit 1 if a page differs from what they are made of (a test runs this)

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``; the rest
of the page is left as it is. NAME is one of

- ``options`` (docs/api.md) and ``methods`` (docs/methods.md): the request options and the methods,
  from the method registry (the same declarations the server runs on and describes);
- ``STEM: TITLE``: the tables of ``bench/results/STEM.json`` whose title starts with TITLE, each
  under a line naming that file and the machine of its run; ``STEM: targets`` its targets as the
  benchmark judged them, ``STEM: machine`` everything it recorded of the machine.

So no benchmark figure is typed into the docs by hand: a page shows a results file's figures,
generated, or names the file.

The options' help texts (the describe API serves them too) link to bare anchors
(``[Precision](#precision)``); in a page, each such link is pointed at the docs page whose heading
makes that anchor (``performance.md#precision``).

mkdocs loads this file as a hook (``hooks:`` in mkdocs.yml): ``on_files`` adds every
``bench/results/*.md`` to the site as ``results/<name>.md`` (mkdocs --strict refuses links out of
docs/, so the pages name those files by path, and the site's navigation carries them). The hook
imports nothing of the package, so the site builds without torch; the tables need the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files

REPO = Path(__file__).resolve().parent.parent  # as scripts.REPO; not imported, so that mkdocs can load this file alone
DOCS = REPO / "docs"
RESULTS = REPO / "bench" / "results"
SITE_RESULTS = "results"  # where the hook puts bench/results/*.md in the site
NONE = "\u2013"  # an en dash: the tables' "no default" / "none"
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LOCAL_LINK = re.compile(r"\]\(#([\w-]+)\)")


class _Spec(Protocol):  # what the default column reads of an option (vitscope's OptionSpec)
    @property
    def default(self) -> Any: ...
    @property
    def default_text(self) -> str: ...


# ----------------------------------------------------------------------------- anchors
def slugify(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) and GitHub give a heading: ``Models: DINO, DINOv2`` -> ``models-dino-dinov2``."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # inline code, emphasis, links: their text
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (code blocks left out)."""
    return {slugify(heading) for heading in _HEADING.findall(_FENCE.sub("", text))}


def pages(root: Path = DOCS) -> list[Path]:
    return sorted(root.rglob("*.md"))


def anchor_homes(root: Path = DOCS) -> dict[str, Path]:
    """Each heading anchor of the docs, and the page it is on (the first page, where several have it)."""
    homes: dict[str, Path] = {}
    for page in pages(root):
        for anchor in anchors(page.read_text()):
            homes.setdefault(anchor, page)
    return homes


def relink(text: str, page: Path | None, homes: dict[str, Path]) -> str:
    """``](#anchor)`` links in generated text, pointed at the page whose heading it is, unless that is ``page``."""

    def link(match: re.Match[str]) -> str:
        home = homes.get(match[1])
        if home is None or page is None or home == page:
            return match[0]
        return f"]({Path(os.path.relpath(home, page.parent)).as_posix()}#{match[1]})"

    return _LOCAL_LINK.sub(link, text)


# ----------------------------------------------------------------------------- the registry's tables
def default_cell(spec: _Spec) -> str:
    """The default column: the stated text, else the value as a request writes it, else a dash."""
    if spec.default_text:
        return spec.default_text
    if spec.default is None:
        return NONE
    value = spec.default
    text = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
    return f"`{text}`"


def options_table() -> str:
    from vitscope.options import all_options

    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for name, spec in all_options().items():
        rows.append(f"| `{name}` | {default_cell(spec)} | {spec.help} |")
    return "\n".join(rows) + "\n"


def methods_table() -> str:
    from vitscope.methods import METHODS

    rows = ["| `method` | what | its own options | needs | refuses | outputs |", "| --- | --- | --- | --- | --- | --- |"]
    for method in METHODS.values():
        own = ", ".join(f"`{s.name}`" for s in method.options) or NONE
        refuses = ", ".join(f"`{name}`" for name in method.excludes) or NONE
        needs = ", ".join(f"`{name}`" for name in method.requires) or NONE
        outputs = ", ".join(f"`{o.name}` `{o.axes}`" + (f" (with `{o.asked_by}`)" if o.asked_by else "") for o in method.outputs)
        rows.append(f"| `{method.name}` | {method.summary} | {own} | {needs} | {refuses} | {outputs} |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[], str]] = {"options": options_table, "methods": methods_table}


# ----------------------------------------------------------------------------- the benchmark's figures
def results_report(stem: str) -> dict[str, Any]:
    """bench/results/STEM.json: the benchmark's report as data (bench.report.to_json)."""
    path = RESULTS / f"{stem}.json"
    if not path.is_file():
        raise ValueError(f"a generated block names {stem}: there is no {path.relative_to(REPO)}")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def cell_text(value: object, fmt: str) -> str:
    """A cell as bench.report writes it (an empty cell, "<reason>: skipped", a formatted number), its ``|`` escaped."""
    if value is None:
        text = ""
    elif isinstance(value, dict):
        text = f"{value['reason']}: skipped"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = fmt.format(value)
    else:
        text = str(value)
    return text.replace("|", "\\|")


def machine_line(stem: str, report: dict[str, Any]) -> str:
    """Which run the figures are from: its file, its machine, what ran the forward passes, torch."""

    def bullet(prefix: str) -> str:
        return next((line[len(prefix) :] for line in report["machine"] if line.startswith(prefix)), "")

    machine = bullet("- Machine: ") or "not recorded"
    where = bullet("- Forward passes on: ")
    ran = f"; forward passes on {where}" if where and where != "the CPU above" else ""
    torch = bullet("- torch ")  # "2.14.1+cu130; GPU: none"
    return f"*From `bench/results/{stem}.json` ({report['title']}). Machine: {machine}{ran}; torch {torch}.*"


def results_table(table: dict[str, Any]) -> list[str]:
    columns = table["columns"]
    header = "| " + " | ".join(cell_text(c["name"], "{}") for c in columns) + " |"
    lines = [f"**{table['title']}**", "", header, "|" + " --- |" * len(columns)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(cell_text(v, c["fmt"]) for v, c in zip(row, columns, strict=True)) + " |")
    for note in table.get("notes", []):
        lines += ["", note]
    return lines


def target_line(target: dict[str, Any]) -> str:
    """A target as bench.report.Target.line writes it."""
    if target["value"] is None:
        return f"- {target['what']}: n/a here: {target['na']}"
    higher = target["higher_is_better"]
    met = target["value"] >= target["target"] if higher else target["value"] <= target["target"]
    word = "meets" if met else "MISSES"
    return f"- {target['what']}: {target['fmt'].format(target['value'])} ({word} target {'>=' if higher else '<='} {target['target']:g})"


def results_block(name: str) -> str:
    """``STEM: TITLE``: the machine line, then the tables of that run whose title starts with TITLE (or its targets)."""
    stem, _, title = (part.strip() for part in name.partition(":"))
    report = results_report(stem)
    lines = [machine_line(stem, report), ""]
    if title == "machine":
        lines = [f"*From `bench/results/{stem}.json` ({report['title']}):*", "", *report["machine"]]
    elif title == "targets":
        if not report["targets"]:
            raise ValueError(f"bench/results/{stem}.json has no targets")
        lines += [target_line(t) for t in report["targets"]]
    else:
        tables = [t for t in report["tables"] if t["title"].startswith(title)]
        if not tables:
            titles = [t["title"] for t in report["tables"]]
            raise ValueError(f"bench/results/{stem}.json has no table titled {title!r}...; its tables: {titles}")
        for i, table in enumerate(tables):
            lines += ([""] if i else []) + results_table(table)
    return "\n".join(lines) + "\n"


def block_text(name: str) -> str:
    if name in TABLES:
        return TABLES[name]()
    if ":" in name:
        return results_block(name)
    raise ValueError(f"a page names a generated block {name!r}; known: {sorted(TABLES)} and 'STEM: TITLE' of bench/results/")


# ----------------------------------------------------------------------------- pages
def render(text: str, page: Path | None = None, homes: dict[str, Path] | None = None) -> str:
    """``text`` (of ``page``, under docs/) with every generated block replaced by what it is made of now."""
    homes = anchor_homes() if homes is None else homes

    def block(match: re.Match[str]) -> str:
        return match[1] + relink(block_text(match["name"]), page, homes) + match[4]

    return _BLOCK.sub(block, text)


def generated_names(text: str) -> list[str]:
    return [match["name"] for match in _BLOCK.finditer(text)]


def without_generated(text: str) -> str:
    """``text`` less its generated blocks: what was typed by hand."""
    return _BLOCK.sub("", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a page is out of date")
    parser.add_argument("pages", nargs="*", type=Path, help="the pages (default: every docs/**/*.md)")
    args = parser.parse_args(argv)
    homes = anchor_homes()
    stale: list[Path] = []
    for page in [p.resolve() for p in args.pages] or pages():
        text = page.read_text()
        rendered = render(text, page, homes)
        if rendered == text:
            continue
        if args.check:
            stale.append(page)
        else:
            page.write_text(rendered)
    for page in stale:
        print(f"{page} is out of date with the method registry or bench/results: run python -m scripts.docs", file=sys.stderr)
    return 1 if stale else 0


# ----------------------------------------------------------------------------- the mkdocs hook
def results_pages() -> Iterable[Path]:
    return sorted(RESULTS.glob("*.md"))


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """mkdocs: bench/results/*.md become the site's pages results/*.md (mkdocs.yml lists them in its nav)."""
    from mkdocs.structure.files import File

    for path in results_pages():
        files.append(File.generated(config, f"{SITE_RESULTS}/{path.name}", abs_src_path=str(path)))
    return files


if __name__ == "__main__":
    sys.exit(main())
