"""What the job process (agent/jobproc.py) and the measuring process (agent/measureproc.py) share: dying
with their parent, and handing their result back through a file before leaving without teardown."""
from __future__ import annotations

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
