"""`coordinator run | validate | query | nodes`: the entry point where the user types."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from fleetbench.shared.errors import FleetError, SweepError

log = logging.getLogger("coordinator")
EXIT_BAD_INPUT = 2


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="coordinator", description="fleetbench: benchmark exported and "
                                     "compressed vision models across a fleet of machines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a sweep and store its rows")
    run.add_argument("sweep", help="path to sweep.yaml")
    run.add_argument("--db", default="results.duckdb", help="DuckDB results file (default: results.duckdb)")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster)")
    run.add_argument("--resume", action="store_true", help="continue the sweep's latest run: skip jobs already ok")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--repeat-interleaved", action="store_true",
                     help="with measure.repeats N > 1: run each node's jobs in N rounds (A B C A B C ...), "
                          "one timed window per round, so the machine's drift hits every job alike")
    val = sub.add_parser("validate", help="check a sweep file without running it")
    val.add_argument("sweep")
    q = sub.add_parser("query", help="run one read-only SQL statement on the results")
    q.add_argument("sql")
    q.add_argument("--db", default="results.duckdb")
    q.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"))
    nodes = sub.add_parser("nodes", help="print the fleet as the agents' probes see it")
    nodes.add_argument("--address")
    nodes.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"run": _run, "validate": _validate, "query": _query, "nodes": _nodes}[args.cmd](args)
    except SweepError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FleetError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("coordinator: interrupted; rows stored so far are kept (continue with --resume)", file=sys.stderr)
        return 130


def _validate(args) -> int:
    from fleetbench.coordinator.run import check_inputs
    from fleetbench.shared.sweep import load_sweep
    sweep = load_sweep(args.sweep)
    check_inputs(sweep, Path(args.sweep))
    per_node = (len(sweep.models) * len(sweep.compression) * len(sweep.backends) * len(sweep.batch_sizes)
                * len(sweep.scenarios))
    print(f"{args.sweep}: ok — sweep {sweep.name!r}: {len(sweep.models)} model(s) x {len(sweep.compression)} "
          f"compression x {len(sweep.backends)} backend(s) x {len(sweep.batch_sizes)} batch size(s) "
          f"x {len(sweep.scenarios)} scenario(s) "
          f"= {per_node} jobs per node and device; targets {', '.join(sweep.targets)}")
    return 0


def _query(args) -> int:
    from fleetbench.coordinator.formats import render
    from fleetbench.coordinator.store import query
    if not args.sql.strip():
        raise SweepError("query: empty SQL statement")
    columns, rows = query(args.db, args.sql)
    print(render(columns, rows, args.format).rstrip("\n"))
    return 0


def _nodes(args) -> int:
    from fleetbench.coordinator import cluster
    from fleetbench.coordinator.formats import render
    from fleetbench.coordinator.report import fleet_table
    cluster.connect(args.address)
    try:
        profiles = cluster.discover()
    finally:
        cluster.disconnect()
    if args.format == "json":
        print(json.dumps([p.to_dict() for p in profiles], indent=2))
    else:
        print(render(*fleet_table(profiles), args.format))
    return 0


def _run(args) -> int:
    from fleetbench.coordinator.run import run_sweep
    summary = run_sweep(args.sweep, db=args.db, address=args.address, resume=args.resume,
                        progress=not args.no_progress, interleaved=args.repeat_interleaved)
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())
