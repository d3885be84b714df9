"""`coordinator run | validate | query | nodes | report | best | runs | compare | schema | migrate`."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from fleetbench.shared.errors import FleetError, Interrupted, SweepError, printable

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


EPILOGS = {
    "main": """examples:
  coordinator run examples/sweep.yaml                 run the demo sweep into results.duckdb
  coordinator report --html report.html --md report.md
  coordinator best --max-f1-drop 0.01                 one line per node: what to deploy
  coordinator runs                                    every stored run and its counts
  coordinator compare RUN_A RUN_B --fail-above 10%    exit 1 on a regression (CI gate)
  coordinator query "SELECT * FROM hardware"          the same configuration on every node""",
    "run": """examples:
  coordinator run examples/sweep.yaml
  coordinator run sweep.yaml --db fleet.duckdb --address head:6379   on a node of the cluster (the head)
  coordinator run sweep.yaml --resume                 skip jobs already ok in the latest run
  coordinator run sweep.yaml --dry-run                per node: measurements, preparations, what is cached
  coordinator run --model timm:resnet18 --checkpoint w.safetensors --num-classes 10 --input-size 3,32,32 \
      --compression none,int8-static --batch-sizes 1,8 --save-sweep resnet18.yaml   one model, no YAML to write""",
    "validate": """examples:
  coordinator validate examples/sweep.yaml
  coordinator validate sweep.yaml --db fleet.duckdb --address ray://head:10001""",
    "schema": """example:
  coordinator schema > sweep.schema.json""",
    "migrate": """example:
  coordinator migrate --db results.duckdb""",
    "query": """examples:
  coordinator query "SELECT * FROM course WHERE status = 'ok'"
  coordinator query -f my.sql --format csv --output rows.csv
  echo "SELECT * FROM results" | coordinator query --format parquet --output rows.parquet
views: course (a row per result, named and judged), hardware (nodes side by side), comparison""",
    "nodes": """example:
  coordinator nodes --address ray://head:10001 --format json""",
    "report": """examples:
  coordinator report                                  the latest run, in the terminal
  coordinator report --sweep digits-demo --html report.html --md report.md
  coordinator report --run 20260101T000000.000000Z-abcdef --max-f1-drop 0.005""",
    "best": """examples:
  coordinator best --max-f1-drop 0.01
  coordinator best --max-f1-drop 0.02 --max-size-mb 5 --by throughput""",
    "runs": """example:
  coordinator runs --db results.duckdb""",
    "compare": """examples:
  coordinator compare RUN_A RUN_B                     exit 1 when a row got slower than 10% and the noise
  coordinator compare RUN_A RUN_B --fail-above 25%    a looser gate for a noisy shared machine""",
    "logs": """examples:
  coordinator logs last                               tracebacks and output of the latest run's failed jobs
  coordinator logs 20261129T1431 --job 3f2a           one job of a run (unique prefixes are enough)""",
    "cache": """examples:
  coordinator cache prune --older-than 30             this machine's cache: entries unused for 30 days
  coordinator cache prune --older-than 0 --address HEAD:6379   every node of a cluster, everything""",
}


def _percent(text: str) -> float:
    """A fraction or a percentage, finite and 0 or more (argparse type): nan or inf would switch a bound off."""
    import math
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction or a percentage (e.g. 0.1 or 10%)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number (e.g. 0.1 or 10%)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _drop(text: str) -> float:
    """A quality drop: a fraction of a score in [0, 1], so at most 1 (100%)."""
    value = _percent(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a quality drop is at most 1 (100%)")
    return value


def _size_mb(text: str) -> float:
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite size above 0 MB")
    return value


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a batch size is 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr and exit 2 (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from fleetbench.coordinator.store import fleetbench_version
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="coordinator", formatter_class=fmt,
                                     epilog=EPILOGS["main"] + "\n\n" + EXIT_CODES,
                                     description="fleetbench: benchmark exported and compressed vision "
                                                 "models across a fleet of machines")
    parser.add_argument("--version", action="version", version=f"fleetbench {fleetbench_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, help: str, epilog: str = ""):
        return sub.add_parser(name, help=help, description=help, formatter_class=fmt,
                              epilog=EPILOGS[name] + ("\n\n" + epilog if epilog else ""))

    def db(p):
        p.add_argument("--db", default="results.duckdb", help="DuckDB results file (default: results.duckdb)")

    run = add("run", "run a sweep and store its rows", EXIT_CODES)
    run.add_argument("sweep", nargs="?", help="path to sweep.yaml (or describe one model with --model)")
    db(run)
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster)")
    run.add_argument("--resume", action="store_true", help="continue the sweep's latest run: skip jobs already ok")
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    run.add_argument("--repeat-interleaved", action="store_true",
                     help="with measure.repeats N > 1: run each node's jobs in N rounds (A B C A B C ...), "
                          "one timed window per round, so the machine's drift hits every job alike")
    run.add_argument("--dry-run", action="store_true", help="print the plan per node (measurements, and the "
                     "preparations they need and which are already cached) and run nothing")
    from fleetbench.coordinator import flags
    flags.add_arguments(run)
    val = add("validate", "check a sweep file and everything `run` checks before the fleet starts")
    val.add_argument("sweep", help="path to sweep.yaml")
    val.add_argument("--db", default="results.duckdb", help="results file `run` would write (checked, not written)")
    val.add_argument("--address", help="also check `targets` against this running Ray cluster")
    add("schema", "print the JSON Schema of a sweep file (for editors)")
    mig = add("migrate", "upgrade a results file of an older fleetbench (one transaction)")
    db(mig)
    q = add("query", "run one read-only SQL statement on the results; print or export its rows")
    q.add_argument("sql", nargs="?", help="the SQL (omit it, or give -, to read it from stdin)")
    q.add_argument("-f", "--file", help="read the SQL from this file")
    db(q)
    q.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown", "parquet"),
                   help="output format (default: table; parquet needs --output)")
    q.add_argument("--output", "-o", help="write the rows to this file instead of stdout (a new file, or an "
                   "existing one with --force; never the --db file, a directory, a device or a symlink)")
    q.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    nodes = add("nodes", "print the fleet as the agents' probes see it")
    nodes.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local cluster)")
    nodes.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"),
                       help="output format (default: table)")
    rep = add("report", "re-render a stored run: per-hardware tables, cross-hardware view, recommendation")
    db(rep)
    which = rep.add_mutually_exclusive_group()
    which.add_argument("--run", help="run id (default: the latest run)")
    which.add_argument("--sweep", help="the latest run of this sweep")
    rep.add_argument("--html", help="write a self-contained HTML report with plots to this file")
    rep.add_argument("--md", help="write the tables as Markdown to this file")
    rep.add_argument("--max-f1-drop", type=_drop, default=0.01,
                     help="quality bound of the recommendation against eager fp32 (default: 0.01)")
    rep.add_argument("--force", action="store_true", help="replace --html / --md files that exist")
    rep.add_argument("--quiet", action="store_true", help="write the files only, print nothing")
    best = add("best", "print the recommended configuration: one line per node (and model)")
    db(best)
    which = best.add_mutually_exclusive_group()
    which.add_argument("--run", help="run id (default: the latest run)")
    which.add_argument("--sweep", help="the latest run of this sweep")
    best.add_argument("--max-f1-drop", type=_drop, default=0.01,
                      help="largest quality drop against eager fp32: F1, else accuracy, else top-1 "
                           "agreement (default: 0.01)")
    best.add_argument("--max-size-mb", type=_size_mb, help="largest model size on disk (MB)")
    best.add_argument("--by", choices=("p50", "p99", "throughput"), default="p50",
                      help="what 'fastest' means (default: p50 at the smallest batch size)")
    best.add_argument("--batch-size", type=_batch, help="compare this batch size (default: the smallest)")
    runs = add("runs", "list stored runs with their status and counts")
    db(runs)
    cmp = add("compare", "compare two runs of one sweep; exit 1 on a regression")
    cmp.add_argument("run_a", metavar="RUN_A", help="the baseline run id")
    cmp.add_argument("run_b", metavar="RUN_B", help="the run to judge")
    db(cmp)
    cmp.add_argument("--fail-above", type=_percent, default=0.10,
                     help="p50 slow-down that counts, when it is also above the noise (default: 10%%)")
    cmp.add_argument("--max-f1-drop", type=_drop, default=0.01,
                     help="quality drop that counts (default: 0.01)")
    cmp.add_argument("--all", action="store_true", help="show every configuration, not only the changed ones")
    lg = add("logs", "print the stored traceback and last output lines of a run's failed jobs")
    lg.add_argument("run", help="run id (or a unique prefix), or 'last'")
    lg.add_argument("--job", help="only this job id (or a unique prefix)")
    db(lg)
    cache = add("cache", "the nodes' caches (prepared work, engines, shipped checkpoints)")
    csub = cache.add_subparsers(dest="cache_cmd", required=True)
    prune = csub.add_parser("prune", help="remove cache entries not used for --older-than days, on every "
                            "node of --address (one task per node), else on this machine")
    from fleetbench.agent.cli import days
    prune.add_argument("--older-than", type=days, default=30.0, metavar="DAYS",
                       help="age in days since last use (default 30; 0 removes everything)")
    prune.add_argument("--address", help="Ray cluster whose every node prunes its own cache "
                       "(default: $RAY_ADDRESS, else only this machine)")
    prune.add_argument("--adopt", action="store_true", help="a cache folder of an older fleetbench (no marker): "
                       "mark it as fleetbench's first, if it holds only what a fleetbench cache holds")
    return parser


COMMANDS = ("run", "validate", "query", "nodes", "report", "best", "runs", "compare", "schema", "migrate",
            "logs", "cache")


def main(argv: Optional[list[str]] = None) -> int:
    cmd = ""
    try:
        args = _parser().parse_args(argv)
        cmd = args.cmd
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        code = globals()[f"_{cmd}"](args)
        sys.stdout.flush()   # a failing stdout (/dev/full, a closed pipe) fails here, not at exit
        return code
    except SweepError as e:   # each kind of refusal is one type with its exit code (shared/errors.py)
        for line in str(e).splitlines():
            print(f"coordinator: {printable(line)}", file=sys.stderr)
        return e.exit_code
    except FleetError as e:
        print(f"coordinator: {printable(str(e), keep_newlines=True)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in _OUTPUT_ERRNOS:
            raise
        return _stdout_failed(e)
    except Interrupted as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(cmd)
    except RuntimeError as e:   # DuckDB's word for a Ctrl-C that came while it ran a statement in this thread
        if str(e) != "Query interrupted":
            raise
        return _interrupted(cmd)


def _interrupted(cmd: str) -> int:
    hint = {"run": "rows stored so far are kept (continue with --resume)",
            "query": QUERY_STOPPED}.get(cmd, "nothing was written")
    print(f"coordinator: interrupted by SIGINT; {hint}", file=sys.stderr)
    return EXIT_SIGINT


QUERY_STOPPED = "the query was stopped, nothing was written"


# A write that failed for want of a reader or of space: printing more would fail the same way.
_OUTPUT_ERRNOS = frozenset({errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})


def _stdout_failed(e: OSError) -> int:
    """One line for a standard output that cannot be written; what is still buffered goes nowhere."""
    import os
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the exit's flush of the buffer cannot fail again
    with contextlib.suppress(OSError, ValueError):
        print(f"coordinator: cannot write the output: {e.strerror or e}", file=sys.stderr)
    return 1


def _validate(args) -> int:
    from fleetbench.coordinator.run import preflight
    checked = preflight(args.sweep, db=args.db)
    sweep = checked.sweep
    per_node = (len(sweep.models) * len(sweep.compression) * len(sweep.backends) * len(sweep.batch_sizes)
                * len(sweep.scenarios))
    print(f"{args.sweep}: ok — sweep {sweep.name!r}: {len(sweep.models)} model(s) x {len(sweep.compression)} "
          f"compression x {len(sweep.backends)} backend(s) x {len(sweep.batch_sizes)} batch size(s) "
          f"x {len(sweep.scenarios)} scenario(s) "
          f"= {per_node} jobs per node and device; targets {', '.join(sweep.targets)}")
    for note in checked.notes:
        print(f"{args.sweep}: {note}")
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


def _sql_text(data: bytes, where: str) -> str:
    """SQL bytes as text: UTF-8, and no NUL (a binary file given by mistake), else one line naming `where`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "give the SQL as UTF-8") from None
    if "\0" in text:
        raise SweepError(f"{where}: holds a NUL byte at offset {text.index(chr(0))}: a binary file, not SQL")
    return text


def _read_sql(args) -> str:
    if args.file:
        if args.sql:
            raise SweepError("query: give the SQL either as an argument or with -f, not both")
        try:
            return _sql_text(Path(args.file).read_bytes(), args.file)
        except OSError as e:
            raise SweepError(f"{args.file}: cannot read the SQL file: {e.strerror}") from None
    if args.sql is not None and args.sql != "-":
        return _sql_text(args.sql.encode("utf-8", "surrogateescape"), "query")
    if sys.stdin.isatty():
        raise SweepError("query: no SQL given (an argument, -f FILE, or on stdin)")
    stdin = getattr(sys.stdin, "buffer", None)
    return _sql_text(stdin.read(), "stdin") if stdin is not None else sys.stdin.read()


def _query(args) -> int:
    from fleetbench.coordinator.api import read_query
    from fleetbench.coordinator.formats import render
    from fleetbench.coordinator.report.export import check_columns, export
    sql = _read_sql(args)
    if not sql.strip():
        raise SweepError("query: empty SQL statement")
    if args.format == "parquet" and not args.output:
        raise SweepError("query: --format parquet writes a file: give --output FILE")
    if args.output:
        from fleetbench.coordinator.outputs import check_output
        check_output(args.output, "--output", force=args.force, db=args.db, reads=[("-f", args.file)])
    try:
        columns, rows = read_query(args.db, sql)
    except KeyboardInterrupt:
        _leave_if_still_querying()
        import signal
        raise Interrupted(signal.SIGINT, QUERY_STOPPED) from None
    check_columns(columns, args.format)
    if args.output:
        export(columns, rows, args.format, args.output)
        print(f"{args.output}: {len(rows)} row(s), {len(columns)} column(s) ({args.format})", file=sys.stderr)
    else:
        print(render(columns, rows, args.format).rstrip("\n"))
    return 0


def _leave_if_still_querying() -> None:
    """A statement that did not stop when interrupted (Python still converting its rows) is not waited
    for: the process leaves at once with 130, as a second Ctrl-C would have it (exiting normally
    under a thread inside DuckDB can abort the process)."""
    import os
    import threading
    if any(t.name == "fleetbench-query" and t.is_alive() for t in threading.enumerate()):
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.write(2, f"coordinator: interrupted by SIGINT; {QUERY_STOPPED}\n".encode())
        os._exit(EXIT_SIGINT)


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
    from fleetbench.shared.errors import StoreError
    try:
        run_id, logs = read_logs(args.db, args.run, args.job)
    except StoreError as e:
        if "is busy" in str(e):
            raise
        raise SweepError(str(e)) from None
    if not logs:
        print(printable(f"run {run_id}: no logs stored" + (f" for job {args.job}" if args.job else
                                                            " (no job failed, or the run predates logs)")))
        return 0
    for entry in logs:   # stored text is shown, never obeyed: control characters (ESC, BEL) as escapes
        print(printable(f"== job {entry['job_id']}  {entry['model']}/{entry['compression']}/{entry['backend']}:"
                        f"{entry['device']}/bs{entry['batch_size']} on {entry['hostname']}  "
                        f"failed in {entry['stage']}"))
        print(printable(f"reason: {entry['reason']}"))
        if entry["traceback"]:
            print("-- traceback\n" + printable(entry["traceback"].rstrip(), keep_newlines=True))
        if entry["output"]:
            print("-- last output lines\n" + printable(entry["output"].rstrip(), keep_newlines=True))
        print()
    return 0


def _cache(args) -> int:
    import os
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        from fleetbench.agent.cache import NotACache, base_dir, prune
        try:
            removed = prune(args.older_than * 86400, adopt_folder=args.adopt)
        except NotACache as e:
            raise SweepError(str(e)) from None
        print(f"{base_dir()}: removed {len(removed)} entries unused for over {args.older_than:g} day(s)")
        return 0
    from fleetbench.coordinator import cluster
    cluster.connect(address)
    try:
        per_node = cluster.prune_caches(args.older_than * 86400, adopt=args.adopt)
    finally:
        cluster.disconnect()
    for host, folder, n, refused in per_node:
        print(f"{host}: {refused}" if refused else
              f"{host}: {folder}: removed {n} entries unused for over {args.older_than:g} day(s)")
    return EXIT_BAD_INPUT if any(refused for *_, refused in per_node) else 0


def _report(args) -> int:
    from fleetbench.coordinator.report.write import report
    report(args.db, run_id=args.run, sweep=args.sweep, html=args.html, md=args.md,
           max_drop=args.max_f1_drop, quiet=args.quiet, force=args.force)
    for path in (args.html, args.md):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _best(args) -> int:
    from fleetbench.coordinator.report import data, table
    from fleetbench.coordinator.report.recommend import best
    from fleetbench.coordinator.report.render_term import print_table
    run = data.load(args.db, args.run, args.sweep)
    hardware = {r["node"]: r.get("hardware") for r in run.rows}
    picks = best(run.rows, max_drop=args.max_f1_drop, max_size_mb=args.max_size_mb, by=args.by,
                 batch_size=args.batch_size)
    print(printable(f"run {run.run.run_id} of sweep {run.run.sweep}: quality drop <= {args.max_f1_drop:g}"
                    + (f", size <= {args.max_size_mb:g} MB" if args.max_size_mb is not None else "")
                    + f", by {args.by}"))
    print_table(table.BEST, [table.best_cells(p, hardware.get(p.node)) for p in picks])
    from fleetbench.coordinator.report import race_answer
    race_answer.render(args.db, run.run.run_id)   # a raced run: the winner's tie group, P fastest
    return 0 if any(p.row for p in picks) else 1


def _runs(args) -> int:
    from fleetbench.coordinator.report.render_term import print_table
    from fleetbench.coordinator.report.runs import COLUMNS, list_runs
    rows = list_runs(args.db)
    if not rows:
        raise SweepError(f"{args.db}: the results database holds no runs yet")
    print_table(COLUMNS, [[str(v) for v in r] for r in rows])
    return 0


def _compare(args) -> int:
    from fleetbench.coordinator.report.compare import COLUMNS, cells, compare, is_regression
    from fleetbench.coordinator.report.render_term import print_table
    if args.run_a == args.run_b:
        raise SweepError(f"compare: RUN_A and RUN_B are the same run ({args.run_a}); give two different runs")
    lines = compare(args.db, args.run_a, args.run_b, fail_above=args.fail_above, max_drop=args.max_f1_drop)
    if not lines:
        raise SweepError(f"{args.db}: runs {args.run_a} and {args.run_b} share no ok configuration")
    shown = lines if args.all else [line for line in lines if line.verdict != "same"]
    if shown:
        print_table(COLUMNS, [cells(line) for line in shown])
    bad = [line for line in lines if is_regression(line)]
    print(f"{len(lines)} configuration(s) compared, {len(lines) - len(shown)} unchanged not shown"
          f"{'' if args.all else ' (--all shows them)'}; {len(bad)} regression(s) "
          f"(slower by more than {args.fail_above:.0%} and the noise, or quality down by more than "
          f"{args.max_f1_drop:g})")
    return 1 if bad else 0


def _run(args) -> int:
    from fleetbench.coordinator import api, flags
    sweep = args.sweep
    if args.model is None:
        if sweep is None:
            raise SweepError("run: give a sweep file, or one model with --model (see coordinator run --help)")
        if flags.given(args):
            raise SweepError(f"run: {', '.join(flags.given(args))}: only with --model (the sweep file {sweep} "
                             "describes the models)")
    elif sweep is not None:
        raise SweepError(f"run: give either a sweep file ({sweep}) or --model, not both")
    else:
        flags.check_save(args)
        sweep = flags.build(args)
    with flags.named_errors() if args.model else contextlib.nullcontext():
        if args.dry_run:
            from fleetbench.coordinator.dryrun import dry_run
            dry_run(sweep, address=args.address)
            return EXIT_OK
        if args.model is not None and args.save_sweep:
            from fleetbench.coordinator.run import preflight
            preflight(sweep, db=args.db, resume=args.resume)   # refused input writes nothing
            flags.save(args, args.save_sweep)
            print(f"wrote {args.save_sweep} (run it again with: coordinator run {args.save_sweep})", file=sys.stderr)
        res = api.run(sweep, db=args.db, address=args.address, resume=args.resume, progress=not args.no_progress,
                      out=sys.stdout, interleaved=args.repeat_interleaved, resume_hint=_again(args))
    return EXIT_FAILED_ROWS if res.counts and res.counts.get("failed") else EXIT_OK


def _again(args) -> str:
    """The command that continues this run."""
    from fleetbench.coordinator import flags
    from fleetbench.coordinator.run import resume_command
    what = [args.sweep or args.save_sweep] if args.sweep or args.save_sweep else flags.command(args)
    return resume_command(what, args.db, args.address)


if __name__ == "__main__":
    sys.exit(main())
