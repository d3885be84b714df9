"""`coordinator runs`: every stored run with its counts; a 'running' run whose coordinator is gone is 'interrupted'."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

COLUMNS = ("sweep", "run id", "started", "finished", "status", "nodes", "ok", "failed", "unsupported")
_SQL = """
SELECT s.sweep, s.run_id, s.started_at, s.finished_at, s.status, {who},
       (SELECT count(DISTINCT node_id) FROM nodes AS n WHERE n.run_id = s.run_id) AS nodes,
       count(r.job_id) FILTER (WHERE r.status = 'ok') AS ok,
       count(r.job_id) FILTER (WHERE r.status = 'failed') AS failed,
       count(r.job_id) FILTER (WHERE r.status = 'unsupported') AS unsupported
FROM sweeps AS s LEFT JOIN results AS r USING (run_id)
GROUP BY ALL ORDER BY s.started_at, s.run_id
"""


def coordinator_alive(host: Optional[str], pid: Optional[int], started: Optional[float]) -> Optional[bool]:
    """True/False for a coordinator on this host (same pid and start time); None when it cannot be told."""
    import psutil
    if not host or not pid or host != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(pid))
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def status_of(status: str, host: Optional[str], pid: Optional[int], started: Optional[float]) -> str:
    if status != "running":
        return status
    alive = coordinator_alive(host, pid, started)
    if alive is False:
        return "interrupted"
    return "running" if alive else f"running? (coordinator on {host or 'unknown host'})"


def list_runs(db: str | Path) -> list[list[Any]]:
    from fleetbench.coordinator.report.data import connect
    con = connect(db)
    try:
        cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'sweeps'").fetchall()}
        who = ("s.coordinator_host, s.coordinator_pid, s.coordinator_started" if "coordinator_pid" in cols
               else "NULL, NULL, NULL")
        rows = con.execute(_SQL.format(who=who)).fetchall()
    finally:
        con.close()
    out = []
    for sweep, run_id, started, finished, status, host, pid, born, nodes, ok, failed, unsup in rows:
        out.append([sweep, run_id, _when(started), _when(finished), status_of(status, host, pid, born),
                    nodes, ok, failed, unsup])
    return out


def _when(stamp: Any) -> str:
    return "-" if stamp is None else stamp.isoformat(sep=" ", timespec="seconds")
