"""The benchmark's report as data: ``Table`` (columns, rows of cells, notes), ``Target`` (a figure
against its target), ``Report`` (the machine, the tables, the targets), and the columns several
sections share. Each section builds its own (``bench/section.py``); ``bench/report.py`` writes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.timing import Result


@dataclass(frozen=True)
class Column:
    name: str
    fmt: str = "{}"  # how a number in this column is written


@dataclass(frozen=True)
class Skipped:
    """A row that was not measured: its first measured cell reads "<reason>: skipped", the rest empty."""

    reason: str


Cell = str | int | float | Skipped | None  # None: an empty cell


@dataclass
class Table:
    title: str
    columns: tuple[Column, ...]
    rows: list[tuple[Cell, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # paragraphs after the table
    section: str = ""  # the key of the section it belongs to (set by build_report)

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: a row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def add_result(self, lead: tuple[Cell, ...], result: Result, measured: Callable[[], tuple[Cell, ...]]) -> None:
        """A row for ``result``: the ``lead`` cells, then its ``measured`` cells, or "skipped" and blanks."""
        if result.skipped:
            self.add(*lead, Skipped(result.skipped), *[None] * (len(self.columns) - len(lead) - 1))
        else:
            self.add(*lead, *measured())


@dataclass(frozen=True)
class Target:
    """A figure against its target; ``value`` None with ``na`` saying why it cannot be measured here."""

    what: str
    value: float | None
    target: float
    higher_is_better: bool = True
    fmt: str = "{:.1f}x"
    na: str = ""
    section: str = ""  # the key of the section it belongs to (set by build_report)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def line(self) -> str:
        if self.value is None:
            return f"- {self.what}: n/a here: {self.na}"
        word = "meets" if self.met else "MISSES"
        return f"- {self.what}: {self.fmt.format(self.value)} ({word} target {'>=' if self.higher_is_better else '<='} {self.target:g})"


@dataclass
class Report:
    title: str
    machine: list[str]  # bullets: what ran, on what
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


# ----------------------------------------------------------------------------- the columns several sections share
LEAD = (Column("size"), Column("tokens"), Column("path"))  # which configuration a row is
TIMES = (Column("min s", "{:.3f}"), Column("median s", "{:.3f}"))
RSS = (Column("peak RSS MB", "{:.0f}"), Column("loaded MB", "{:.0f}"))  # max RSS of the process, and once the model was loaded


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
