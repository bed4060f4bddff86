"""README's generated tables, from the method registry: the request options and the methods.

    python -m scripts.docs            # rewrite the tables in README.md
    python -m scripts.docs --check    # exit 1 if README.md differs from what the registry says (a test runs this)

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``; the rest of
README is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from scripts import REPO
from vitscope.methods import METHODS, OptionSpec
from vitscope.options import all_options

README = REPO / "README.md"
NONE = "\u2013"  # an en dash: README's "no default" / "none"
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def default_cell(spec: OptionSpec) -> str:
    """README's default column: the stated text, else the value as a request writes it, else a dash."""
    if spec.default_text:
        return spec.default_text
    if spec.default is None:
        return NONE
    value = spec.default
    text = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
    return f"`{text}`"


def options_table() -> str:
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for name, spec in all_options().items():
        rows.append(f"| `{name}` | {default_cell(spec)} | {spec.help} |")
    return "\n".join(rows) + "\n"


def methods_table() -> str:
    rows = ["| `method` | what | its own options | needs | refuses | outputs |", "| --- | --- | --- | --- | --- | --- |"]
    for method in METHODS.values():
        own = ", ".join(f"`{s.name}`" for s in method.options) or NONE
        refuses = ", ".join(f"`{name}`" for name in method.excludes) or NONE
        needs = ", ".join(f"`{name}`" for name in method.requires) or NONE
        outputs = ", ".join(f"`{o.name}` `{o.axes}`" + (f" (with `{o.asked_by}`)" if o.asked_by else "") for o in method.outputs)
        rows.append(f"| `{method.name}` | {method.summary} | {own} | {needs} | {refuses} | {outputs} |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[], str]] = {"options": options_table, "methods": methods_table}


def render(text: str) -> str:
    """``text`` with every generated block replaced by what the registry says now."""

    def block(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"README names a generated table {name!r}; known: {sorted(TABLES)}")
        return match[1] + TABLES[name]() + match[4]

    return _BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md is out of date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    rendered = render(text)
    if args.check:
        if rendered != text:
            print(f"{args.readme} is out of date with the method registry: run python -m scripts.docs", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
