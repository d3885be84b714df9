"""What the job process (agent/jobproc.py) and the measuring process (agent/measureproc.py) share: dying
with their parent, and handing their result back through a file before leaving without teardown."""
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


def die_with_parent(parent: int) -> None:
    """Be killed (SIGKILL) when the parent dies; leave now if it died before this took effect."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


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
