"""The job process, started by agent/supervise.py in one of two ways:

- `python -m fleetbench.agent.jobproc FOLDER FD PARENT`: a fresh interpreter for the job;
- forked by a warm parent, `python -m fleetbench.agent.jobproc --launcher SOCKET_FD PARENT`, that imported
  what every job process needs once (fleetbench's runner, numpy, scikit-learn, torch, timm: seconds a job)
  and forks one job process per request. It is used for jobs whose engine is timed in a measuring process of
  its own (agent/measureproc.py, a fresh interpreter that loads only its runtime), so what the job process
  has imported never shows in a timed window or a memory figure. The parent never runs a job, a model or a
  thread pool of its own; each forked job process starts a session of its own with the job's environment.

The job reads (job, weights) from FOLDER/job.pkl, runs it (agent.runner.run_job), writes each stage's name
as a line to file descriptor FD as it begins, and (result, diagnostics) to FOLDER/result.pkl at the end.
Its stdout and stderr (our log lines and whatever the runtimes print) go to FOLDER/output.log.
It dies with its parent (PR_SET_PDEATHSIG), so a cancelled task leaves no job running.
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
import traceback
from pathlib import Path

from fleetbench.agent.childproc import die_with_parent, end_session, finish, normal_priority

PRELOAD = ("fleetbench.agent.runner", "fleetbench.agent.peak", "fleetbench.shared.stats", "sklearn.metrics",
           "torch", "timm")
MAX_REQUEST = 1 << 20   # one request: the job's folder, working directory and environment


def main(argv: list[str]) -> int:
    folder, fd, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    die_with_parent(parent)
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


def launcher(sock_fd: int, parent: int) -> int:
    """The warm parent: import PRELOAD, then for each request (a pickled (folder, cwd, env) with the job's log
    and stage-pipe descriptors) fork a job process, answer its pid, and once it has exited kill what it left
    in its session and answer its exit code (as subprocess gives it: -N for signal N)."""
    die_with_parent(parent)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 2)
        except OSError:
            return 0
        if not msg:   # the supervisor closed its end
            return 0
        folder, cwd, env = pickle.loads(msg)
        log_fd, status_fd = fds
        pid = os.fork()
        if pid == 0:
            sock.close()
            _forked(folder, cwd, env, log_fd, status_fd)
        os.close(log_fd)
        os.close(status_fd)
        sock.send(pickle.dumps(pid))
        end_session(pid)
        _, status = os.waitpid(pid, 0)
        sock.send(pickle.dumps(os.waitstatus_to_exitcode(status)))


def _forked(folder: str, cwd: str, env: dict, log_fd: int, status_fd: int) -> None:
    """In the forked job process: a session of its own, the job's output, directory and environment; run it."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (devnull, log_fd):
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        code = main([folder, str(status_fd), str(os.getppid())])
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the launcher
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launcher"]:
        sys.exit(launcher(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(main(sys.argv[1:]))
