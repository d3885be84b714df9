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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from fleetbench.agent.childproc import end_session, kill_session
from fleetbench.shared.errors import STAGES
from fleetbench.shared.job import Job, Result

log = logging.getLogger(__name__)
STARTUP_S = 20.0   # for the job process to start and reach its first stage, on top of the job's timeout
LAUNCHER_READY_S = 300.0   # for the launcher's imports (torch, timm) on a slow or busy node
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
    proc: Optional[_Process] = None
    try:
        (folder / "job.pkl").write_bytes(pickle.dumps((job, weights)))
        read_fd, write_fd = os.pipe()
        try:
            with open(folder / "output.log", "wb") as out:
                proc = _start(job, folder, out.fileno(), write_fd)
        finally:
            os.close(write_fd)
        watch = _Watch()
        for name in _follow(read_fd, job, watch):
            yield ("stage", name)
        stage, timed_out = watch.stage, watch.timed_out
        if timed_out:
            proc.kill()
            why = (f"timed out after {job.timeout_s:g} s in stage {stage}" if stage else
                   f"the job's process did not start within {job.timeout_s + STARTUP_S:g} s")
            yield ("log", {"output": tail(folder / "output.log"), "traceback": None, "reason": why})
            yield ("result", Result.for_job(job, status="failed", stage=stage, error=why))
            return
        rc = proc.wait()
        got = _read_result(folder / "result.pkl")
        if got is not None:
            result, diagnostics = got
            if result.status == "failed":
                yield ("log", {"output": tail(folder / "output.log"), "traceback": diagnostics.get("traceback"),
                               "reason": result.error})
            yield ("result", result)
            return
        if rc is None:
            how = "killed: its launcher died"
        elif rc < 0:
            how = f"killed by {_signal_name(-rc)}"
        else:
            how = f"exited with code {rc} without a result"
        why = f"worker process died ({how}) in stage {stage or 'load'}"
        yield ("log", {"output": tail(folder / "output.log"), "traceback": None, "reason": why})
        yield ("result", Result.for_job(job, status="failed", stage=stage or "load", error=why))
    finally:
        if proc is not None and proc.running:
            proc.kill()
        if read_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(read_fd)
        shutil.rmtree(folder, ignore_errors=True)


class _Process:
    """A job process in a session of its own: a fresh interpreter (subprocess), or forked by the launcher."""

    def __init__(self, pid: int, reap: Callable[[Optional[float]], Optional[int]]):
        self.pid, self._reap, self.running = pid, reap, True

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Its exit code (-N: killed by signal N; None: unknown, its launcher died) once it has exited
        and what it left in its session was killed."""
        rc = self._reap(timeout)
        self.running = False
        return rc

    def kill(self) -> None:
        """Kill the job process and everything in its session (runtimes' helper processes included)."""
        kill_session(self.pid)
        with contextlib.suppress(subprocess.TimeoutExpired, TimeoutError):
            self.wait(timeout=30)


def _start(job: Job, folder: Path, log_fd: int, status_fd: int) -> _Process:
    """Fork the job process from this worker's launcher when the job's engine is timed in a measuring process
    of its own (agent/jobproc.py says why that is safe); else (PyTorch eager, TensorRT: timed in the job
    process, whose memory figures must be a fresh interpreter's) start a fresh interpreter."""
    if _forkable(job.backend):
        with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
            return _LAUNCHER.fork(folder, log_fd, status_fd)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetbench.agent.jobproc", str(folder), str(status_fd), str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT, pass_fds=(status_fd,),
        start_new_session=True)

    def reap(timeout: Optional[float]) -> int:
        if timeout is None:
            end_session(proc.pid)
        return proc.wait(timeout)
    return _Process(proc.pid, reap)


def _forkable(backend: str) -> bool:
    from fleetbench.agent.backends import backend_class
    try:
        return backend_class(backend).cacheable
    except Exception:  # noqa: BLE001 - an unknown or broken backend: the fresh process reports it
        return False


class _Launcher:
    """This worker's warm parent of job processes (`python -m fleetbench.agent.jobproc --launcher`), started
    with the first job that uses it and kept for the next (it dies with this worker)."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None

    def fork(self, folder: Path, log_fd: int, status_fd: int) -> _Process:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.sock is not None
        try:
            socket.send_fds(self.sock, [pickle.dumps((str(folder), os.getcwd(), dict(os.environ)))],
                            [log_fd, status_fd])
            self.sock.settimeout(LAUNCHER_READY_S)   # its first answer waits for its imports
            pid = pickle.loads(self.sock.recv(4096))
            self.sock.settimeout(None)
        except (OSError, EOFError, pickle.UnpicklingError):
            self.close()   # the caller starts a fresh interpreter instead
            raise
        sock = self.sock
        return _Process(pid, lambda timeout: self._exit_code(sock, pid, timeout))

    def _exit_code(self, sock: socket.socket, pid: int, timeout: Optional[float]) -> Optional[int]:
        """The exit code the launcher reports for the job process it forked last (None: the launcher is gone,
        and its job process with it; what that left in its session is killed here)."""
        if sock is not self.sock:   # closed since
            kill_session(pid)
            return None
        sock.settimeout(timeout)
        try:
            msg = sock.recv(4096)
        except socket.timeout:   # its answer would come after the next request's: start anew
            self.close()
            raise TimeoutError("the job process did not exit") from None
        except OSError:
            msg = b""
        finally:
            if self.sock is not None:
                self.sock.settimeout(None)
        if not msg:   # the launcher died (and the job process with it)
            self.close()
            kill_session(pid)
            return None
        return pickle.loads(msg)

    def _start(self) -> None:
        self.close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetbench.agent.jobproc", "--launcher", str(theirs.fileno()),
                 str(os.getpid())], stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock = mine

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            self.proc = None


_LAUNCHER = _Launcher()


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


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
