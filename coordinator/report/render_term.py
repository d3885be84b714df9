"""The report in a terminal: rich tables that fold to the terminal's width; plain aligned text
elsewhere (a pipe, a CI log), unfolded and fast for thousands of rows."""
from __future__ import annotations

import sys
from typing import Sequence

from fleetbench.coordinator.report.compose import Report
from fleetbench.coordinator.report.render_md import NUMERIC


def _numeric(column: str) -> bool:
    return column in NUMERIC or column.endswith((" p50 ms", " quality"))


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = ""):
    from rich import box
    from rich.table import Table
    t = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              header_style="bold")
    for c in columns:
        numeric = _numeric(c)    # figures never fold: the text columns give way
        t.add_column(c, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if _numeric(c) else v.ljust(w)
                         for v, w, c in zip(cells, widths, columns)).rstrip()
    return "\n".join([line(columns), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


class Out:
    """Where the tables go: a terminal gets rich tables at its width, anything else plain text."""

    def __init__(self, file=None):
        self.file = file or sys.stdout
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.console = None
        if self.tty:
            from rich.console import Console
            self.console = Console(file=self.file, highlight=False)

    def text(self, text: str, bold: bool = False) -> None:
        if self.console is not None:
            self.console.print(f"[bold]{text}[/bold]" if bold else text, markup=bold)
        else:
            print(text, file=self.file)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
        if self.console is not None:
            from rich.text import Text
            table = rich_table(columns, rows)
            if title:
                table.title = Text(title, style="bold")
            self.console.print(table)
            self.console.print()
        else:
            print((title + "\n" if title else "") + plain_table(columns, rows) + "\n", file=self.file)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "", file=None) -> None:
    Out(file).table(columns, rows, title)


def render(rep: Report, file=None) -> None:
    from fleetbench.coordinator.report import table
    out = Out(file)
    out.text(rep.title, bold=True)
    out.text(rep.subtitle + "\n")
    for s in rep.sections:
        for model, rows in s.tables:
            out.table(table.COURSE, rows, title=f"{s.heading} · model {model}")
        if s.not_measured:
            out.table(table.NOT_MEASURED, s.not_measured, title=f"{s.node}: not measured")
    out.table(rep.hardware_columns, rep.hardware_rows, title="across hardware (SELECT * FROM hardware)")
    out.table(table.BEST, rep.best_rows, title="recommendation")
    out.text(rep.best_note)
