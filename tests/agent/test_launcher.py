"""The warm launcher of job processes (agent/jobproc.py --launcher, agent/supervise.py), without Ray:
real job processes forked from it run real ONNX Runtime jobs, each in a session of its own with the
environment its worker had when the job started; a killed job names its signal; the launcher is kept
for the next job and dies with its parent."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fleetbench.agent import supervise
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
from tests.conftest import ROOT

QUICK = MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=5)


def job(name: str, backend: str = "onnxruntime", timeout_s: float = 600, limit: int = 16) -> Job:
    """A job whose load stage runs the model in the job process (its reference pass: a new `limit`, a new one)."""
    model = ModelSpec(name=name, source=f"python:tests.fixtures.tree_models:{name}", num_classes=10,
                      input_size=(3, 16, 16))
    return Job(sweep="t", model=model, dataset=DatasetSpec(kind="digits", limit=limit),
               compression=CompressionSpec(method="none"), backend=backend, device="cpu",
               batch_size=1, measure=QUICK, timeout_s=timeout_s)


def run(j: Job):
    events = list(supervise.supervise(j, None))
    assert events[-1][0] == "result"
    return events[-1][1]


@pytest.fixture
def launcher():
    yield supervise._LAUNCHER
    supervise._LAUNCHER.close()


def assert_gone(pid: int, what: str, wait_s: float = 30) -> None:
    deadline = time.monotonic() + wait_s
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def seen() -> list[list[str]]:
    path = Path(os.environ["FLEETBENCH_CACHE"]) / "env-seen.txt"
    lines = [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_jobs_are_forked_by_one_kept_launcher_each_in_its_session_with_the_environment_of_its_start(
        launcher, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_PROBE_ENV", "first")
    seen()
    first = run(job("writes_env"))
    assert first.status == "ok", first.error
    parent = launcher.proc.pid
    monkeypatch.setenv("FLEETBENCH_PROBE_ENV", "second")
    second = run(job("writes_env", limit=17))
    assert second.status == "ok", second.error
    assert launcher.proc.pid == parent and launcher.proc.poll() is None   # kept, not started again
    lines = seen()   # the reference pass (load stage) calls forward in the job process
    assert {ln[0] for ln in lines} == {"first", "second"}
    for _, pid, ppid, sid in lines:
        assert ppid == str(parent) and sid == pid   # forked by the launcher, in a session of its own
    assert len({ln[1] for ln in lines}) == 2        # one process per job


def test_pytorch_eager_jobs_get_a_fresh_interpreter_not_the_launcher(launcher, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_PROBE_ENV", "eager")
    seen()
    row = run(job("writes_env", backend="pytorch", limit=18))
    assert row.status == "ok", row.error
    (value, pid, ppid, sid), *_ = seen()
    assert launcher.proc is None and sid == pid   # the warm launcher was not even started
    assert_gone(int(ppid), "the job's fresh launcher outlived its job")


def test_a_forked_job_killed_by_a_signal_is_a_failed_row_and_the_launcher_serves_the_next(launcher):
    row = run(job("segfaults"))
    assert (row.status, row.stage) == ("failed", "load")
    assert row.error == "worker process died (killed by SIGSEGV) in stage load"
    assert run(job("writes_env")).status == "ok"
    seen()


def test_a_forked_job_over_its_timeout_dies_with_its_whole_session(launcher):
    pidfile = Path(os.environ["FLEETBENCH_CACHE"]) / "spawned-helper.pid"
    pidfile.unlink(missing_ok=True)
    row = run(job("spawns_and_hangs", timeout_s=8))
    assert (row.status, row.stage, row.error) == ("failed", "load", "timed out after 8 s in stage load")
    helper = int(pidfile.read_text())
    assert_gone(helper, "the job's helper process outlived its job")


def test_a_job_whose_launcher_dies_is_a_failed_row_and_the_next_job_gets_a_new_launcher(launcher):
    pidfile = Path(os.environ["FLEETBENCH_CACHE"]) / "spawned-helper.pid"
    pidfile.unlink(missing_ok=True)
    got: list = []
    worker = threading.Thread(target=lambda: got.append(run(job("spawns_and_hangs", limit=19))))
    worker.start()
    deadline = time.monotonic() + 120
    while not pidfile.exists():   # the job is in its load stage
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.2)
    dead = launcher.proc.pid
    os.kill(dead, signal.SIGKILL)
    worker.join(60)
    (row,) = got
    assert (row.status, row.stage, row.error) == ("failed", "load",
                                                  "worker process died (killed: its launcher died) in stage load")
    helper = int(pidfile.read_text())   # what the job left in its session died too
    assert_gone(helper, "the job's helper process outlived its job")
    assert run(job("writes_env")).status == "ok" and launcher.proc.pid != dead
    seen()


LAUNCH = """
import sys, time
from fleetbench.agent.supervise import _LAUNCHER
_LAUNCHER._start()
print(_LAUNCHER.proc.pid, flush=True)
time.sleep(600)
"""


def test_the_launcher_dies_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", LAUNCH], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pid = int(parent.stdout.readline())
        assert psutil.pid_exists(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert_gone(pid, "the launcher outlived its parent")
