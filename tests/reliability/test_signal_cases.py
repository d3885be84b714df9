"""Interruptions on real Ray: Ctrl-C / SIGTERM of the coordinator, a killed or hanging job, a job
that fails with a traceback. Every case asserts the exact outcome: exit code, run status, rows kept
(none lost, none doubled), the failed row's stage and reason, the stored log, no process left."""
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
MEASURE = {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}
TINY = {"num_classes": 10, "input_size": [3, 16, 16]}


def write_sweep(path: Path, **over) -> Path:
    spec = {"name": path.stem, "models": [{"name": "digits", "source": "timm:test_resnet", **TINY}],
            "dataset": {"kind": "digits", "limit": 32}, "backends": ["null"], "batch_sizes": [1],
            "measure": MEASURE, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


def model(name: str) -> dict:
    return {"name": name, "source": f"python:tests.fixtures.tree_models:{name}", **TINY}


def rows(db: Path, sql: str = "SELECT * FROM results") -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kw)


def gone(pids, wait_s: float = 60.0) -> list[int]:
    """The pids among `pids` still alive after waiting up to `wait_s` (zombies count as gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def job_processes(cache: Path) -> list[int]:
    """Job processes (agent/jobproc.py) of this test module's fleet, found by their cache variable."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "fleetbench.agent.jobproc" in " ".join(p.info["cmdline"] or ()) and \
                    p.environ().get("FLEETBENCH_CACHE") == str(cache):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def start_and_wait_for_rows(args, n_rows: int, total: int, env=None):
    """Start `coordinator run ...` and return (process, stderr so far) once `n_rows` rows are stored."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetbench.coordinator.cli", "run", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen, stored = "", 0
    deadline = time.monotonic() + 300
    while stored < n_rows and time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        stored = max(map(int, re.findall(rf"(\d+)/{total}", seen)), default=0)
    assert n_rows <= stored < total, seen[-2000:]
    return proc, seen


def finish(proc, seen: str) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode(errors="replace"), seen + err.decode(errors="replace")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One benchmark node on loopback with token auth (ray.cluster_utils.Cluster)."""
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    import fleetbench.coordinator  # noqa: F401
    cache = tmp_path_factory.mktemp("signal-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("FLEETBENCH_CACHE", str(cache))
        mp.setenv("FLEETBENCH_NULL_MS", "20")
        reset_auth_token_state()
        cluster = Cluster(initialize_head=True, head_node_args={
            "resources": {"bench_slot": 1}, "labels": {"fleet.kind": "cpu", "fleet.node": "n-sig"},
            "num_cpus": 1})
        try:
            cluster.wait_for_nodes()
            cluster.cache = cache
            yield cluster
        finally:
            import ray
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


# -- the coordinator is interrupted ------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_is_marked_keeps_its_rows_and_resume_runs_exactly_the_rest(fleet, tmp_path, sig, code):
    sweep = write_sweep(tmp_path / "int.yaml", batch_sizes=[1, 2, 3, 4, 5, 6],
                        measure={**MEASURE, "min_duration_s": 0.5})
    db = tmp_path / "r.duckdb"
    proc, seen = start_and_wait_for_rows([sweep, "--db", db, "--address", fleet.address], 2, 6)
    proc.send_signal(sig)
    rc, out, err = finish(proc, seen)
    assert rc == code, err[-3000:]
    name = signal.Signals(sig).name
    assert f"coordinator: interrupted by {name}; rows stored so far are kept in {db}; run the missing jobs " \
           f"with: coordinator run {sweep} --db {db} --address {fleet.address} --resume" in err
    assert "Traceback" not in err and "Traceback" not in out
    assert f"interrupted by {name}; in-flight jobs cancelled" in out
    (run,) = rows(db, "SELECT * FROM sweeps")
    assert run["status"] == "interrupted" and run["finished_at"] is not None
    before = {r["job_id"]: r for r in rows(db)}
    assert 2 <= len(before) < 6 and all(r["status"] == "ok" for r in before.values())
    assert gone(job_processes(fleet.cache)) == []      # nothing of the run keeps running on the node
    assert len([n for n in fleet.list_all_nodes()]) == 1  # a cluster it joined is left running

    again = cli("run", sweep, "--db", db, "--address", fleet.address, "--resume", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} already ok, {6 - len(before)} to run" in again.stdout
    after = rows(db)
    assert len(after) == 6 and len({r["job_id"] for r in after}) == 6 and all(r["status"] == "ok" for r in after)
    for r in after:   # the rows kept are the same rows, not measured again
        if r["job_id"] in before:
            assert r["started_at"] == before[r["job_id"]]["started_at"]
    (run,) = rows(db, "SELECT * FROM sweeps")
    assert run["status"] == "done"


def test_sigterm_stops_the_embedded_ray_it_started(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FLEETBENCH_NULL_MS", "20")
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    sweep = write_sweep(tmp_path / "emb.yaml", batch_sizes=[1, 2, 3, 4, 5, 6],
                        measure={**MEASURE, "min_duration_s": 0.5})
    db = tmp_path / "r.duckdb"
    proc, seen = start_and_wait_for_rows([sweep, "--db", db], 1, 6)
    helpers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert helpers, "the embedded Ray runs as children of the coordinator"
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc, seen)
    assert rc == 143, err[-3000:]
    assert "Traceback" not in err and "SIGTERM" in err and "--resume" in err
    assert gone(helpers) == []
    (run,) = rows(db, "SELECT status FROM sweeps")
    assert run["status"] == "interrupted"


def test_after_sigkill_of_the_coordinator_no_ray_helper_stays(tmp_path, monkeypatch):
    """The embedded cluster's processes die with a coordinator killed outright (coordinator/reaper.py);
    without the reaper they outlived it by over a minute."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FLEETBENCH_NULL_MS", "20")
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    sweep = write_sweep(tmp_path / "kill.yaml", batch_sizes=[1, 2, 3, 4, 5, 6],
                        measure={**MEASURE, "min_duration_s": 0.5})
    db = tmp_path / "r.duckdb"
    proc, seen = start_and_wait_for_rows([sweep, "--db", db], 1, 6)
    helpers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    names = " ".join(psutil.Process(pid).name() for pid in helpers)
    assert "gcs_server" in names and "raylet" in names
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = gone(helpers, wait_s=60)   # 0.5 s when the machine is quiet; before the reaper, over a minute
    assert left == [], [" ".join(psutil.Process(p).cmdline()[:3]) for p in left if psutil.pid_exists(p)]
    (run,) = rows(db, "SELECT status FROM sweeps")
    assert run["status"] == "running"   # nobody could mark it; `coordinator runs` tells it by liveness


def test_a_second_interrupt_exits_at_once(tmp_path):
    """The first SIGINT raises Interrupted for a clean stop; a second one during that stop exits 130."""
    code = ("import os, signal, sys\n"
            "from fleetbench.coordinator.run import interruptible\n"
            "from fleetbench.shared.errors import Interrupted\n"
            "with interruptible():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        print('not interrupted')\n"
            "    except Interrupted as e:\n"
            "        print('cleaning up after', e.signal_name, e.exit_code, flush=True)\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        print('cleanup finished')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 130
    assert p.stdout == "cleaning up after SIGINT 130\n"
    assert p.stderr == "coordinator: SIGTERM again: exiting now\n"


# -- jobs that die, hang or fail -------------------------------------------------------------------

def test_a_job_killed_by_a_signal_is_a_failed_row_naming_it_with_its_output(fleet, tmp_path):
    sweep = write_sweep(tmp_path / "segv.yaml", models=[model("segfaults")], backends=["pytorch"])
    db = tmp_path / "r.duckdb"
    run = cli("run", sweep, "--db", db, "--address", fleet.address, "--no-progress")
    assert "Traceback" not in run.stderr
    (row,) = rows(db)
    assert (row["status"], row["stage"]) == ("failed", "load")
    assert row["error"] == "worker process died (killed by SIGSEGV) in stage load"
    logs = cli("logs", row["run_id"], "--db", db, "--job", row["job_id"])
    assert logs.returncode == 0, logs.stderr
    assert f"== job {row['job_id']}  segfaults/none/pytorch:cpu/bs1" in logs.stdout
    assert "reason: worker process died (killed by SIGSEGV) in stage load" in logs.stdout
    assert "about to crash in the runtime" in logs.stdout


def test_a_job_over_its_timeout_is_killed_with_its_whole_process_tree(fleet, tmp_path):
    pidfile = fleet.cache / "spawned-helper.pid"
    sweep = write_sweep(tmp_path / "tree.yaml", models=[model("spawns_and_hangs")], backends=["pytorch", "null"],
                        timeout_s=15)
    db = tmp_path / "r.duckdb"
    run = cli("run", sweep, "--db", db, "--address", fleet.address, "--no-progress")
    by = {r["backend"]: r for r in rows(db)}
    assert (by["pytorch"]["status"], by["pytorch"]["stage"]) == ("failed", "load"), run.stderr[-2000:]
    assert by["pytorch"]["error"] == "timed out after 15 s in stage load"
    assert by["null"]["status"] == "ok"
    helper = int(pidfile.read_text())
    assert gone([helper], wait_s=30) == []   # the runtime's helper process died with its job


def test_a_failed_job_keeps_its_traceback_for_coordinator_logs(fleet, tmp_path):
    sweep = write_sweep(tmp_path / "tb.yaml", models=[model("raises")], backends=["pytorch"])
    db = tmp_path / "r.duckdb"
    run = cli("run", sweep, "--db", db, "--address", fleet.address, "--no-progress")
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr
    (row,) = rows(db)
    assert (row["status"], row["stage"]) == ("failed", "measure")
    assert row["error"] == "ValueError: Raises refuses input of shape (1, 3, 16, 16)"
    (log,) = rows(db, "SELECT * FROM logs")
    assert (log["run_id"], log["job_id"], log["stage"]) == (row["run_id"], row["job_id"], "measure")
    assert log["traceback"].startswith("Traceback") and "in _inner" in log["traceback"]
    assert "ValueError: Raises refuses input" in log["output"]   # the job's own log lines
    shown = cli("logs", "last", "--db", db)
    assert shown.returncode == 0
    assert "reason: ValueError: Raises refuses input of shape (1, 3, 16, 16)" in shown.stdout
    assert "-- traceback" in shown.stdout and "in _inner" in shown.stdout
    none = cli("logs", "last", "--db", db, "--job", "0000")
    assert none.returncode == 2 and none.stderr.startswith(f"coordinator: {db}: run {row['run_id']}: no job '0000'")
    missing = cli("logs", "nosuchrun", "--db", db)
    assert missing.returncode == 2 and missing.stderr.strip() == f"coordinator: {db}: run 'nosuchrun': no such run"


# -- the disk fills up mid-run ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs at a path with a space and a quote in it (needs root: skipped elsewhere)."""
    mount = tmp_path / "disk 'full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_mid_run_ends_it_with_a_quoted_resume_command(fleet, small_disk):
    sweep = write_sweep(small_disk / "full sweep.yaml", batch_sizes=[1, 2, 3, 4],
                        measure={**MEASURE, "min_duration_s": 0.3})
    db = small_disk / "r.duckdb"
    proc, seen = start_and_wait_for_rows([sweep, "--db", db, "--address", fleet.address], 1, 4)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:   # the disk is full from here on
        with pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
    rc, out, err = finish(proc, seen)
    assert rc == 1 and "Traceback" not in err + out, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("coordinator: ")]
    assert "No space left on device; rows stored so far are kept; when it can be written again, run the missing " \
           "jobs with: coordinator run " in line
    command = line.split("run the missing jobs with: ")[1]
    words = subprocess.run(["bash", "-c", f'set -- {command}; printf "%s\\n" "$@"'], capture_output=True,
                           text=True).stdout.splitlines()   # the printed command, as a shell reads it
    assert words == ["coordinator", "run", str(sweep), "--db", str(db), "--address", fleet.address, "--resume"]
    filler.unlink()
    kept = rows(db)   # what was stored before the disk filled is readable and whole
    assert 1 <= len(kept) < 4 and all(r["status"] == "ok" for r in kept)
