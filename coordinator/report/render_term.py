"""The report in a terminal: rich tables that fold to the terminal's width; plain aligned text
elsewhere (a pipe, a CI log), unfolded and fast for thousands of rows.

Every text from the data (names, reasons) is plain text here: rich gets `Text` objects, never markup to
parse, and control characters (ESC, BEL, newline...) are shown as their escapes (`shared.errors.printable`)."""
from __future__ import annotations

import sys
from typing import Sequence

from fleetbench.coordinator.report.compose import Report
from fleetbench.coordinator.report.render_md import NUMERIC
from fleetbench.shared.errors import printable


def _numeric(column: str) -> bool:
    return column in NUMERIC or column.endswith((" p50 ms", " quality"))


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = ""):
    from rich import box
    from rich.table import Table
    from rich.text import Text
    t = Table(title=Text(printable(title), style="bold") if title else None, title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        numeric = _numeric(c)    # figures never fold: the text columns give way
        t.add_column(Text(printable(c)), justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in rows:
        t.add_row(*(Text(printable(v)) for v in r))
    return t


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    columns = [printable(c) for c in columns]
    rows = [[printable(v) for v in r] for r in rows]
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
        text = printable(text)
        if self.console is not None:
            from rich.text import Text
            self.console.print(Text(text, style="bold" if bold else ""))
        else:
            print(text, file=self.file)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
        if self.console is not None:
            self.console.print(rich_table(columns, rows, title))
            self.console.print()
        else:
            print((printable(title) + "\n" if title else "") + plain_table(columns, rows) + "\n", file=self.file)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "", file=None) -> None:
    Out(file).table(columns, rows, title)


def render(rep: Report, file=None) -> None:
    from fleetbench.coordinator.report import table
    out = Out(file)
    out.text(rep.title, bold=True)
    out.text(rep.subtitle)
    out.text("")
    for s in rep.sections:
        if s.warning:
            out.text(f"{s.node}: {s.warning}")
            out.text("")
        for model, rows in s.tables:
            out.table(table.COURSE, rows, title=f"{s.heading} · model {model}")
        if s.not_measured:
            out.table(table.NOT_MEASURED, s.not_measured, title=f"{s.node}: not measured")
    out.table(rep.hardware_columns, rep.hardware_rows, title="across hardware (SELECT * FROM hardware)")
    out.table(table.BEST, rep.best_rows, title="recommendation")
    out.text(rep.best_note)
