"""Ctrl-C during reads: a real `coordinator query` (or `report`) process gets SIGINT while DuckDB runs a long
statement, or while it waits for a busy database, and must leave within 2 s with exit 130 and one line,
every time (the signal lands at a different moment in each process)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator.store import Store
from tests.conftest import ROOT
from tests.reliability.test_output_cases import put_run

LONG = "SELECT sum(a.range * b.range) FROM range(100000) a, range(100000) b"   # over a minute on any machine
STOPPED = "coordinator: interrupted by SIGINT; the query was stopped, nothing was written"


@pytest.fixture(scope="module")
def made_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sig") / "R.duckdb"
    with Store(path) as store:
        put_run(store)
    return path


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until(ready, procs, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not ready():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError(f"never {what}: " + " | ".join(p.communicate()[1].decode()[-300:] for p in procs))
        time.sleep(0.02)


def has_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def interrupt(procs, delays) -> list[tuple[int, float, list[str]]]:
    """SIGINT to each process after its delay; (exit code, seconds from its signal to its exit, stderr lines)."""
    ended: dict[int, float] = {}

    def watch(p):
        p.wait()
        ended[p.pid] = time.monotonic()
    watchers = [threading.Thread(target=watch, args=(p,), daemon=True) for p in procs]
    for w in watchers:
        w.start()
    out = []
    try:
        sent = {}
        t0 = time.monotonic()
        for p, delay in sorted(zip(procs, delays), key=lambda pd: pd[1]):
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            p.send_signal(signal.SIGINT)
            sent[p.pid] = time.monotonic()
        for p, w in zip(procs, watchers):
            w.join(30)
            _, err = p.communicate(timeout=30)
            out.append((p.returncode, ended[p.pid] - sent[p.pid], err.decode().splitlines()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_sigint_stops_a_long_query_within_2_s_every_time(made_db, tmp_path):
    dbs = []
    for i in range(4):   # one file each: the four run at once and each holds its own file
        dbs.append(tmp_path / f"R{i}.duckdb")
        shutil.copyfile(made_db, dbs[-1])
    procs = [start("query", LONG, "--db", db) for db in dbs]
    wait_until(lambda: all(has_open(p.pid, db) for p, db in zip(procs, dbs)), procs, "opened the databases")
    results = interrupt(procs, [0.0, 0.15, 0.5, 1.0])
    for rc, _, err in results:
        assert (rc, err) == (130, [STOPPED])
    slow = [round(s, 2) for _, s, _ in results if s > 2.0]
    assert not slow, f"SIGINT took over 2 s to stop a query: {slow}"


def test_sigint_while_waiting_for_a_busy_database_is_exit_130(made_db, tmp_path):
    db = tmp_path / "R.duckdb"
    shutil.copyfile(made_db, db)
    writer = duckdb.connect(str(db))   # another process holds the file for writing: readers wait
    try:
        procs = [start("query", "SELECT 1", "--db", db), start("report", "--db", db)]
        wants = Path(f"{db}.wants-read")   # a waiting reader asks the writer to let go
        wait_until(wants.exists, procs, "waited for the database")
        time.sleep(0.3)
        (q, sq, qerr), (r, sr, rerr) = interrupt(procs, [0.0, 0.0])
    finally:
        writer.close()
    assert (q, qerr) == (130, [STOPPED])
    assert (r, rerr) == (130, ["coordinator: interrupted by SIGINT; nothing was written"])
    assert sq < 2.0 and sr < 2.0
