"""After `make demo`: the demo's report must show what compression changed, not only ×1.00 / ±0.0000.

Reads the latest run of the demo sweep through the report's own cells (what the terminal printed) and exits
1, naming what it saw, when no change column (size ×, p50 ×, F1 ±) of a compressed row differs from its
`none` row.

    python scripts/demo_check.py [--db results.duckdb] [--sweep digits-demo]
"""
from __future__ import annotations

import argparse
import sys

UNCHANGED = {"×1.00", "±0.0000", "-"}
CHANGE = ("size ×", "p50 ×", "F1 ±")


def changes(db: str, sweep: str) -> tuple[list[str], int]:
    """('compression backend bs: size ×0.31' for every change cell that is not ×1.00, rows looked at)."""
    from fleetbench.coordinator.report import table
    from fleetbench.coordinator.report.compose import compose
    from fleetbench.coordinator.report.data import load
    rep = compose(load(db, sweep=sweep))
    where = {c: table.COURSE.index(c) for c in CHANGE}
    found, seen = [], 0
    for section in rep.sections:
        for _model, rows in section.tables:
            for cells in rows:
                if cells[0] == "none":
                    continue
                seen += 1
                found += [f"{cells[0]} {cells[1]} bs{cells[4]}: {c} {cells[i]}"
                          for c, i in where.items() if cells[i] not in UNCHANGED]
    return found, seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="results.duckdb")
    ap.add_argument("--sweep", default="digits-demo")
    args = ap.parse_args(argv)
    found, seen = changes(args.db, args.sweep)
    if not found:
        print(f"demo check: {seen} compressed row(s) of sweep {args.sweep!r} in {args.db}, "
              "and none shows a change (size ×, p50 ×, F1 ± all ×1.00 / ±0.0000)", file=sys.stderr)
        return 1
    print(f"demo check: {len(found)} change(s) against `none`, e.g. {found[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
