"""The DuckDB results store. The coordinator is its only writer; `query` opens it read-only.

Tables: `sweeps` (one row per run), `nodes` (one row per node per run) and `results`, whose
columns are derived from the fields of `shared.job.Result` (so a new Result field becomes a new
column, added with ALTER TABLE to files written by older versions). The `comparison` view pivots
the latest run of every sweep per hardware; see `COMPARISON_SQL`.

DuckDB allows one writing process per file, and a read-only connection in another process also
blocks the writer: keep every connection short except the coordinator's.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
import threading
import typing
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import duckdb

from fleetbench.shared.errors import StoreError
from fleetbench.shared.job import RESULT_COLUMNS, NodeProfile, Result

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

_SQL_TYPES = {float: "DOUBLE", int: "BIGINT", bool: "BOOLEAN", str: "VARCHAR"}
_TIMESTAMP_COLUMNS = frozenset({"started_at", "finished_at", "window_start", "window_end"})
_INSERT_RESULT = (f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in RESULT_COLUMNS)})")
_RESULT_KEY = ("run_id", "job_id")


def _sql_type(name: str, hint: Any) -> str:
    """SQL type of a Result field from its type hint (Optional[X] -> X)."""
    if name in _TIMESTAMP_COLUMNS:
        return "TIMESTAMP"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is Union and len(args) == 1 else hint
    try:
        if typing.get_origin(base) is list:
            return _SQL_TYPES[typing.get_args(base)[0]] + "[]"
        return _SQL_TYPES[base]
    except KeyError:
        raise TypeError(f"Result.{name}: no SQL type for {hint!r}") from None


def result_schema() -> dict[str, str]:
    """Column name -> SQL type of the `results` table, in `RESULT_COLUMNS` order."""
    hints = typing.get_type_hints(Result)
    return {name: _sql_type(name, hints[name]) for name in RESULT_COLUMNS}


_SWEEPS_DDL = """
CREATE TABLE IF NOT EXISTS sweeps (
    run_id VARCHAR PRIMARY KEY, sweep VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    spec JSON, address VARCHAR, status VARCHAR)"""

_NODES_DDL = """
CREATE TABLE IF NOT EXISTS nodes (
    run_id VARCHAR, node_id VARCHAR, node_key VARCHAR, hostname VARCHAR, kinds VARCHAR[],
    cpu_model VARCHAR, cores INTEGER, logical_cpus INTEGER, isa_flags JSON, ram_mb DOUBLE,
    gpus JSON, driver VARCHAR, openvino_devices JSON, labels JSON, versions JSON, backends JSON,
    host_id VARCHAR, PRIMARY KEY (run_id, node_id))"""

# Every timed sample of a row, in order (all windows concatenated; results.window_iters splits them).
_SAMPLES_DDL = """
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR, job_id VARCHAR, samples_ms DOUBLE[], PRIMARY KEY (run_id, job_id))"""

_NODE_COLUMNS = ("run_id", "node_id", "node_key", "hostname", "kinds", "cpu_model", "cores",
                 "logical_cpus", "isa_flags", "ram_mb", "gpus", "driver", "openvino_devices",
                 "labels", "versions", "backends", "host_id")
_NODE_JSON = frozenset({"isa_flags", "gpus", "openvino_devices", "labels", "versions", "backends"})

_COMPARISON_TEMPLATE = """
CREATE OR REPLACE VIEW {name} AS
-- {what}
--   sweep, run_id, hw_kind, hostname, node_id, model, compression, backend, device, dtype,
--   batch_size, scenario, streams  what was measured, where (scenario: latency | throughput)
--   status                      ok | failed | unsupported
--   valid, validity             the row's verdict and the reasons when invalid (NULL: no verdict)
--   latency_p50_ci_low_ms, latency_p50_ci_high_ms   95% interval of the p50
--   latency_p50_ms, latency_mean_ms, throughput_ips, ram_peak_mb, vram_peak_mb,
--   size_mb, size_compressed_mb, precision_macro, recall_macro, f1_macro, accuracy,
--   top1_agreement              the figures (NULL where not measured)
--   speedup_vs_ref              ref p50 / this p50; the reference is the ok row of the same run,
--                               node, model, batch size and scenario with backend 'pytorch', compression
--                               'none' on the same device, else on 'cpu'; NULL without one
--   ref_device                  the device of that reference (NULL without one)
--   error                       the one-line reason of a failed or unsupported row
WITH latest AS (
    SELECT arg_max(run_id, started_at) AS run_id FROM sweeps GROUP BY sweep
), r AS (
    SELECT results.* FROM results JOIN latest USING (run_id) WHERE {where}
), ref AS (
    SELECT run_id, node_id, model, batch_size, scenario, device, min(latency_p50_ms) AS p50
    FROM r
    WHERE backend = 'pytorch' AND compression = 'none' AND status = 'ok'
      AND latency_p50_ms > 0
    GROUP BY ALL
)
SELECT r.sweep, r.run_id, r.hw_kind, r.hostname, r.node_id, r.model, r.compression, r.backend,
       r.device, r.dtype, r.batch_size, r.scenario, r.streams, r.status, r.valid, r.validity, r.latency_p50_ms,
       r.latency_p50_ci_low_ms, r.latency_p50_ci_high_ms, r.latency_mean_ms,
       r.throughput_ips, r.ram_peak_mb, r.vram_peak_mb, r.size_mb, r.size_compressed_mb,
       r.precision_macro, r.recall_macro, r.f1_macro, r.accuracy, r.top1_agreement,
       CASE WHEN r.latency_p50_ms > 0
            THEN coalesce(same.p50, cpu.p50) / r.latency_p50_ms END AS speedup_vs_ref,
       CASE WHEN same.p50 IS NOT NULL THEN same.device
            WHEN cpu.p50 IS NOT NULL THEN cpu.device END AS ref_device,
       r.error
FROM r
LEFT JOIN ref AS same
       ON same.run_id = r.run_id AND same.node_id = r.node_id AND same.model = r.model
      AND same.batch_size = r.batch_size AND same.scenario IS NOT DISTINCT FROM r.scenario
      AND same.device = r.device
LEFT JOIN ref AS cpu
       ON cpu.run_id = r.run_id AND cpu.node_id = r.node_id AND cpu.model = r.model
      AND cpu.batch_size = r.batch_size AND cpu.scenario IS NOT DISTINCT FROM r.scenario
      AND cpu.device = 'cpu'
ORDER BY r.sweep, r.hw_kind, r.hostname, r.node_id, r.model, r.batch_size, r.backend,
         r.compression, r.device, r.dtype
"""

# `comparison` leaves out ok rows judged invalid (failed and unsupported rows stay: they carry their
# reason); `comparison_all` keeps every row. Rows without a verdict (older files) count as valid.
COMPARISON_SQL = ";\n".join([
    _COMPARISON_TEMPLATE.format(
        name="comparison", where="results.status <> 'ok' OR results.valid IS NOT FALSE",
        what="One row per result of the latest run (latest started_at in `sweeps`) of every sweep, "
             "invalid ok rows left out (see comparison_all):"),
    _COMPARISON_TEMPLATE.format(
        name="comparison_all", where="true",
        what="As `comparison`, with every row of the latest runs, invalid ones included:"),
])


def new_run_id() -> str:
    """A new run id, sortable by start time: e.g. `20250102T030405.123456Z-3fa9c2`."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _to_timestamp(value: Any) -> Optional[dt.datetime]:
    """ISO string or datetime -> naive UTC datetime (what a TIMESTAMP column holds)."""
    if value is None or value == "":
        return None
    stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return stamp


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, translating DuckDB's errors into StoreError with a plain message."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if _is_lock_error(exc):
            who = ("a coordinator is writing it; try again when the sweep ends" if read_only else
                   "another process (a running coordinator or a `query`) has it open; "
                   "try again when it ends")
            raise StoreError(f"{path}: results database is busy: {who}") from exc
        raise StoreError(f"{path}: cannot open results database: {_first_line(exc)}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot open results database: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


class Store:
    """Read-write access to the results database (the coordinator's, and only writer's)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = _connect(self.path, read_only=False)
        try:
            self._create_schema()
        except duckdb.Error as exc:
            self._con.close()
            raise StoreError(f"{self.path}: cannot create the schema: {_first_line(exc)}") from exc
        log.debug("opened results database %s", self.path)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            log.debug("closed results database %s", self.path)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _execute(self, sql: str, params: Optional[Iterable[Any]] = None) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"{self.path}: store is closed")
        with self._lock:
            try:
                return self._con.execute(sql, list(params) if params is not None else None)
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {_first_line(exc)}") from exc

    def _fetch(self, sql: str, params: Optional[Iterable[Any]] = None) -> tuple[list[str], list[tuple]]:
        if self._con is None:
            raise StoreError(f"{self.path}: store is closed")
        with self._lock:
            try:
                cur = self._con.execute(sql, list(params) if params is not None else None)
                return [d[0] for d in cur.description], cur.fetchall()
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {_first_line(exc)}") from exc

    # -- schema ------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        schema = result_schema()
        cols = ",\n    ".join(f"{name} {sql}" for name, sql in schema.items())
        self._con.execute(_SWEEPS_DDL)
        self._con.execute(_NODES_DDL)
        self._con.execute(_SAMPLES_DDL)
        if "host_id" not in {r[0] for r in self._con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'nodes'").fetchall()}:
            self._con.execute("ALTER TABLE nodes ADD COLUMN host_id VARCHAR")
        self._con.execute(f"CREATE TABLE IF NOT EXISTS results (\n    {cols},\n"
                          f"    PRIMARY KEY ({', '.join(_RESULT_KEY)}))")
        have = {row[0] for row in self._con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'results'").fetchall()}
        for name, sql in schema.items():
            if name not in have:
                log.info("%s: adding column results.%s %s", self.path, name, sql)
                self._con.execute(f"ALTER TABLE results ADD COLUMN {name} {sql}")
        for statement in COMPARISON_SQL.split(";\n"):
            self._con.execute(statement)

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, sweep_name: str, spec_json: str, address: Optional[str]) -> str:
        """Record a new run of `sweep_name` (status 'running') and return its run id."""
        run_id = new_run_id()
        self._execute("INSERT INTO sweeps (run_id, sweep, started_at, spec, address, status) "
                      "VALUES (?, ?, ?, ?, ?, 'running')",
                      [run_id, sweep_name, _utcnow(), spec_json, address])
        log.info("started run %s of sweep %s", run_id, sweep_name)
        return run_id

    def latest_run(self, sweep_name: str) -> Optional[str]:
        """The run id of the most recently started run of `sweep_name`, or None."""
        _, rows = self._fetch("SELECT run_id FROM sweeps WHERE sweep = ? "
                              "ORDER BY started_at DESC, run_id DESC LIMIT 1", [sweep_name])
        return rows[0][0] if rows else None

    def finish_run(self, run_id: str, status: str) -> None:
        self._execute("UPDATE sweeps SET finished_at = ?, status = ? WHERE run_id = ?",
                      [_utcnow(), status, run_id])
        log.info("finished run %s: %s", run_id, status)

    # -- nodes -------------------------------------------------------------------------------

    def put_nodes(self, run_id: str, profiles: list[NodeProfile]) -> None:
        """Insert or replace one `nodes` row per profile (key: run_id, node_id)."""
        placeholders = ", ".join("?" for _ in _NODE_COLUMNS)
        sql = f"INSERT OR REPLACE INTO nodes ({', '.join(_NODE_COLUMNS)}) VALUES ({placeholders})"
        for profile in profiles:
            d = profile.to_dict()
            d["run_id"] = run_id
            d["node_id"] = d.get("node_id") or d.get("node_key") or d.get("hostname")
            values = [json.dumps(d.get(c)) if c in _NODE_JSON else d.get(c) for c in _NODE_COLUMNS]
            self._execute(sql, values)

    # -- results -----------------------------------------------------------------------------

    def put_result(self, result: Result) -> None:
        """Insert or replace the row (run_id, job_id); committed (durable) when this returns."""
        if not result.run_id:
            raise StoreError(f"result {result.job_id}: run_id is not set")
        row = dataclasses.asdict(result)
        for name in _TIMESTAMP_COLUMNS:
            try:
                row[name] = _to_timestamp(row.get(name))
            except ValueError as exc:
                raise StoreError(f"result {result.job_id}: {name}: {exc}") from exc
        values = [row[c] for c in RESULT_COLUMNS]
        if self._con is None:
            raise StoreError(f"{self.path}: store is closed")
        if result.samples_ms is not None:   # first, so a stored row always has its samples
            self._execute("INSERT OR REPLACE INTO samples (run_id, job_id, samples_ms) VALUES (?, ?, ?)",
                          [result.run_id, result.job_id, list(result.samples_ms)])
        with self._lock:   # a plain INSERT is ~3x cheaper; only a re-run row (resume) needs the replace
            try:
                self._con.execute(_INSERT_RESULT, values)   # autocommit: one transaction per row
                return
            except duckdb.ConstraintException:
                pass
        self._execute(_INSERT_RESULT.replace("INSERT INTO", "INSERT OR REPLACE INTO"), values)

    def mark_invalid(self, run_id: str, job_id: str, reason: str) -> None:
        """Add `reason` to a stored ok row's verdict (a fact learned after the row arrived)."""
        self._execute("UPDATE results SET valid = false, validity = CASE WHEN validity IS NULL THEN ? "
                      "ELSE validity || '; ' || ? END WHERE run_id = ? AND job_id = ? AND status = 'ok'",
                      [reason, reason, run_id, job_id])

    def samples(self, run_id: str, job_id: str) -> Optional[list[float]]:
        _, rows = self._fetch("SELECT samples_ms FROM samples WHERE run_id = ? AND job_id = ?", [run_id, job_id])
        return list(rows[0][0]) if rows else None

    def done_job_ids(self, run_id: str) -> set[str]:
        """Job ids with status 'ok' in `run_id` (what a resumed run can skip)."""
        _, rows = self._fetch("SELECT job_id FROM results WHERE run_id = ? AND status = 'ok'",
                              [run_id])
        return {r[0] for r in rows}

    def rows(self, run_id: str) -> list[dict[str, Any]]:
        """Every `results` row of `run_id` as a dict; timestamps as ISO strings, like `Result`."""
        names, rows = self._fetch("SELECT * FROM results WHERE run_id = ? "
                                  "ORDER BY started_at NULLS LAST, job_id", [run_id])
        out = []
        for row in rows:
            d = dict(zip(names, row))
            for name in _TIMESTAMP_COLUMNS:
                if isinstance(d.get(name), dt.datetime):
                    d[name] = d[name].isoformat()
            out.append(d)
        return out


# -- read-only queries --------------------------------------------------------------------------

_READ_TYPES = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL"})


def _statement_types(sql: str) -> list[str]:
    """The statement types in `sql`, parsed without opening any file."""
    con = duckdb.connect(":memory:")
    try:
        return [st.type.name for st in con.extract_statements(sql)]
    except duckdb.Error as exc:
        raise StoreError(f"invalid SQL: {_first_line(exc)}") from exc
    finally:
        con.close()


def _check_read_only(path: Path, sql: str) -> None:
    types = _statement_types(sql)
    if not types:
        raise StoreError("empty SQL: give one SELECT statement")
    if len(types) > 1:
        raise StoreError(f"{len(types)} statements given: `query` runs exactly one")
    if types[0] not in _READ_TYPES:
        raise StoreError(f"{path}: the results database is opened read-only and this "
                         f"{types[0]} statement would write or change state; "
                         f"only SELECT, EXPLAIN, PRAGMA and CALL are allowed")


def query(path: PathLike, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one reading statement on the results database opened read-only.

    Returns (column names, rows). Raises StoreError for a missing file, a file busy because a
    coordinator is writing it, a statement that would write, and any DuckDB error (its first line).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such results database")
    _check_read_only(path, sql)
    con = _connect(path, read_only=True)
    try:
        cur = con.execute(sql)
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except duckdb.Error as exc:
        if "read-only mode" in str(exc):
            raise StoreError(f"{path}: the results database is opened read-only and this "
                             f"statement would write: {_first_line(exc)}") from exc
        raise StoreError(f"{path}: {_first_line(exc)}") from exc
    finally:
        con.close()
