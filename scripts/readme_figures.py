"""Regenerate the measured tables of the README and docs/, each labelled with the machine and the command.

Each figure is a sweep file and a query (or, for the demo, the report `make demo` prints: recommendation and
course table); the table replaces what sits between its markers in its page (README.md or docs/*.md):

    <!-- figure:NAME -->
    ...
    <!-- /figure:NAME -->

    python scripts/readme_figures.py [--only demo] [--dry-run]      # or: make readme-figures

The machine label (CPU model, ISA flags, cores) comes from the agent's own probe, so a table copied from
another machine can never carry this one's name.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    name: str
    sweep: str
    sql: Optional[str]          # None: the report's recommendation and course tables, as `make demo` prints them
    doc: str = "README.md"


FIGURES = [
    Figure("demo", "examples/sweep.yaml", None),
    Figure("tfl", "examples/tfl.yaml",
           "SELECT backend, batch_size AS bs, round(latency_p50_ms, 3) AS \"p50 ms\", round(f1_macro, 4) AS F1, "
           "round(top1_agreement, 2) AS agree FROM results WHERE run_id = (SELECT max(run_id) FROM results) "
           "ORDER BY batch_size, latency_p50_ms", "docs/engines.md"),
]


def machine_label() -> str:
    import psutil

    from fleetbench.agent.probe import cpu_info
    model, flags = cpu_info()
    cores = psutil.cpu_count(logical=False)
    ram = psutil.virtual_memory().total / 2**30
    return f"{model}; ISA: {' '.join(flags) or 'unknown'}; {cores} cores; {ram:.0f} GB RAM"


def markdown(names: list[str], rows: list[tuple]) -> str:
    def cell(v) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_tables(db: Path) -> str:
    """The report `coordinator run` prints, as Markdown: the recommendation, then each node's course table."""
    from fleetbench.coordinator.report import table
    from fleetbench.coordinator.report.compose import compose
    from fleetbench.coordinator.report.data import load
    from fleetbench.coordinator.report.render_md import md_table, md_text
    rep = compose(load(db))
    parts = [md_table(table.BEST, rep.best_rows)]
    for s in rep.sections:
        parts += [f"**{md_text(s.warning)}**"] if s.warning else []
        parts += [md_table(table.COURSE[:-1] + ("mark",), rows) for _model, rows in s.tables]
    return "\n\n".join(parts)


def produce(fig: Figure, label: str, from_db: Optional[Path] = None) -> str:
    """Run the figure's sweep (or take the latest run stored in `from_db`) and draw its table, labelled."""
    from fleetbench.coordinator.run import run_sweep
    from fleetbench.coordinator.store import query
    with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
        db = from_db or Path(tmp) / "figures.duckdb"
        if from_db is None:
            run_sweep(str(ROOT / fig.sweep), db=str(db), progress=False, out=sys.stderr)
        body = report_tables(db) if fig.sql is None else markdown(*query(db, fig.sql))
        latest = "FROM results WHERE run_id = (SELECT max(run_id) FROM results)"
        _, counts = query(db, f"SELECT status, count(*) {latest} GROUP BY status ORDER BY status")
        _, [(busy,)] = query(db, f"SELECT max(other_cpu_cores) {latest}")
    status = ", ".join(f"{n} {s}" for s, n in counts)
    loaded = f"; other processes used up to {busy:.2f} cores during the timed windows" if busy is not None else ""
    return (f"Machine: {label}{loaded}. Command: `coordinator run {fig.sweep}` ({status}), then "
            f"`make readme-figures` (scripts/readme_figures.py) for this table.\n\n{body}")


def replace(text: str, name: str, body: str, doc: str = "README.md") -> str:
    pattern = re.compile(rf"(<!-- figure:{name} -->\n).*?(\n<!-- /figure:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{doc}: no <!-- figure:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="figure names (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print the tables, leave the pages alone")
    ap.add_argument("--from-db", type=Path, help="with one --only figure: its latest run in this results file "
                    "(made by the figure's own command), instead of running the sweep again")
    args = ap.parse_args(argv)
    if args.from_db and len(args.only or []) != 1:
        ap.error("--from-db needs exactly one --only figure")
    label = machine_label()
    for fig in FIGURES:
        if args.only and fig.name not in args.only:
            continue
        body = produce(fig, label, args.from_db)
        print(f"--- {fig.name} ({fig.doc})\n{body}\n")
        page = ROOT / fig.doc
        text = replace(page.read_text(), fig.name, body, fig.doc)
        if not args.dry_run:
            page.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
