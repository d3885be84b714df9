"""Run one job in a child process and watch it: stage events, its timeout, how it ended.

The Ray task (coordinator/dispatch.py agent_task) calls `supervise(job, weights)`, which yields
("stage", name) as each stage begins, ("log", {...}) for a failed job, and ("result", Result) last.

The child (agent/jobproc.py) is forked by a launcher: this worker's warm one, or a fresh one for a job
that must be timed in a fresh interpreter (or when the warm one refuses to fork). It runs in a session of
its own, which is killed at its timeout; its launcher is its reaper, so when it ends its whole process
tree is gone, what the model's own code started and took out of the session included. It dies with its
launcher, the launcher with this process. Because this process outlives the job, a job that is killed (a
segfault, the out-of-memory killer, a `kill -9`) still becomes a `failed` row that names the signal and
stage, with the last lines the job printed. The job's end is the launcher's word, not the stage pipe's
end-of-file: a process the job started may hold a copy of the pipe.
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
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from fleetbench.agent.childproc import CPUS_VAR, kill_session
from fleetbench.agent.jobproc import launcher_env
from fleetbench.agent.limits import cpu_list
from fleetbench.shared.errors import STAGES
from fleetbench.shared.job import STARTUP_S, Job, Result

log = logging.getLogger(__name__)
OUTPUT_TAIL_LINES = 60
OUTPUT_TAIL_BYTES = 16_000


class _Watch:
    """What following the job's stage pipe found: the last stage, and whether the deadline passed."""

    stage: Optional[str] = None
    timed_out: bool = False


def _follow(read_fd: int, proc: "_Process", job: Job, started: float, watch: _Watch) -> Iterator[str]:
    """Each stage name the job reports, until its launcher says it has exited or its deadline passes (the
    timeout counts from the first stage; before it, STARTUP_S from `started` covers starting it)."""
    deadline = started + STARTUP_S
    pending = b""
    answer = proc.launcher.sock.fileno() if proc.launcher.sock is not None else -1
    watched = [read_fd, answer] if answer >= 0 else [read_fd]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            watch.timed_out = True
            return
        ready, _, _ = select.select(watched, [], [], min(left, 1.0))
        chunk = os.read(read_fd, 4096) if read_fd in ready else b""
        if read_fd in ready and not chunk:   # every copy of the write end is closed
            watched.remove(read_fd)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            name = line.decode(errors="replace").strip()
            if name in STAGES:
                if watch.stage is None:
                    deadline = time.monotonic() + job.timeout_s
                watch.stage = name
                yield name
        if answer in ready and proc.launcher.answered(proc.request) or not watched:
            return


def supervise(job: Job, weights: Optional[bytes]) -> Iterator[tuple[str, Any]]:
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="fleetbench-job-"))
    read_fd = -1
    proc: Optional[_Process] = None
    try:
        (folder / "job.pkl").write_bytes(pickle.dumps((job, weights)))
        read_fd, write_fd = os.pipe()   # both ends close-on-exec: only the job process gets the write end
        try:
            with open(folder / "output.log", "wb") as out:
                proc = _start(job, folder, out.fileno(), write_fd)
        finally:
            os.close(write_fd)
        watch = _Watch()
        for name in _follow(read_fd, proc, job, started, watch):
            yield ("stage", name)
        stage, timed_out = watch.stage, watch.timed_out
        rc = None
        if timed_out:
            proc.kill()
        else:
            rc = proc.wait()
        got = _read_result(folder / "result.pkl")   # also on the timeout path: a finished job keeps its row
        if got is not None:
            result, diagnostics = got
            if result.status == "failed":
                yield ("log", {"output": tail(folder / "output.log"), "traceback": diagnostics.get("traceback"),
                               "reason": result.error})
            yield ("result", result)
            return
        if timed_out:
            why = (f"timed out after {job.timeout_s:g} s in stage {stage}" if stage else
                   f"the job's process did not start within {STARTUP_S:g} s")
            yield ("log", {"output": tail(folder / "output.log"), "traceback": None, "reason": why})
            yield ("result", Result.for_job(job, status="failed", stage=stage, error=why))
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
        if proc is not None:
            proc.end()
        if read_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(read_fd)
        shutil.rmtree(folder, ignore_errors=True)


class _Refused(OSError):
    """The warm launcher would not fork (agent/jobproc.py fork_unsafe): the job gets a fresh one."""


class _Process:
    """A job process forked by a launcher, which answers its exit code once it and its whole tree are gone."""

    def __init__(self, launcher: "_Launcher", request: str, pid: int):
        self.launcher, self.request, self.pid = launcher, request, pid
        self.running = True

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Its exit code (-N: killed by signal N; None: unknown, its launcher died) once it has exited
        and everything it left was killed."""
        try:
            return self.launcher.exit_code(self.request, self.pid, timeout)
        finally:
            self.running = False

    def kill(self) -> None:
        """Kill the job process and everything in its session; its launcher kills what escaped it."""
        kill_session(self.pid)
        if self.running:
            with contextlib.suppress(TimeoutError):
                self.wait(timeout=30)

    def end(self) -> None:
        if self.running:
            self.kill()
        if self.launcher.fresh:
            self.launcher.close(wait_s=10)   # it exits once it has answered the exit code


def _start(job: Job, folder: Path, log_fd: int, status_fd: int) -> _Process:
    """Fork the job process from this worker's warm launcher when the job's engine is timed in a measuring
    process of its own (agent/jobproc.py says why that is safe); else (PyTorch eager, TensorRT: timed in the
    job process, whose memory figures must be a fresh interpreter's), or when the warm launcher cannot fork,
    from a fresh launcher that forks this one job."""
    env = {**os.environ, CPUS_VAR: cpu_list(os.sched_getaffinity(0))}
    if _forkable(job.backend):
        try:
            return _LAUNCHER.fork(folder, env, log_fd, status_fd)
        except _Refused as e:
            log.warning("%s: %s", job.describe(), e)
        except (OSError, EOFError, pickle.UnpicklingError, TimeoutError) as e:
            log.warning("%s: the launcher did not fork the job (%s); starting a fresh one", job.describe(), e)
    return _Launcher(fresh=True).fork(folder, env, log_fd, status_fd)


def _forkable(backend: str) -> bool:
    from fleetbench.agent.backends import backend_class
    try:
        return backend_class(backend).cacheable
    except Exception:  # noqa: BLE001 - an unknown or broken backend: the fresh process reports it
        return False


class _Launcher:
    """A parent and reaper of job processes (`python -m fleetbench.agent.jobproc --launcher`): this worker's
    warm one, started with the first job that uses it and kept for the next (it dies with this worker), or a
    fresh one for one job. Each request carries an id, and each answer the id of the request it answers."""

    def __init__(self, fresh: bool = False) -> None:
        self.fresh = fresh
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None

    def fork(self, folder: Path, env: dict, log_fd: int, status_fd: int) -> _Process:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.sock is not None
        request = uuid.uuid4().hex
        try:
            socket.send_fds(self.sock, [pickle.dumps((request, str(folder), os.getcwd(), env))],
                            [log_fd, status_fd])
            kind, value = self._answer(request, STARTUP_S)   # its first answer waits for its imports
        except (OSError, EOFError, pickle.UnpicklingError, TimeoutError):
            self.close()   # the caller starts a fresh launcher instead
            raise
        if kind == "refused":
            self.close(wait_s=10)   # it exits once it has answered
            raise _Refused(f"the launcher would not fork with {value}; the job gets a fresh interpreter")
        return _Process(self, request, value)

    def _answer(self, request: str, timeout: Optional[float]) -> tuple[str, Any]:
        """The launcher's next answer to `request` (an answer to an earlier request is dropped)."""
        assert self.sock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.sock.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096)
            except socket.timeout:
                raise TimeoutError("the launcher did not answer") from None
            finally:
                if self.sock is not None:
                    self.sock.settimeout(None)
            if not msg:
                raise EOFError("the launcher is gone")
            kind, about, value = pickle.loads(msg)
            if about == request:
                return kind, value
            log.warning("dropped the launcher's %r answer to an earlier job's request", kind)

    def answered(self, request: str) -> bool:
        """Whether the launcher's next answer (waiting now) is to `request`, or it is gone; an answer to an
        earlier request is dropped."""
        if self.sock is None:
            return True
        try:
            msg = self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if msg and pickle.loads(msg)[1] != request:
                self.sock.recv(4096)
                return False
        except BlockingIOError:
            return False
        except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError):
            return True
        return True

    def exit_code(self, request: str, pid: int, timeout: Optional[float]) -> Optional[int]:
        """The exit code the launcher reports for the job process `pid` (None: the launcher is gone, and its
        job process with it; what that left in its session is killed here)."""
        if self.sock is None:   # closed since
            kill_session(pid)
            return None
        try:
            _, code = self._answer(request, timeout)
        except TimeoutError:   # its answer would come after the next request's: start anew
            self.close()
            raise TimeoutError("the job process did not exit") from None
        except (OSError, EOFError, pickle.UnpicklingError):   # the launcher died (and the job process with it)
            self.close()
            kill_session(pid)
            return None
        return code

    def _start(self) -> None:
        self.close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetbench.agent.jobproc", "--launcher", str(theirs.fileno()),
                 str(os.getpid()), *(["--fresh"] if self.fresh else [])],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=launcher_env(dict(os.environ)))
        finally:
            theirs.close()
        self.sock = mine

    def close(self, wait_s: float = 0) -> None:
        """Stop it (after up to `wait_s` for it to exit by itself)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
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
