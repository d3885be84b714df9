"""The measuring process: a fresh `python -m fleetbench.agent.measureproc FOLDER FD PARENT` per measured job.

It carries only its runtime: it imports the backend's module and runtime, numpy and the fleetbench records
(no torch unless the engine is a torch one, no other runtime), loads the prepared artifact, and times it.
So its peak RSS and RAM delta are what a deployment of that engine needs. Preparation (torch, export)
happened before, in the job's own process (agent/runner.py, agent/prepare.py), never at the same time.

In: FOLDER/spec.pkl (job, backend name, artifact, threads, the evaluation arrays' .npy, whether to predict).
Out: each stage's name as a line on file descriptor FD as it begins, and FOLDER/result.pkl (the build,
measure and memory records, engine notes, predictions or None, seconds per stage, heavy modules loaded).
It dies with its parent (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fleetbench.agent.childproc import die_with_parent, finish, restore_affinity

# Runtimes and heavy libraries: the result says which of these the measuring process had loaded.
WATCHED = ("torch", "onnxruntime", "openvino", "tensorrt", "ai_edge_litert", "tensorflow", "jax", "litert_torch",
           "sklearn", "scipy", "timm", "onnx", "nncf")


@dataclass
class Spec:
    job: Any
    backend: str            # "module:Class" of the backend (a backend registered at run time is found too)
    artifact: Any
    threads: int
    streams: Optional[int]
    eval_x: Path
    evaluate: bool
    sequential: Any = None   # a race's quality phase: agent/sequential.py Sequential


@dataclass
class Outcome:
    """What the measuring process sends back: the engine's run, the heavy modules it had loaded, and the
    (stage, one line) of a failure inside it."""

    run: Any = None                                      # agent/measuring.py EngineRun
    modules: list[str] = field(default_factory=list)
    error: Optional[tuple[str, str]] = None
    ready_at: Optional[float] = None                     # when its imports and baseline were done


def backend_target(backend) -> str:
    return f"{type(backend).__module__}:{type(backend).__qualname__}"


def measure_in_child(spec: Spec, workdir: Path, on_stage: Callable[[str], None]):
    """Run the measuring process for `spec` and return its EngineRun (agent/measuring.py), with `spawn`
    (process start, imports, baseline) and `process` seconds in its stage_s; a process that dies without
    a result, or fails inside, raises StageError naming the stage it was in."""
    from fleetbench.shared.errors import StageError
    folder = Path(workdir) / "measure"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.pkl").write_bytes(pickle.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    read_fd, write_fd = os.pipe()
    t, started = time.perf_counter(), time.time()
    with open(folder / "output.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fleetbench.agent.measureproc", str(folder), str(write_fd),
                                 str(os.getpid())], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), env=env)
    os.close(write_fd)
    stage = "build"
    try:
        for name in _events(read_fd, proc):
            stage = name
            on_stage(stage)
    finally:
        rc = proc.wait()
        _echo(folder / "output.log")
    try:
        outcome: Outcome = pickle.loads((folder / "result.pkl").read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit code {rc}"
        raise StageError(stage, f"measuring process died ({how}): {_last_line(folder / 'output.log')}") from None
    if outcome.error is not None:
        raise StageError(*outcome.error)
    run = outcome.run
    run.stage_s["spawn"] = max(0.0, outcome.ready_at - started) if outcome.ready_at else 0.0
    run.stage_s["process"] = time.perf_counter() - t
    run.modules = outcome.modules
    return run


def _events(read_fd: int, proc: subprocess.Popen):
    """The stage names the measuring process writes, until it has exited (not until every copy of the pipe's
    write end is closed: a process it started may hold one)."""
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], 0.2)
            chunk = pipe.read(4096) if ready else b""
            pending += chunk or b""
            *lines, pending = pending.split(b"\n")
            yield from (n for n in (ln.decode(errors="replace").strip() for ln in lines) if n)
            if (ready and not chunk) or (not ready and proc.poll() is not None):
                return


def _echo(path: Path, limit: int = 16_000) -> None:
    """What the measuring process printed, into this process's log (the job's output, `coordinator logs`)."""
    with contextlib.suppress(OSError):
        data = path.read_bytes()[-limit:]
        if data:
            sys.stderr.write(data.decode(errors="replace"))
            sys.stderr.flush()


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else "no output"


def _child(folder: Path, status) -> Outcome:
    import importlib

    import numpy as np

    from fleetbench.agent import measure
    from fleetbench.agent.measuring import run_engine
    from fleetbench.agent.quality import batches
    from fleetbench.agent.stages import stage
    from fleetbench.shared.errors import StageError, one_line

    spec: Spec = pickle.loads((folder / "spec.pkl").read_bytes())
    job, out = spec.job, Outcome()

    def begin(name: str) -> None:
        status.write(name + "\n")
        status.flush()

    current = "build"

    def boundary(name: str):
        nonlocal current
        current = name
        return stage(name, begin)

    try:
        module, _, cls = spec.backend.partition(":")
        backend = getattr(importlib.import_module(module), cls)()
        backend.probe()                  # imports the runtime before the RAM baseline
        baseline_mb = measure.rss_mb()
        x = np.load(spec.eval_x, mmap_mode="r")
        example = next(batches(np.array(x[: job.batch_size]), job.batch_size))[0]   # a writable copy
        out.ready_at = time.time()
        out.run = run_engine(backend, spec.artifact, job, spec.threads, spec.streams, example,
                             (lambda: np.load(spec.eval_x, mmap_mode="r" if spec.sequential else None))
                             if spec.evaluate else None, baseline_mb, boundary, spec.sequential)
    except StageError as e:
        out.error = (e.stage, one_line(e))
    except Exception as e:  # noqa: BLE001 - outside a stage: still a row, in the stage it was in
        out.error = (current, one_line(e))
    out.modules = [m for m in WATCHED if m in sys.modules]
    return out


def main(argv: list[str]) -> int:
    folder, fd, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    die_with_parent(parent)
    restore_affinity()
    os.set_inheritable(fd, False)   # what the runtime starts does not hold the stage pipe
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    status = os.fdopen(fd, "w", buffering=1)
    from fleetbench.agent import measureproc  # records pickled under their module's name, not __main__
    finish(folder, measureproc._child(folder, status), status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
