"""`coordinator run | validate | query | nodes`: the entry point where the user types."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from fleetbench.shared.errors import FleetError, Interrupted, SweepError

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
    val = sub.add_parser("validate", help="check a sweep file without running it")
    val.add_argument("sweep")
    q = sub.add_parser("query", help="run one read-only SQL statement on the results")
    q.add_argument("sql")
    q.add_argument("--db", default="results.duckdb")
    q.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"))
    nodes = sub.add_parser("nodes", help="print the fleet as the agents' probes see it")
    nodes.add_argument("--address")
    nodes.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"))
    lg = sub.add_parser("logs", help="print the stored traceback and last output lines of a run's failed jobs")
    lg.add_argument("run", help="run id (or a unique prefix), or 'last'")
    lg.add_argument("--job", help="only this job id (or a unique prefix)")
    lg.add_argument("--db", default="results.duckdb")
    cache = sub.add_parser("cache", help="the nodes' caches (engines, shipped checkpoints)")
    csub = cache.add_subparsers(dest="cache_cmd", required=True)
    prune = csub.add_parser("prune", help="remove cache entries not used for --older-than days, on every "
                            "node of --address (one task per node), else on this machine")
    from fleetbench.agent.cli import days
    prune.add_argument("--older-than", type=days, default=30.0, metavar="DAYS",
                       help="age in days since last use (default 30; 0 removes everything)")
    prune.add_argument("--address", help="Ray cluster whose every node prunes its own cache "
                       "(default: $RAY_ADDRESS, else only this machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"run": _run, "validate": _validate, "query": _query, "nodes": _nodes, "cache": _cache, "logs": _logs}[args.cmd](args)
    except SweepError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FleetError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"coordinator: interrupted by {e.signal_name}; {e.hint or 'rows stored so far are kept'}",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("coordinator: interrupted; rows stored so far are kept (continue with --resume)", file=sys.stderr)
        return 130


def _validate(args) -> int:
    from fleetbench.coordinator.run import check_inputs
    from fleetbench.shared.sweep import load_sweep
    sweep = load_sweep(args.sweep)
    check_inputs(sweep, Path(args.sweep))
    per_node = (len(sweep.models) * len(sweep.compression) * len(sweep.backends) * len(sweep.batch_sizes))
    print(f"{args.sweep}: ok — sweep {sweep.name!r}: {len(sweep.models)} model(s) x {len(sweep.compression)} "
          f"compression x {len(sweep.backends)} backend(s) x {len(sweep.batch_sizes)} batch size(s) "
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


def _logs(args) -> int:
    from fleetbench.coordinator.store import read_logs
    run_id, logs = read_logs(args.db, args.run, args.job)
    if not logs:
        print(f"run {run_id}: no logs stored" + (f" for job {args.job}" if args.job else
                                                  " (no job failed, or the run predates logs)"))
        return 0
    for entry in logs:
        print(f"== job {entry['job_id']}  {entry['model']}/{entry['compression']}/{entry['backend']}:"
              f"{entry['device']}/bs{entry['batch_size']} on {entry['hostname']}  failed in {entry['stage']}")
        print(f"reason: {entry['reason']}")
        if entry["traceback"]:
            print("-- traceback\n" + entry["traceback"].rstrip())
        if entry["output"]:
            print("-- last output lines\n" + entry["output"].rstrip())
        print()
    return 0


def _cache(args) -> int:
    import os
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        from fleetbench.agent.cache import base_dir, prune
        removed = prune(args.older_than * 86400)
        print(f"{base_dir()}: removed {len(removed)} entries unused for over {args.older_than:g} day(s)")
        return 0
    from fleetbench.coordinator import cluster
    cluster.connect(address)
    try:
        per_node = cluster.prune_caches(args.older_than * 86400)
    finally:
        cluster.disconnect()
    for host, folder, n in per_node:
        print(f"{host}: {folder}: removed {n} entries unused for over {args.older_than:g} day(s)")
    return 0


def _run(args) -> int:
    from fleetbench.coordinator.run import run_sweep
    summary = run_sweep(args.sweep, db=args.db, address=args.address, resume=args.resume,
                        progress=not args.no_progress)
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())
