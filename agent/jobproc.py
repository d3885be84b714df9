"""The job process: `python -m fleetbench.agent.jobproc FOLDER FD`, started by agent/supervise.py.

Reads (job, weights) from FOLDER/job.pkl, runs it (agent.runner.run_job), writes each stage's name
as a line to file descriptor FD as it begins, and (result, diagnostics) to FOLDER/result.pkl at the
end. Its stdout and stderr (our log lines and whatever the runtimes print) go to FOLDER/output.log.
It dies with its parent (PR_SET_PDEATHSIG), so a cancelled task leaves no job running.
"""
from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent died before the prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    folder, fd, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleetbench.agent.runner import run_job
    job, weights = pickle.loads((folder / "job.pkl").read_bytes())
    status = os.fdopen(fd, "w", buffering=1)
    diagnostics: dict = {}
    result = run_job(job, weights, on_stage=lambda name: status.write(name + "\n"), diagnostics=diagnostics)
    tmp = folder / "result.pkl.tmp"
    tmp.write_bytes(pickle.dumps((result, diagnostics)))
    tmp.replace(folder / "result.pkl")
    status.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # skip interpreter teardown: a runtime's atexit hook cannot turn a finished job into a crash


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
