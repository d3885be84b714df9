"""`coordinator run | validate | query | nodes | schema | migrate`: the entry point where the user types."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from fleetbench.shared.errors import FleetError, Interrupted, SweepError

log = logging.getLogger("coordinator")
EXIT_OK = 0            # every row ok or unsupported
EXIT_FAILED_ROWS = 1   # the run finished and at least one row failed (or the fleet could not be used)
EXIT_BAD_INPUT = 2     # refused before anything ran: sweep file, --db, model or dataset files, arguments
EXIT_SIGINT = 130      # interrupted by Ctrl-C (128 + SIGINT); rows stored so far are kept
EXIT_SIGTERM = 143     # stopped by SIGTERM (128 + SIGTERM); rows stored so far are kept
EXIT_CODES = f"""exit status:
  {EXIT_OK}    every row ok or unsupported
  {EXIT_FAILED_ROWS}    at least one row failed (the run went on; see the failed rows' stage and error)
  {EXIT_BAD_INPUT}    input refused before anything ran (one line per problem: file:line:column, field)
  {EXIT_SIGINT}  interrupted (Ctrl-C); {EXIT_SIGTERM} stopped (SIGTERM): finished rows kept, continue with --resume"""


def main(argv: Optional[list[str]] = None) -> int:
    from fleetbench.coordinator.store import fleetbench_version
    parser = argparse.ArgumentParser(prog="coordinator", description="fleetbench: benchmark exported and "
                                     "compressed vision models across a fleet of machines",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fleetbench {fleetbench_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a sweep and store its rows", epilog=EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("sweep", help="path to sweep.yaml")
    run.add_argument("--db", default="results.duckdb", help="DuckDB results file (default: results.duckdb)")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster)")
    run.add_argument("--resume", action="store_true", help="continue the sweep's latest run: skip jobs already ok")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    val = sub.add_parser("validate", help="check a sweep file and everything `run` checks before the fleet starts")
    val.add_argument("sweep")
    val.add_argument("--db", default="results.duckdb", help="results file `run` would write (checked, not written)")
    val.add_argument("--address", help="also check `targets` against this running Ray cluster")
    sub.add_parser("schema", help="print the JSON Schema of a sweep file (for editors)")
    mig = sub.add_parser("migrate", help="upgrade a results file of an older fleetbench (one transaction)")
    mig.add_argument("--db", default="results.duckdb")
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
        return {"run": _run, "validate": _validate, "query": _query, "nodes": _nodes, "schema": _schema,
                "migrate": _migrate, "cache": _cache, "logs": _logs}[args.cmd](args)
    except SweepError as e:
        for line in str(e).splitlines():
            print(f"coordinator: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FleetError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # `coordinator schema | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except Interrupted as e:
        print(f"coordinator: interrupted by {e.signal_name}; {e.hint or 'rows stored so far are kept'}",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("coordinator: interrupted; rows stored so far are kept (continue with --resume)", file=sys.stderr)
        return EXIT_SIGINT


def _validate(args) -> int:
    from fleetbench.coordinator.run import preflight
    sweep = preflight(args.sweep, db=args.db).sweep
    per_node = (len(sweep.models) * len(sweep.compression) * len(sweep.backends) * len(sweep.batch_sizes))
    print(f"{args.sweep}: ok — sweep {sweep.name!r}: {len(sweep.models)} model(s) x {len(sweep.compression)} "
          f"compression x {len(sweep.backends)} backend(s) x {len(sweep.batch_sizes)} batch size(s) "
          f"= {per_node} jobs per node and device; targets {', '.join(sweep.targets)}")
    if not args.address:
        print("targets: not checked against a fleet (give --address to check them against a running cluster)")
        return 0
    from fleetbench.coordinator import cluster
    from fleetbench.coordinator.plan import select_nodes
    where = cluster.connect(args.address)
    try:
        profiles = cluster.discover()
    finally:
        cluster.disconnect()
    try:
        chosen = select_nodes(sweep.targets, profiles)
    except SweepError as e:
        raise SweepError(f"{args.sweep}: {e}") from None
    print(f"targets: ok on {where}: {len(chosen)} of {len(profiles)} node(s) selected")
    return 0


def _schema(args) -> int:
    from fleetbench.shared.sweep import sweep_json_schema
    print(json.dumps(sweep_json_schema(), indent=2))
    return 0


def _migrate(args) -> int:
    from fleetbench.coordinator.store import SCHEMA_VERSION, Store, StoreError, inspect
    try:
        before = inspect(args.db, for_write=True)
        if not Path(args.db).exists():
            raise StoreError(f"{args.db}: no such results database")
        with Store(args.db):
            pass
    except StoreError as e:
        raise SweepError(f"--db {e}") from None
    print(f"{args.db}: schema {SCHEMA_VERSION}" + (" (already)" if before == SCHEMA_VERSION else
                                                    f" (migrated from schema {before})"))
    return 0


def _query(args) -> int:
    from fleetbench.coordinator.formats import render
    from fleetbench.coordinator.store import query
    from fleetbench.shared.errors import StoreError
    if not args.sql.strip():
        raise SweepError("query: empty SQL statement")
    try:
        columns, rows = query(args.db, args.sql)
    except StoreError as e:
        if "is busy" in str(e):
            raise
        raise SweepError(str(e)) from None
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
    if summary is None:
        return EXIT_FAILED_ROWS
    return EXIT_FAILED_ROWS if summary.get("failed") else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
