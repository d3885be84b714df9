"""A job's processes: whatever a job (and the model's own code in it) starts is gone, checked by pid, when the
job ends; a process holding the stage pipe does not turn a finished job into a timeout; a launcher forks
only when it is safe to, answers each request by its id, and gives its job the CPUs its supervisor had."""
import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fleetbench.agent import supervise
from fleetbench.agent.limits import cpu_list
from fleetbench.shared.job import STARTUP_S
from tests.agent.test_launcher import job, run
from tests.conftest import ROOT
from tests.fixtures.hostile_children import CASES


def alive(pids, wait_s: float = 10.0) -> list[int]:
    """The pids among `pids` still running after up to `wait_s` (zombies count as gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for pid in pids:
            with_status = psutil.Process(pid).status() if psutil.pid_exists(pid) else None
            if with_status not in (None, psutil.STATUS_ZOMBIE):
                left.append(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def noted(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split() if x.isdigit()] if path.exists() else []


@pytest.fixture
def pids(tmp_path, monkeypatch):
    """$FLEETBENCH_PIDS for what the job starts; whatever is noted there is killed after the test."""
    path = tmp_path / "pids"
    monkeypatch.setenv("FLEETBENCH_PIDS", str(path))
    yield path
    for pid in noted(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- the reaper, with a stand-in job (a forked process that runs one hostile case and exits or is killed) -----

STAND_IN = """
import os, sys
from fleetbench.agent.childproc import become_subreaper, end_session, kill_descendants, kill_session
from tests.fixtures import hostile_children
case, how = sys.argv[1], sys.argv[2]
assert become_subreaper()
pid = os.fork()
if pid == 0:
    os.setsid()
    getattr(hostile_children, case)()
    if how == "exits":
        os._exit(0)
    os.kill(os.getpid(), 19)   # SIGSTOP: wait there to be killed
    os._exit(0)
if how == "killed":
    os.waitid(os.P_PID, pid, os.WSTOPPED)
    kill_session(pid)
end_session(pid)
os.waitpid(pid, 0)
kill_descendants()
print("reaped")
"""


@pytest.mark.parametrize("case, how", [(case, "exits") for case in CASES] + [
    (case, "killed") for case in ("new_session", "double_fork_daemon", "stopped", "respawner")])
def test_nothing_a_job_started_outlives_it(case, how, pids):
    """The job ends (exits, or is killed with its session at its timeout); what it started is gone by then."""
    out = subprocess.run([sys.executable, "-c", STAND_IN, case, how], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "reaped", out.stderr[-2000:]
    started = noted(pids)
    assert started, "the case noted no process"
    assert alive(started, wait_s=0) == []


# -- real jobs --------------------------------------------------------------------------------------------

@pytest.fixture
def launcher():
    supervise._LAUNCHER.close()
    yield supervise._LAUNCHER
    supervise._LAUNCHER.close()


def model_job(name: str, **kw):
    """A job of the model `name` of tests/fixtures/process_models.py."""
    j = job(name, **kw)
    return dataclasses.replace(j, model=j.model.model_copy(
        update={"source": f"python:tests.fixtures.process_models:{name}"}))


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])   # forked by the warm launcher; a fresh one
def test_what_the_models_code_started_is_gone_with_the_job_and_a_pipe_holder_is_no_timeout(backend, launcher,
                                                                                          pids, monkeypatch):
    mask = os.sched_getaffinity(0)
    if backend == "onnxruntime":   # libgomp pins the thread that imports it (torch, scikit-learn) to one CPU
        monkeypatch.setenv("OMP_PROC_BIND", "true")
        monkeypatch.setenv("OMP_PLACES", "cores")
    row = run(model_job("escapes", backend=backend, limit=20 if backend == "pytorch" else 21, timeout_s=120))
    assert (row.status, row.stage, row.error) == ("ok", None, None)   # not "timed out in stage evaluate"
    started = noted(pids)
    assert len(started) >= 3                                     # background sleep, setsid child, pipe holder
    assert alive(started, wait_s=5) == []
    if backend == "onnxruntime":
        assert launcher.proc is not None and launcher.proc.poll() is None   # the warm one serves the next job
        # the forked job process and its measuring process run on the supervisor's CPUs, not a pinned one
        assert f"cpus {cpu_list(mask)}" in pids.read_text().split("\n") and row.cpus_allowed == cpu_list(mask)


SITE = """
import threading, time
threading.Thread(target=time.sleep, args=(600,), daemon=True, name="added-by-a-test").start()
"""


def test_a_launcher_with_another_thread_does_not_fork_and_the_job_gets_a_fresh_interpreter(launcher, tmp_path,
                                                                                           monkeypatch):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE)   # every new interpreter starts a thread
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ["PYTHONPATH"]]))
    monkeypatch.setenv("FLEETBENCH_PROBE_ENV", "threaded")
    from tests.agent.test_launcher import seen
    seen()
    started: list = []
    start = supervise._Launcher._start

    def remember(self):
        start(self)
        started.append(self.proc)

    monkeypatch.setattr(supervise._Launcher, "_start", remember)
    row = run(job("writes_env", limit=23))
    assert row.status == "ok", row.error
    warm, fresh = started
    assert warm.wait(30) == 3 and launcher.proc is None        # refused to fork, and exited
    (value, pid, ppid, sid), *_ = seen()
    assert value == "threaded" and int(ppid) == fresh.pid != warm.pid and sid == pid


# -- the launcher's protocol and the job's first statement ------------------------------------------------

def test_launcher_answers_are_matched_to_their_request():
    """An answer left over from an earlier request (its job's exit code) is not taken for this one's."""
    launcher = supervise._Launcher()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    launcher.sock, launcher.proc = mine, subprocess.Popen(["sleep", "60"])

    def fake_launcher():
        msg, fds, _, _ = socket.recv_fds(theirs, 1 << 20, 2)
        for fd in fds:
            os.close(fd)
        request = pickle.loads(msg)[0]
        for answer in (("exit", "an-earlier-request", 0), ("pid", request, 4242),
                       ("exit", "an-earlier-request", 1), ("exit", request, -9)):
            theirs.send(pickle.dumps(answer))

    t = threading.Thread(target=fake_launcher)
    t.start()
    r, w = os.pipe()
    try:
        proc = launcher.fork(Path("/nonexistent"), {}, r, w)
        assert proc.pid == 4242 and proc.wait(timeout=10) == -9
    finally:
        t.join(10)
        os.close(r)
        os.close(w)
        theirs.close()
        launcher.close()


RACE = """
import os, socket, subprocess, sys
from fleetbench.agent import jobproc
gone = subprocess.Popen(["true"])
gone.wait()
a, b = socket.socketpair()
r, w = os.pipe()
jobproc._forked(gone.pid, a, ("id", "/nonexistent", "/", dict(os.environ)), os.dup(1), w)
"""


def test_a_job_whose_launcher_died_before_its_first_statement_leaves_at_once():
    """The parent a forked job must have is the launcher's pid taken before the fork: a job whose launcher
    died in between is an orphan and leaves before doing anything (here: it would print a traceback)."""
    out = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", "")


def test_the_coordinator_gives_a_job_as_long_to_start_as_the_agent_does(monkeypatch):
    """Before its first stage a job may wait for a launcher's imports (STARTUP_S on the agent); the coordinator
    cancels only after that and its grace, and after the first stage only after the job's timeout."""
    from fleetbench.coordinator import dispatch
    monkeypatch.setattr(dispatch, "alive_nodes", lambda: [{"NodeID": "n"}])
    cancelled = []
    monkeypatch.setattr(dispatch, "_cancel", lambda gen, j: cancelled.append(gen))
    rows = []
    d = dispatch.Dispatcher(rows.append)
    j = dataclasses.replace(job("writes_env", timeout_s=60), node_id="n")
    now = time.monotonic()
    d.running["starting"] = dispatch._Running(j, clock=now - (j.timeout_s + dispatch.TIMEOUT_GRACE_S + 5))
    d.running["late"] = dispatch._Running(j, clock=now - (STARTUP_S + dispatch.TIMEOUT_GRACE_S + 5))
    d.running["over"] = dispatch._Running(j, clock=now - 1000, stage="measure",
                                          started=now - (j.timeout_s + dispatch.TIMEOUT_GRACE_S + 5))
    d.in_flight["n"] = 3
    d._check_nodes_and_timeouts()
    assert sorted(cancelled) == ["late", "over"]
    assert sorted(r.error for r in rows) == [f"the job's worker did not start within {STARTUP_S:g} s",
                                             "timed out after 60 s in stage measure"]


# -- helpers of a job die with it, also when it is killed outright (a force-cancelled worker) -------------------

CONVERTER = """
import os, subprocess, sys, time
p = subprocess.Popen([sys.executable, "-m", "fleetbench.agent.backends.tflite", sys.argv[1], str(os.getpid())])
print(p.pid, flush=True)
time.sleep(600)
"""

POOL = """
import time
from fleetbench.agent.measuring import helper_pool
pool = helper_pool()
print(*[p.pid for p in pool._pool], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("helper", ["tflite converter", "repeat_mode process worker"])
def test_a_jobs_helper_dies_when_the_job_is_killed_outright(helper, tmp_path):
    fifo = tmp_path / "convert-job.pt"
    os.mkfifo(fifo)   # the converter would wait on it for ever
    code, args = (CONVERTER, [str(fifo)]) if helper == "tflite converter" else (POOL, [])
    job_process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        helpers = [int(pid) for pid in job_process.stdout.readline().split()]
        assert helpers
    finally:
        job_process.kill()
        job_process.wait()
    try:
        assert alive(helpers, wait_s=60) == []
    finally:
        for pid in helpers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
