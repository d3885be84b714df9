"""The DuckDB results store. The coordinator is its only writer; `query` opens it read-only.

Tables: `sweeps` (one row per run), `nodes` (one row per node per run) and `results`, whose
columns are derived from the fields of `shared.job.Result` (so a new Result field becomes a new
column, added with ALTER TABLE to files written by older versions). The `comparison` view pivots
the latest run of every sweep per hardware; see `COMPARISON_SQL`. A `meta` table records the
application, the schema version and the fleetbench version that last wrote the file.

Every file is classified before anything is written to it (`inspect`): a file that is not DuckDB
(SQLite, random bytes), a DuckDB file of another application or one written by a newer fleetbench
is refused in one line; an older fleetbench's file is migrated in one transaction when opened for
writing, and refused with the upgrade command when opened read-only. No connection installs or
loads a DuckDB extension; `query`'s connection also has external access off and its
configuration locked.

DuckDB allows one process to have a file open for writing, and a read-only connection in another
process also blocks the writer. So the store keeps the file open only while rows keep coming: it
closes it after IDLE_CLOSE_S without a write, or right after the current write when a reader has
asked for it (a reader that finds the file busy touches `<db>.wants-read`), and reopens it for the
next write. A lock file beside it (`<db>.writer`, `flock`) keeps the coordinator the only writer for
the whole run. Readers (`query`, `report`, `runs`) hold the file only while they read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import typing
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import duckdb

from fleetbench.coordinator import race
from fleetbench.coordinator.report import views
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
    spec JSON, address VARCHAR, status VARCHAR, coordinator_host VARCHAR, coordinator_pid BIGINT,
    coordinator_started DOUBLE)"""
# Who runs a run: `coordinator runs` shows a 'running' run whose process is gone as 'interrupted'.
_SWEEPS_ADDED = {"coordinator_host": "VARCHAR", "coordinator_pid": "BIGINT", "coordinator_started": "DOUBLE"}
WRITE_WAIT_S = 120.0   # how long a write waits for readers to close the file
READ_WAIT_S = 10.0     # how long a reader waits for a write to finish
IDLE_CLOSE_S = 0.5     # the writer closes the file after this long without a write
READ_REQUEST_S = 5.0   # a reader's request (mtime of <db>.wants-read) counts this long

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

_LOGS_DDL = """
CREATE TABLE IF NOT EXISTS logs (
    run_id VARCHAR, job_id VARCHAR, logged_at TIMESTAMP, stage VARCHAR, reason VARCHAR,
    traceback VARCHAR, output VARCHAR, PRIMARY KEY (run_id, job_id))"""

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


def _text(value: Any, limit: int = 64_000) -> Optional[str]:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else "..." + text[-limit:]


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


SCHEMA_VERSION = 6   # 1: sweeps, nodes, results without `meta` (fleetbench before versioned files)
# 2: `meta`, `logs`; 3: validity columns, `samples`, nodes.host_id, the `comparison_all` view;
# 4: results.stage_s, reused, quality_from; 5: results.race, `race_blocks` (search: race);
# 6: results.cpus_allowed, cpu_quota
APPLICATION = "fleetbench"
_OWN_TABLES = frozenset({"sweeps", "nodes", "results"})
_SAFE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
_QUERY_CONFIG = {**_SAFE_CONFIG, "enable_external_access": False, "allow_community_extensions": False,
                 "lock_configuration": True}
_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)"


def fleetbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fleetbench")
    except PackageNotFoundError:
        return "unknown"


def _sniff(path: Path) -> None:
    """Refuse, without opening it in DuckDB, a file that is not a DuckDB database."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise StoreError(f"{path}: is a directory, not a results database") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror})") from None
    if head.startswith(b"SQLite format 3"):
        raise StoreError(f"{path}: is a SQLite database, not a fleetbench results database; refused")
    if not head:
        raise StoreError(f"{path}: empty file, not a DuckDB database; remove it or name another --db")
    if head[8:12] != b"DUCK":
        raise StoreError(f"{path}: not a DuckDB database (unrecognised content); refused")


def check_writable(path: PathLike) -> None:
    """Everything about the path of a database to be written that can be checked without writing."""
    import os
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a results database")
    if not parent.exists():
        raise StoreError(f"{path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise StoreError(f"{path}: {parent} is not a folder")
    if path.exists():
        if not path.is_file():
            raise StoreError(f"{path}: not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"{path}: not writable by this user")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: cannot create a file in {parent} (not writable by this user)")


def classify(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The fleetbench schema version of an open file: 0 for an empty database, else 1..SCHEMA_VERSION.

    Raises StoreError for another application's database and for a newer fleetbench's.
    """
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main'").fetchall()}
    views = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND NOT internal").fetchall()}
    if not tables and not views:
        return 0
    if "meta" in tables:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if _meta_ok(con) else {}
        if meta.get("application") != APPLICATION:
            raise StoreError(f"{path}: a DuckDB database of another application (its meta table is not "
                             f"fleetbench's); refused, nothing was changed")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise StoreError(f"{path}: unreadable schema version {meta.get('schema_version')!r}; refused") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: written by a newer fleetbench (schema {version}, "
                             f"fleetbench {meta.get('fleetbench_version', '?')}); this one reads schema "
                             f"{SCHEMA_VERSION}: upgrade fleetbench to use it")
        return version
    if _OWN_TABLES <= tables and tables <= _OWN_TABLES and views <= {"comparison", "course", "hardware"} and _v1_columns(con):
        return 1
    names = ", ".join(sorted(tables | views)[:6])
    raise StoreError(f"{path}: a DuckDB database of another application (tables: {names}); "
                     "refused, nothing was changed")


def _meta_ok(con) -> bool:
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'meta'").fetchall()}
    return {"key", "value"} <= cols


def _v1_columns(con) -> bool:
    cols = {(r[0], r[1]) for r in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main'").fetchall()}
    need = {("sweeps", "run_id"), ("sweeps", "sweep"), ("sweeps", "started_at"), ("nodes", "run_id"),
            ("nodes", "node_id"), ("results", "run_id"), ("results", "job_id"), ("results", "status")}
    return need <= cols


def inspect(path: PathLike, for_write: bool = True) -> int:
    """Check a database path before anything starts; returns its schema version (0: new or empty).

    Opens an existing file read-only, with extensions off, and changes nothing.
    """
    path = Path(path)
    if for_write:
        check_writable(path)
    elif not path.exists():
        raise StoreError(f"{path}: no such results database")
    if not path.exists():
        return 0
    _sniff(path)
    con = _connect(path, read_only=True)
    try:
        return classify(con, path)
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot read results database: {_first_line(exc)}") from exc
    finally:
        con.close()


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def _connect(path: Path, read_only: bool, config: Optional[dict] = None,
             wait_s: Optional[float] = None) -> duckdb.DuckDBPyConnection:
    """Open the file (never reaching for an extension), waiting up to `wait_s` while another process
    has it; DuckDB's errors as StoreError."""
    deadline = time.monotonic() + (READ_WAIT_S if wait_s is None else wait_s)
    pause = 0.005
    while True:
        try:
            return _connect_once(path, read_only, config)
        except _Busy:
            if time.monotonic() >= deadline:
                raise
            if read_only:
                _request_read(path)
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def _request_read(path: Path) -> None:
    """Ask the writer to close the file after its current write."""
    try:
        Path(f"{path}.wants-read").touch()
    except OSError:
        pass


def _read_requested(path: Path) -> bool:
    try:
        return time.time() - Path(f"{path}.wants-read").stat().st_mtime < READ_REQUEST_S
    except OSError:
        return False


class _Busy(StoreError):
    """The file is open in another process."""


def _connect_once(path: Path, read_only: bool, config: Optional[dict] = None) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only, config=dict(config or _SAFE_CONFIG))
    except duckdb.IOException as exc:
        if _is_lock_error(exc):
            who = ("a coordinator is writing it; try again when the sweep ends" if read_only else
                   "another process (a running coordinator or a `query`) has it open; "
                   "try again when it ends")
            raise _Busy(f"{path}: results database is busy: {who}") from exc
        raise StoreError(f"{path}: cannot open results database: {_first_line(exc)}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot open results database: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def _take_writer_lock(path: Path):
    """Hold `<db>.writer` (flock) for the store's life: a second writer is refused at once."""
    handle = open(f"{path}.writer", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StoreError(f"{path}: results database is busy: another coordinator is writing it; "
                         f"try again when it ends") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{socket.gethostname()} {os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def writer_lock(path: PathLike):
    """Hold `<db>.writer` before anything else starts (a coordinator takes it before Ray): a second
    coordinator on one database is refused at once. A Store opened inside takes the held lock over."""
    path = Path(path)
    check_writable(path)
    handle = _take_writer_lock(path)
    _HELD[str(path.absolute())] = handle
    try:
        yield
    finally:
        if _HELD.pop(str(path.absolute()), None) is not None:   # no Store took it over
            _release_writer_lock(path, handle)


_HELD: dict[str, Any] = {}


def _release_writer_lock(path: Path, handle) -> None:
    try:                          # leave nothing beside the database once the writer is gone
        os.unlink(f"{path}.writer")
    except OSError:
        pass
    handle.close()                # releases the flock


class Store:
    """Read-write access to the results database (the coordinator's, and only writer's)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        check_writable(self.path)
        if self.path.exists():
            _sniff(self.path)
        self._lock = threading.Lock()
        self._writer = _HELD.pop(str(self.path.absolute()), None) or _take_writer_lock(self.path)
        self._con: Optional[duckdb.DuckDBPyConnection] = None
        self._last_write = 0.0
        self._stop = threading.Event()
        self._closer = threading.Thread(target=self._close_when_idle, name="fleetbench-store", daemon=True)
        try:
            with self._connection() as con:
                self.migrated_from = classify(con, self.path)
                self._create_schema(con)
        except (duckdb.Error, StoreError) as exc:
            self.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.path}: cannot create the schema: {_first_line(exc)}") from exc
        except BaseException:
            self.close()
            raise
        log.debug("opened results database %s", self.path)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._release()
        if self._writer is not None:
            _release_writer_lock(self.path, self._writer)
            self._writer = None
            log.debug("closed results database %s", self.path)

    def _release(self) -> None:
        """Close the DuckDB file (caller holds self._lock); the next write reopens it."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def _close_when_idle(self) -> None:
        while not self._stop.wait(0.05):
            if self._con is None:
                continue
            with self._lock:
                idle = time.monotonic() - self._last_write > IDLE_CLOSE_S
                if self._con is not None and (idle or _read_requested(self.path)):
                    self._release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _connection(self):
        """The file for one operation: held open while rows keep coming, given up to a waiting reader."""
        if self._writer is None:
            raise StoreError(f"{self.path}: store is closed")
        with self._lock:
            if self._con is None:
                self._con = _connect(self.path, read_only=False, wait_s=WRITE_WAIT_S)
            try:
                yield self._con
            finally:
                self._last_write = time.monotonic()
                if _read_requested(self.path):
                    self._release()
        if not self._closer.is_alive() and not self._stop.is_set():
            try:
                self._closer.start()
            except RuntimeError:   # started by another thread meanwhile
                pass

    def _execute(self, sql: str, params: Optional[Iterable[Any]] = None) -> None:
        with self._connection() as con:
            try:
                con.execute(sql, list(params) if params is not None else None)
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {_first_line(exc)}") from exc

    def _fetch(self, sql: str, params: Optional[Iterable[Any]] = None) -> tuple[list[str], list[tuple]]:
        with self._connection() as con:
            try:
                cur = con.execute(sql, list(params) if params is not None else None)
                return [d[0] for d in cur.description], cur.fetchall()
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {_first_line(exc)}") from exc

    # -- schema ------------------------------------------------------------------------------

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create or migrate the tables in one transaction (a failure leaves the file as it was)."""
        con.execute("BEGIN TRANSACTION")
        try:
            self._create_tables(con)
            con.execute(_META_DDL)
            for key, value in (("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION)),
                               ("fleetbench_version", fleetbench_version())):
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if self.migrated_from and self.migrated_from < SCHEMA_VERSION:
            log.warning("%s: migrated the results database from schema %d to %d",
                        self.path, self.migrated_from, SCHEMA_VERSION)

    def _create_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        schema = result_schema()
        cols = ",\n    ".join(f"{name} {sql}" for name, sql in schema.items())
        con.execute(_SWEEPS_DDL)
        for name, sql in _SWEEPS_ADDED.items():
            con.execute(f"ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS {name} {sql}")
        con.execute(_NODES_DDL)
        con.execute("ALTER TABLE nodes ADD COLUMN IF NOT EXISTS host_id VARCHAR")
        con.execute(_LOGS_DDL)
        con.execute(_SAMPLES_DDL)
        con.execute(race.BLOCKS_DDL)
        con.execute(f"CREATE TABLE IF NOT EXISTS results (\n    {cols},\n"
                          f"    PRIMARY KEY ({', '.join(_RESULT_KEY)}))")
        have = {row[0] for row in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'results'").fetchall()}
        for name, sql in schema.items():
            if name not in have:
                log.info("%s: adding column results.%s %s", self.path, name, sql)
                con.execute(f"ALTER TABLE results ADD COLUMN {name} {sql}")
        for statement in COMPARISON_SQL.split(";\n"):
            con.execute(statement)
        views.install(con)

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, sweep_name: str, spec_json: str, address: Optional[str]) -> str:
        """Record a new run of `sweep_name` (status 'running') and return its run id."""
        run_id = new_run_id()
        import psutil
        me = psutil.Process()
        self._execute("INSERT INTO sweeps (run_id, sweep, started_at, spec, address, status, "
                      "coordinator_host, coordinator_pid, coordinator_started) "
                      "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                      [run_id, sweep_name, _utcnow(), spec_json, address, socket.gethostname(),
                       me.pid, me.create_time()])
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
        with self._connection() as con:   # the `hardware` PIVOT names every node
            views.install(con)

    # -- results -----------------------------------------------------------------------------

    def put_result(self, result: Result) -> None:
        """Insert or replace the row (run_id, job_id); committed (durable) when this returns."""
        self.put_results([result])

    def put_results(self, results: list[Result]) -> None:
        """Insert or replace rows in one opening of the file (one transaction per row, as each is committed)."""
        values = [self._values(r) for r in results]
        with self._connection() as con:
            for result, row in zip(results, values):
                if result.samples_ms is not None:   # first, so a stored row always has its samples
                    try:
                        con.execute("INSERT OR REPLACE INTO samples (run_id, job_id, samples_ms) VALUES (?, ?, ?)",
                                    [result.run_id, result.job_id, list(result.samples_ms)])
                    except duckdb.Error as exc:
                        raise StoreError(f"{self.path}: {_first_line(exc)}") from exc
                try:   # a plain INSERT is ~3x cheaper; only a re-run row (resume) needs the replace
                    con.execute(_INSERT_RESULT, row)   # autocommit: one transaction per row
                    continue
                except duckdb.ConstraintException:
                    pass
                except duckdb.Error as exc:   # the file cannot take the row (a full disk)
                    raise StoreError(f"{self.path}: {_first_line(exc)}") from exc
                try:
                    con.execute(_INSERT_RESULT.replace("INSERT INTO", "INSERT OR REPLACE INTO"), row)
                except duckdb.Error as exc:
                    raise StoreError(f"{self.path}: {_first_line(exc)}") from exc

    @staticmethod
    def _values(result: Result) -> list[Any]:
        if not result.run_id:
            raise StoreError(f"result {result.job_id}: run_id is not set")
        row = dataclasses.asdict(result)
        for name in _TIMESTAMP_COLUMNS:
            try:
                row[name] = _to_timestamp(row.get(name))
            except ValueError as exc:
                raise StoreError(f"result {result.job_id}: {name}: {exc}") from exc
        return [row[c] for c in RESULT_COLUMNS]

    def put_log(self, run_id: str, job_id: str, stage: Optional[str], reason: Optional[str],
                traceback: Optional[str], output: Optional[str]) -> None:
        """Keep a failed job's traceback and the last lines it printed (`coordinator logs`)."""
        self._execute("INSERT OR REPLACE INTO logs (run_id, job_id, logged_at, stage, reason, traceback, output) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [run_id, job_id, _utcnow(), stage, _text(reason), _text(traceback), _text(output)])

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


def read_logs(path: PathLike, run: str, job_id: Optional[str] = None) -> tuple[str, list[dict[str, Any]]]:
    """The stored logs of a run's failed jobs (one job's with `job_id`), read-only.

    `run` is a run id, a unique prefix of one, or `last`. Returns (run id, logs)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such results database")
    con = _connect(path, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "sweeps" not in tables:
            raise StoreError(f"{path}: not a fleetbench results database")
        if run == "last":
            found = con.execute("SELECT run_id FROM sweeps ORDER BY started_at DESC, run_id DESC LIMIT 1").fetchall()
        else:
            found = con.execute("SELECT run_id FROM sweeps WHERE starts_with(run_id, ?) LIMIT 2", [run]).fetchall()
        if len(found) != 1:
            raise StoreError(f"{path}: run {run!r}: " + ("no such run" if not found else "ambiguous prefix"))
        run_id = found[0][0]
        if job_id:
            _check_job(con, path, run_id, job_id, "logs" in tables)
        if "logs" not in tables:
            return run_id, []
        sql = ("SELECT l.job_id, r.model, r.compression, r.backend, r.device, r.batch_size, r.hostname, "
               "l.stage, l.reason, l.traceback, l.output FROM logs l "
               "LEFT JOIN results r USING (run_id, job_id) WHERE l.run_id = ?")
        params = [run_id]
        if job_id:
            sql += " AND starts_with(l.job_id, ?)"
            params.append(job_id)
        cur = con.execute(sql + " ORDER BY l.logged_at, l.job_id", params)
        names = [d[0] for d in cur.description]
        return run_id, [dict(zip(names, row)) for row in cur.fetchall()]
    except duckdb.Error as exc:
        raise StoreError(f"{path}: {_first_line(exc)}") from exc
    finally:
        con.close()


def _check_job(con, path: Path, run_id: str, job_id: str, have_logs: bool) -> None:
    """`job_id` (or a prefix) names a job of the run: a result row or a stored log."""
    sql = "SELECT job_id FROM results WHERE run_id = ? AND starts_with(job_id, ?)"
    if have_logs:
        sql += " UNION SELECT job_id FROM logs WHERE run_id = ? AND starts_with(job_id, ?)"
    if not con.execute(sql + " LIMIT 1", [run_id, job_id] * (2 if have_logs else 1)).fetchall():
        raise StoreError(f"{path}: run {run_id}: no job {job_id!r} (its jobs: coordinator query "
                         f"\"SELECT job_id, model, status FROM results WHERE run_id = '{run_id}'\" --db {path})")


# -- read-only queries --------------------------------------------------------------------------

_READ_TYPES = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL"})


def _statement_types(sql: str) -> list[str]:
    """The statement types in `sql`, parsed without opening any file."""
    con = duckdb.connect(":memory:", config=dict(_QUERY_CONFIG))
    try:
        return [st.type.name for st in con.extract_statements(sql)]
    except duckdb.Error as exc:
        raise StoreError(f"invalid SQL: {_first_line(exc)}") from exc
    finally:
        con.close()


_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\b", re.IGNORECASE)


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
    if types[0] == "EXPLAIN":
        body = _EXPLAIN.sub("", sql.strip(), count=1)
        inner = _statement_types(body) if body.strip() else []
        if inner != ["SELECT"]:
            raise StoreError(f"{path}: EXPLAIN is allowed only around a SELECT "
                             f"(got {inner[0] if inner else 'nothing'}); nothing was run")


def open_read_only(path: PathLike) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a fleetbench results file of this schema version, locked down:
    no external access (files, network), no extensions, configuration locked."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a results database")
    if not path.is_file():
        raise StoreError(f"{path}: no such results database")
    _sniff(path)
    con = _connect(path, read_only=True, config=_QUERY_CONFIG)
    try:
        version = classify(con, path)
    except BaseException:
        con.close()
        raise
    if version == 0:
        con.close()
        raise StoreError(f"{path}: an empty DuckDB database, no fleetbench results in it")
    if version < SCHEMA_VERSION:
        con.close()
        raise StoreError(f"{path}: written by an older fleetbench (schema {version}); upgrade it (one "
                         f"transaction, rows kept) with: coordinator migrate --db {path}")
    return con


def query(path: PathLike, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one reading statement on the results database opened read-only.

    Returns (column names, rows). Raises StoreError for a missing file, a file busy because a
    coordinator is writing it, a statement that would write, and any DuckDB error (its first line).
    The statement runs in a thread of its own: the main thread stays free for SIGINT, which interrupts
    the statement (DuckDB's `interrupt`) and raises KeyboardInterrupt within a moment, whatever the
    statement is doing.
    """
    def rows(con) -> tuple[list[str], list[tuple]]:
        cur = con.execute(sql)
        return ([], []) if cur.description is None else ([d[0] for d in cur.description], cur.fetchall())
    return _read(Path(path), sql, rows)


def query_arrow(path: PathLike, sql: str, params: Optional[list] = None):
    """`query`'s checks, errors and Ctrl-C, with the rows as a typed pyarrow Table (`params` bind `?`s)."""
    import pyarrow as pa

    def table(con):
        rel = con.sql(sql, params=params)
        return pa.table({}) if rel is None else rel.to_arrow_table()
    return _read(Path(path), sql, table)


def _read(path: Path, sql: str, fetch: typing.Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
    """`fetch(con)` on a read-only connection, in a thread of its own (see `query`)."""
    _check_read_only(path, sql)
    con = open_read_only(path)
    done: dict[str, Any] = {}
    finished = threading.Event()   # not Thread.join: a join cut short by Ctrl-C can mark a live thread dead

    def work() -> None:
        try:
            done["value"] = fetch(con)
        except BaseException as exc:   # handed to the caller's thread
            done["error"] = exc
        finally:
            finished.set()

    try:
        threading.Thread(target=work, name="fleetbench-query", daemon=True).start()
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        _stop(con, finished)
        raise
    con.close()
    exc = done.get("error")
    if isinstance(exc, duckdb.Error):
        if "read-only mode" in str(exc):
            raise StoreError(f"{path}: the results database is opened read-only and this "
                             f"statement would write: {_first_line(exc)}") from exc
        raise StoreError(f"{path}: {_first_line(exc)}") from exc
    if exc is not None:
        raise exc
    return done["value"]


STOP_WAIT_S = 1.0   # how long an interrupted query may take to stop before the process leaves without it


def _stop(con: duckdb.DuckDBPyConnection, finished: threading.Event) -> None:
    """Interrupt a running statement and close the file once it has stopped; one that does not stop in
    STOP_WAIT_S is left to the process's exit."""
    import signal
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None   # a second Ctrl-C changes nothing
    try:
        con.interrupt()
        if finished.wait(STOP_WAIT_S):
            with contextlib.suppress(duckdb.Error):
                con.close()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
