"""What the job process (agent/jobproc.py), its launcher and the measuring process (agent/measureproc.py)
share: dying with their parent, running on the CPUs their supervisor could use, ending a job's whole process
tree (what the model's own code started included), and handing a result back through a file before leaving
without teardown."""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# libgomp pins the importing thread to one CPU when one of these is set (torch, scikit-learn load it), and
# every process forked or started from it inherits that mask.
AFFINITY_VARS = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")
CPUS_VAR = "FLEETBENCH_CPUS"   # the CPUs the job's supervisor could use, as a kernel CPU list ("0-3,8")


def _prctl(option: int, arg: int) -> bool:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent: int) -> None:
    """Be killed (SIGKILL) when the parent dies; leave now if it died before this took effect. `parent` is
    the pid the parent had before it forked or started this process (never read after: by then a dead
    parent's orphan has a new one)."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != parent:
        os._exit(1)


def become_subreaper() -> bool:
    """Descendants orphaned below this process (a double fork, a child that called setsid) become its
    children instead of init's, so kill_descendants can find them."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _children_of() -> dict[int, list[int]]:
    """Every process's children, from /proc (the kernel's per-task children list is not always built in)."""
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def descendants(pid: int) -> list[int]:
    """The pids below `pid` (children, theirs, ...)."""
    tree, out, todo = _children_of(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_descendants() -> None:
    """SIGKILL every descendant of this process and reap them, until none is left (a subreaper's orphans
    come back as its children, so each round finds what the last one missed)."""
    me = os.getpid()
    while True:
        below = descendants(me)
        if not below:
            return
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)   # only this process's own children; the others come back next round


def restore_affinity() -> None:
    """Run on the CPUs the job's supervisor could use ($FLEETBENCH_CPUS), not a mask a library pinned on
    the process this one was forked or started from."""
    from fleetbench.agent.limits import parse_cpu_list
    cpus = parse_cpu_list(os.environ.get(CPUS_VAR, ""))
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def kill_session(pid: int) -> None:
    """SIGKILL everything in the session (process group) that `pid` leads; nothing left is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def end_session(pid: int) -> None:
    """Wait until the child `pid`, a session leader, has exited, then kill what it left in its session.
    It is not reaped here, so its id cannot be reused by another group before the kill."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    kill_session(pid)


def normal_priority() -> str | None:
    """Run at nice 0, as a runtime's own benchmark does: a Ray worker (and so its job's processes) starts at
    nice 15 unless the node sets worker_niceness 0, and would then give way to every other process on the
    node. Returns a note for the row when the niceness cannot be lowered (no CAP_SYS_NICE, RLIMIT_NICE)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        return None
    except OSError:
        return (f"measured at nice {nice} (not allowed to lower it): other processes preempt the job; "
                "start the node with RAY_worker_niceness=0 (deploy/start-node.sh does)")


def finish(folder: Path, result: Any, status) -> None:
    """Write `result` to FOLDER/result.pkl (whole or not at all), close the stage pipe, and exit 0 without
    interpreter teardown: a runtime's atexit hook cannot turn a finished job into a crash."""
    tmp = folder / "result.pkl.tmp"
    tmp.write_bytes(pickle.dumps(result))
    tmp.replace(folder / "result.pkl")
    status.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
