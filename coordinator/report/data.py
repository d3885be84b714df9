"""Read a run's rows from the `course` and `hardware` views on a short read-only connection."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleetbench.coordinator.report import views
from fleetbench.shared.errors import SweepError

log = logging.getLogger(__name__)

COURSE_ORDER = ("node, model, batch_size, backend, device, compression <> 'none', compression")


@dataclass
class Run:
    run_id: str
    sweep: str
    started_at: Any
    finished_at: Any
    status: str


@dataclass
class RunData:
    """Everything a report of one run shows, read once."""

    db: Path
    run: Run
    rows: list[dict[str, Any]]                       # `course` rows of the run
    hardware_columns: list[str] = field(default_factory=list)
    hardware_rows: list[tuple] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)   # job_id -> latency samples (ms)


def connect(db: str | Path):
    """A read-only connection with the views installed as TEMP views; bad files are one-line errors."""
    from fleetbench.coordinator.store import SCHEMA_VERSION, _connect, _sniff, classify
    from fleetbench.shared.errors import StoreError
    path = Path(db)
    if not path.is_file():
        raise SweepError(f"{path}: no such results database")
    try:
        _sniff(path)
    except StoreError as e:
        raise SweepError(str(e)) from None
    con = _connect(path, read_only=True)
    try:
        try:
            version = classify(con, path)
        except StoreError as e:
            raise SweepError(str(e)) from None
        if version and version < SCHEMA_VERSION:
            raise SweepError(f"{path}: written by an older fleetbench (schema {version}); "
                             f"upgrade it with: coordinator migrate --db {path}")
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = current_schema()").fetchall()}
        if not {"sweeps", "results", "nodes"} <= tables:
            raise SweepError(f"{path}: not a fleetbench results database (no sweeps/results/nodes tables)")
        views.install(con, temp=True)
    except BaseException:
        con.close()
        raise
    return con


def _dicts(cur) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def resolve_run(con, db: Path, run_id: Optional[str] = None, sweep: Optional[str] = None) -> Run:
    """The run asked for: by id, else the latest of `sweep`, else the latest of all."""
    sql = "SELECT run_id, sweep, started_at, finished_at, status FROM sweeps"
    if run_id:
        rows = con.execute(sql + " WHERE run_id = ?", [run_id]).fetchall()
        if not rows:
            raise SweepError(f"{db}: unknown run id {run_id!r} (list them with: coordinator runs --db {db})")
    elif sweep:
        rows = con.execute(sql + " WHERE sweep = ? ORDER BY started_at DESC LIMIT 1", [sweep]).fetchall()
        if not rows:
            raise SweepError(f"{db}: no run of sweep {sweep!r} (list them with: coordinator runs --db {db})")
    else:
        rows = con.execute(sql + " ORDER BY started_at DESC LIMIT 1").fetchall()
        if not rows:
            raise SweepError(f"{db}: the results database holds no runs yet")
    return Run(*rows[0])


def course_rows(con, run_id: str) -> list[dict[str, Any]]:
    return _dicts(con.execute(f"SELECT * FROM course WHERE run_id = ? ORDER BY {COURSE_ORDER}", [run_id]))


def samples(con, run_id: str) -> dict[str, list[float]]:
    """Latency samples per job of the run, where the `samples` table holds them."""
    have = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'samples'").fetchone()[0]
    if not have:
        return {}
    return {job: list(values or []) for job, values in con.execute(
        "SELECT job_id, samples_ms FROM samples WHERE run_id = ?", [run_id]).fetchall()}


def load(db: str | Path, run_id: Optional[str] = None, sweep: Optional[str] = None,
         need_ok: bool = True) -> RunData:
    """Read one run; with `need_ok`, a run without a single ok row is bad input."""
    path = Path(db)
    con = connect(path)
    try:
        run = resolve_run(con, path, run_id, sweep)
        rows = course_rows(con, run.run_id)
        ok = [r for r in rows if r["status"] == "ok"]
        if need_ok and not ok:
            counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("failed", "unsupported"))
            raise SweepError(f"{path}: run {run.run_id} has no ok rows ({counts}): nothing to report")
        nodes = sorted({r["node"] for r in ok})
        cur = con.execute(views.hardware_select(nodes, where="run_id = ?"), [run.run_id])
        data = RunData(path, run, rows, [d[0] for d in cur.description], cur.fetchall())
        data.samples = samples(con, run.run_id)
        return data
    finally:
        con.close()
