"""The report in a terminal: rich tables that fold to the terminal's width."""
from __future__ import annotations

from typing import Sequence

from fleetbench.coordinator.report.compose import Report
from fleetbench.coordinator.report.render_md import NUMERIC


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = ""):
    from rich import box
    from rich.table import Table
    t = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              header_style="bold")
    for c in columns:
        numeric = c in NUMERIC or c.endswith((" p50 ms", " quality"))
        t.add_column(c, justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


class Out:
    """Prints to a terminal at its width (tables fold), elsewhere (a pipe, a CI log) unfolded."""

    def __init__(self, file=None):
        import sys

        from rich.console import Console
        self.file = file or sys.stdout
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.console = Console(file=self.file, highlight=False, soft_wrap=False,
                               width=None if self.tty else 100_000)

    def print(self, thing) -> None:
        if not self.tty and not isinstance(thing, str):   # as wide as the table wants, no wider
            self.console.width = 100_000
            self.console.width = max(80, self.console.measure(thing).maximum)
        self.console.print(thing)


def console(file=None) -> Out:
    return Out(file)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "", file=None) -> None:
    console(file).print(rich_table(columns, rows, title))


def render(rep: Report, file=None) -> None:
    from fleetbench.coordinator.report import table
    out = console(file)
    out.print(f"[bold]{rep.title}[/bold]\n{rep.subtitle}\n")
    for s in rep.sections:
        for model, rows in s.tables:
            out.print(rich_table(table.COURSE, rows, title=f"[bold]{s.heading}[/bold] · model {model}"))
        if s.not_measured:
            out.print(rich_table(table.NOT_MEASURED, s.not_measured, title="not measured"))
    out.print(rich_table(rep.hardware_columns, rep.hardware_rows, title="[bold]across hardware[/bold] "
                         "(SELECT * FROM hardware)"))
    out.print(rich_table(table.BEST, rep.best_rows, title="[bold]recommendation[/bold]"))
    out.print(rep.best_note)
