"""Run one job in a child process and watch it: stage events, its timeout, how it ended.

The Ray task (coordinator/dispatch.py agent_task) calls `supervise(job, weights)`, which yields
("stage", name) as each stage begins, ("log", {...}) for a failed job, and ("result", Result) last.

The child (agent/jobproc.py) runs in a session of its own, so the whole process tree of a job (a
runtime's helper processes included) is killed at its timeout and whenever it ends; it dies with
this process too. Because this process outlives the job, a job that is killed (a segfault, the
out-of-memory killer, a `kill -9`) still becomes a `failed` row that names the signal and stage,
with the last lines the job printed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from fleetbench.shared.errors import STAGES
from fleetbench.shared.job import Job, Result

log = logging.getLogger(__name__)
STARTUP_S = 20.0   # for the job process to start and reach its first stage, on top of the job's timeout
OUTPUT_TAIL_LINES = 60
OUTPUT_TAIL_BYTES = 16_000


class _Watch:
    """What following the job's stage pipe found: the last stage, and whether the deadline passed."""

    stage: Optional[str] = None
    timed_out: bool = False


def _follow(read_fd: int, job: Job, watch: _Watch) -> Iterator[str]:
    """Each stage name the job reports, until it closes its end or its deadline passes (the timeout
    counts from the first stage; the process gets STARTUP_S to reach it)."""
    deadline = time.monotonic() + job.timeout_s + STARTUP_S
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            watch.timed_out = True
            return
        ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(read_fd, 4096)
        if not chunk:   # the job closed its end: it finished or died
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            name = line.decode(errors="replace").strip()
            if name in STAGES:
                if watch.stage is None:
                    deadline = time.monotonic() + job.timeout_s
                watch.stage = name
                yield name


def supervise(job: Job, weights: Optional[bytes]) -> Iterator[tuple[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="fleetbench-job-"))
    read_fd = -1
    proc = None
    try:
        (folder / "job.pkl").write_bytes(pickle.dumps((job, weights)))
        read_fd, write_fd = os.pipe()
        with open(folder / "output.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetbench.agent.jobproc", str(folder), str(write_fd), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                start_new_session=True)
        os.close(write_fd)
        watch = _Watch()
        for name in _follow(read_fd, job, watch):
            yield ("stage", name)
        stage, timed_out = watch.stage, watch.timed_out
        if timed_out:
            _kill_tree(proc)
            why = (f"timed out after {job.timeout_s:g} s in stage {stage}" if stage else
                   f"the job's process did not start within {job.timeout_s + STARTUP_S:g} s")
            yield ("log", {"output": tail(folder / "output.log"), "traceback": None, "reason": why})
            yield ("result", Result.for_job(job, status="failed", stage=stage, error=why))
            return
        rc = _wait_then_kill_tree(proc)
        got = _read_result(folder / "result.pkl")
        if got is not None:
            result, diagnostics = got
            if result.status == "failed":
                yield ("log", {"output": tail(folder / "output.log"), "traceback": diagnostics.get("traceback"),
                               "reason": result.error})
            yield ("result", result)
            return
        if rc < 0:
            how = f"killed by {_signal_name(-rc)}"
        else:
            how = f"exited with code {rc} without a result"
        why = f"worker process died ({how}) in stage {stage or 'load'}"
        yield ("log", {"output": tail(folder / "output.log"), "traceback": None, "reason": why})
        yield ("result", Result.for_job(job, status="failed", stage=stage or "load", error=why))
    finally:
        if proc is not None and proc.poll() is None:
            _kill_tree(proc)
        if read_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(read_fd)
        shutil.rmtree(folder, ignore_errors=True)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _wait_then_kill_tree(proc: subprocess.Popen) -> int:
    """Wait for the job process, then kill what it left in its session; its return code."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: its pid stays ours
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the job process and everything in its session (runtimes' helper processes included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _read_result(path: Path) -> Optional[tuple[Result, dict]]:
    try:
        result, diagnostics = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError):
        return None
    return result, diagnostics if isinstance(diagnostics, dict) else {}


def tail(path: Path, lines: int = OUTPUT_TAIL_LINES, limit: int = OUTPUT_TAIL_BYTES) -> str:
    """The last lines a job printed (at most `limit` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
