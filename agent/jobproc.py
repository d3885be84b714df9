"""The job process, forked by a launcher (`python -m fleetbench.agent.jobproc --launcher SOCKET_FD PARENT`)
that agent/supervise.py starts in one of two ways:

- warm: the launcher imports what every job process needs once (fleetbench's runner, numpy, scikit-learn,
  torch, timm: seconds a job) and forks one job process per request, for jobs whose engine is timed in a
  measuring process of its own (agent/measureproc.py, a fresh interpreter that loads only its runtime), so
  what the job process has imported never shows in a timed window or a memory figure;
- `--fresh`: a new launcher that imports nothing more and forks one job process (PyTorch eager, TensorRT:
  timed in the job process, whose memory figures must be a fresh interpreter's), then exits.

Either way the launcher is the job's reaper: a subreaper (PR_SET_CHILD_SUBREAPER), so what the job's
process tree leaves behind (a `sleep` in the background, a child that called setsid) comes back to it, and
once the job process has exited it kills all of it before it answers the exit code. It forks only while it
is safe to (one Python thread, no thread started since its imports, no CUDA context); otherwise it refuses
and exits, and the supervisor starts a fresh launcher for the job (which has imported nothing to make a
fork unsafe, and forks at once).

The job reads (job, weights) from FOLDER/job.pkl, runs it (agent.runner.run_job), writes each stage's name
as a line to file descriptor FD as it begins, and (result, diagnostics) to FOLDER/result.pkl at the end.
Its stdout and stderr (our log lines and whatever the runtimes print) go to FOLDER/output.log.
It dies with its launcher, and the launcher with its supervisor (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import pickle
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

from fleetbench.agent.childproc import (
    AFFINITY_VARS,
    become_subreaper,
    die_with_parent,
    end_session,
    finish,
    kill_descendants,
    normal_priority,
    restore_affinity,
)

PRELOAD = ("fleetbench.agent.runner", "fleetbench.agent.peak", "fleetbench.shared.stats", "sklearn.metrics",
           "torch", "timm")
MAX_REQUEST = 1 << 20   # one request: its id, the job's folder, working directory and environment


def run(folder: Path, fd: int) -> int:
    """In the job process: run the job in FOLDER, its stage names on descriptor FD."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleetbench.agent.runner import run_job
    job, weights = pickle.loads((folder / "job.pkl").read_bytes())
    status = os.fdopen(fd, "w", buffering=1)
    diagnostics: dict = {}
    priority = normal_priority()   # before the measuring process starts: it inherits the niceness
    result = run_job(job, weights, on_stage=lambda name: status.write(name + "\n"), diagnostics=diagnostics)
    if priority:
        result = dataclasses.replace(result, notes="; ".join(filter(None, [result.notes, priority])))
    finish(folder, (result, diagnostics), status)
    return 0


def fork_unsafe(native_threads: int) -> Optional[str]:
    """Why forking now could hand the job a broken copy of this process (None: it is safe): another Python
    thread, a native thread started since the imports (`native_threads` were there then), a CUDA context."""
    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads"
    now = len(os.listdir("/proc/self/task"))
    if now > native_threads:
        return f"{now} threads, {native_threads} after its imports"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "a CUDA context"
    return None


def launcher(sock_fd: int, parent: int, fresh: bool = False) -> int:
    """The job processes' parent and reaper: for each request (a pickled (id, folder, cwd, env) with the job's
    log and stage-pipe descriptors) fork a job process and answer ("pid", id, pid); once it has exited, kill
    everything it left (its session, and what escaped it) and answer ("exit", id, code), code as subprocess
    gives it (-N: signal N). Where forking is unsafe it answers ("refused", id, why) and exits."""
    die_with_parent(parent)
    become_subreaper()
    for name in () if fresh else PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    native_threads = len(os.listdir("/proc/self/task"))
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 2)
        except OSError:
            return 0
        if not msg:   # the supervisor closed its end
            return 0
        request = pickle.loads(msg)
        log_fd, status_fd = fds
        why = None if fresh else fork_unsafe(native_threads)   # a fresh one has nothing to fall back on
        if why:
            sys.stderr.write(f"fleetbench launcher: not forking with {why}; the job gets a fresh interpreter\n")
            sock.send(pickle.dumps(("refused", request[0], why)))
            sys.stderr.flush()
            os._exit(3)   # at once: no teardown of what it imported
        me = os.getpid()   # the job's parent, as it must still be when the job checks
        pid = os.fork()
        if pid == 0:
            _forked(me, sock, request, log_fd, status_fd)
        os.close(log_fd)
        os.close(status_fd)
        sock.send(pickle.dumps(("pid", request[0], pid)))
        end_session(pid)
        _, status = os.waitpid(pid, 0)
        kill_descendants()   # what escaped the session (setsid, a double fork) came back here as orphans
        sock.send(pickle.dumps(("exit", request[0], os.waitstatus_to_exitcode(status))))
        if fresh:
            return 0


def _forked(parent: int, sock: socket.socket, request: tuple, log_fd: int, status_fd: int) -> None:
    """In the forked job process: die with the launcher (first), a session of its own, the job's output,
    directory, environment and CPUs; run it."""
    die_with_parent(parent)
    code = 1
    try:
        sock.close()
        _, folder, cwd, env = request
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (devnull, log_fd):
            os.close(fd)
        os.set_inheritable(status_fd, False)   # a process the job starts does not hold the stage pipe
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        restore_affinity()
        code = run(Path(folder), status_fd)
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the launcher
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def launcher_env(env: dict) -> dict:
    """The launcher's environment: without the variables that make libgomp pin its importing thread (and so
    every job forked from it) to one CPU. A job process gets its own environment back with each request."""
    return {k: v for k, v in env.items() if k not in AFFINITY_VARS}


if __name__ == "__main__":
    sys.exit(launcher(int(sys.argv[2]), int(sys.argv[3]), fresh="--fresh" in sys.argv[4:]))
