"""Regenerate the README's measured tables, each labelled with the machine and the command that made it.

Each figure is a sweep file and a query; the table replaces what sits between its markers in README.md:

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

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    name: str
    sweep: str
    sql: str


DEMO_SQL = """
SELECT backend, batch_size AS bs, dtype, round(size_mb, 2) AS "size MB", round(size_compressed_mb, 2) AS "zstd MB",
       round(latency_p50_ms, 3) AS "p50 ms", round(latency_p99_ms, 3) AS "p99 ms", round(throughput_ips) AS "items/s",
       round(ram_peak_mb) AS "RAM MB", round(ram_delta_mb) AS "RAM +MB",
       round(precision_macro, 4) || ' / ' || round(recall_macro, 4) || ' / ' || round(f1_macro, 4) AS "P / R / F1",
       round(top1_agreement, 2) AS agree, round(wall_s - measure_s, 1) AS "overhead s"
FROM results WHERE run_id = (SELECT max(run_id) FROM results)
ORDER BY batch_size, latency_p50_ms
"""

FIGURES = [
    Figure("demo", "examples/sweep.yaml", DEMO_SQL),
    Figure("tfl", "examples/tfl.yaml",
           "SELECT backend, batch_size AS bs, round(latency_p50_ms, 3) AS \"p50 ms\", round(f1_macro, 4) AS F1, "
           "round(top1_agreement, 2) AS agree FROM results WHERE run_id = (SELECT max(run_id) FROM results) "
           "ORDER BY batch_size, latency_p50_ms"),
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


def produce(fig: Figure, label: str) -> str:
    from fleetbench.coordinator.run import run_sweep
    from fleetbench.coordinator.store import query
    with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
        db = Path(tmp) / "figures.duckdb"
        counts = run_sweep(str(ROOT / fig.sweep), db=str(db), progress=False, out=sys.stderr)
        names, rows = query(db, fig.sql)
    status = ", ".join(f"{n} {s}" for s, n in sorted((counts or {}).items()))
    return (f"Machine: {label}. Command: `coordinator run {fig.sweep}` ({status}), then "
            f"`make readme-figures` (scripts/readme_figures.py) for this table.\n\n{markdown(names, rows)}")


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- figure:{name} -->\n).*?(\n<!-- /figure:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md: no <!-- figure:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="figure names (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print the tables, leave README.md alone")
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    label = machine_label()
    for fig in FIGURES:
        if args.only and fig.name not in args.only:
            continue
        body = produce(fig, label)
        print(f"--- {fig.name}\n{body}\n")
        text = replace(text, fig.name, body)
    if not args.dry_run:
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
