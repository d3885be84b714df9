"""The job process: `python -m fleetbench.agent.jobproc FOLDER FD`, started by agent/supervise.py.

Reads (job, weights) from FOLDER/job.pkl, runs it (agent.runner.run_job), writes each stage's name
as a line to file descriptor FD as it begins, and (result, diagnostics) to FOLDER/result.pkl at the
end. Its stdout and stderr (our log lines and whatever the runtimes print) go to FOLDER/output.log.
It dies with its parent (PR_SET_PDEATHSIG), so a cancelled task leaves no job running.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
from pathlib import Path

from fleetbench.agent.childproc import die_with_parent, finish, normal_priority


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
