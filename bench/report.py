"""The benchmark's report (``bench/tables.py``: the machine, tables, targets) written as Markdown
(``markdown``) and JSON (``to_json``), after each section (``write_report``). Nothing here measures
anything; each section's tables and targets are in its own module (``bench/section.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import torch

from bench.plot import plot
from bench.tables import Cell, Column, Report, Skipped, Table
from bench.timing import Machine
from vitscope.precision import AUTOCAST_DTYPES, describe_device

if TYPE_CHECKING:
    from bench.section import Section


# ----------------------------------------------------------------------------- writing
def cell_text(value: Cell, column: Column) -> str:
    if value is None:
        return ""
    if isinstance(value, Skipped):
        return f"{value.reason}: skipped"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return column.fmt.format(value)
    return str(value)


def table_markdown(table: Table) -> list[str]:
    lines = ["", f"## {table.title}", "", "| " + " | ".join(c.name for c in table.columns) + " |"]
    lines.append("|" + " --- |" * len(table.columns))
    for row in table.rows:
        lines.append("| " + " | ".join(cell_text(v, c) for v, c in zip(row, table.columns, strict=True)) + " |")
    for note in table.notes:
        lines += ["", note]
    return lines


def markdown(report: Report) -> str:
    """The report as Markdown: the machine, each table (a section's first with its key as anchor), the targets."""
    lines = [f"# {report.title}", "", *report.machine]
    anchored: set[str] = set()
    for table in report.tables:
        if table.section and table.section not in anchored:
            anchored.add(table.section)
            lines += ["", f'<a id="{table.section}"></a>']
        lines += table_markdown(table)
    if report.targets:
        lines += ["", "## Targets", "", *(t.line() for t in report.targets)]
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=1)


# ----------------------------------------------------------------------------- the report
def machine_lines(machine: Machine) -> list[str]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    peaks = [f"{p} {machine.peaks[p]:.0f} GFLOP/s" for p in AUTOCAST_DTYPES if p in machine.peaks]
    peaks += [f"{p} not measured ({s.reason})" for p, s in machine.speeds.items() if not s.fast]
    return [
        f"- Machine: {describe_device(torch.device('cpu'))}",
        f"- Forward passes on: {'the CPU above' if machine.device.type == 'cpu' else machine.description}",
        f"- torch {torch.__version__}; GPU: {', '.join(gpus) or 'none'}",
        "- Reduced precisions: " + "; ".join(f"{p}: {s.reason}" for p, s in machine.speeds.items()),
        f"- precision=auto runs {machine.plan.auto} here ({machine.plan.reasons.get('auto', '')})",
        f"- {machine.kernels.summary()} (measured: {'; '.join(machine.kernels.measured) or 'nothing'})",
        f"- Matmul peak measured in this run: {', '.join(peaks)}.",
    ]


# Results written before each table named its section (the committed bench/results/*.json): the
# section of a table there, from the start of its title. New tables carry their key ("section").
LEGACY_TITLES = {
    "Forward pass": "forward",
    "Methods": "methods",
    "Today's models": "families",
    "Response encoding": "encoding",
    "Batching in process": "batching",
    "torch.compile": "compile",
    "Served latency": "served",
    "Throughput through TorchServe": "throughput",
    "Engines": "engines",
    "Cold start": "coldstart",
    "Under load": "overload",
    "Soak": "overload",
    "Attention videos": "video",
}


def section_of(table: Mapping[str, Any]) -> str:
    """The section key of a table of a results JSON: its ``section``, or (written before tables named
    it) the key its title's start maps to (``LEGACY_TITLES``)."""
    if table.get("section"):
        return str(table["section"])
    for start, key in LEGACY_TITLES.items():
        if table["title"].startswith(start):
            return key
    raise ValueError(f"no section of the benchmark writes a table titled {table['title']!r}")


def build_report(args: argparse.Namespace, machine: Machine, found: Mapping[str, Any], sections: Sequence[Section]) -> Report:
    """Every section that ran (``found``: its figures by section key), as data, in the order of ``sections``."""
    report = Report(f"Benchmark: {args.model}", machine_lines(machine))
    for section in sections:
        figures = found.get(section.key)
        if not figures:
            continue
        report.tables += [replace(t, section=section.key) for t in section.tables(figures, args, machine)]
        report.targets += [replace(t, section=section.key) for t in section.targets(figures, args, machine)]
    return report


def write_report(args: argparse.Namespace, machine: Machine, found: Mapping[str, Any], sections: Sequence[Section], measured: str) -> str:
    """The report of the sections measured so far, to <out>/<name>.md, .json and .png: written after
    each section (``measured``: the one just measured), so that a run cut short (a time limit on a lent
    machine) keeps what it measured. The picture is the forward section's, drawn when it is measured."""
    report = build_report(args, machine, found, sections)
    text = markdown(report)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(to_json(report))
    if measured == "forward" and found.get("forward"):
        plot(found["forward"], machine.peaks, args.out / f"{args.name}.png")
    return text
