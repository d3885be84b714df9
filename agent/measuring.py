"""An engine's build, timed windows and evaluation, in whichever process holds the engine: the lean
measuring process (agent/measureproc.py) for engines whose artifact is files, the job's own process
(agent/runner.py) for the others. Imports numpy and fleetbench's measuring code only; the backend
brings its runtime.

`timed(windows, job)` turns the raw windows into a row's latency figures and verdict; the job's process
calls it (its interval method needs scipy, which the measuring process does not load).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np

from fleetbench.agent import measure
from fleetbench.agent.backends import Artifact, Backend, Engine
from fleetbench.agent.limits import cpu_limits
from fleetbench.agent.quality import logits, predict
from fleetbench.agent.stages import Built, Measured, Memory, Timed
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import BackendName, Stage


@dataclass
class EngineRun:
    """What building, timing and evaluating one engine gave."""

    records: list[Any] = field(default_factory=list)     # Built, Measured, Memory
    windows: list[Any] = field(default_factory=list)     # validity.Window, raw
    notes: list[str] = field(default_factory=list)
    pred: Optional[np.ndarray] = None
    counts: Optional[dict] = None                        # a sequential quality check's (agent/sequential.py)
    stage_s: dict[str, float] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)   # heavy modules the measuring process had loaded


def throughput_reason(job: Job, backend: Backend) -> Optional[str]:
    """Why the throughput scenario cannot drive this job's engine (None: it can); Backend.throughput_driver
    says how (and whether) each backend's engine is kept busy."""
    return backend.check_throughput(job) if job.scenario == "throughput" else None


def run_engine(backend: Backend, artifact: Artifact, job: Job, threads: int, streams: Optional[int],
               example: np.ndarray, eval_x: Optional[Callable[[], np.ndarray]], baseline_mb: float,
               stage, sequential=None) -> EngineRun:
    """Build the engine, time it, and (when `eval_x` is given) predict the evaluation set with it.
    `stage(name)` is the stage boundary (agent/stages.py). Peak RSS covers build and the timed windows."""
    out = EngineRun()
    if not measure.reset_peak():
        out.notes.append("kernel peak RSS could not be reset: ram_peak_mb covers the whole process")
    with measure.PeakRSS() as mem:
        with stage(Stage.BUILD):
            t = time.perf_counter()
            engine = backend.load(artifact, job, threads)
            allowed = cpu_limits()
            out.records.append(Built(time.perf_counter() - t, engine.dtype, engine.threads, engine.provider,
                                     allowed.affinity_list, allowed.quota))
            out.stage_s["build"] = time.perf_counter() - t
        with stage(Stage.MEASURE):
            t = time.perf_counter()
            windows_fn = None
            if job.scenario == "throughput":
                windows_fn = functools.partial(_throughput_windows, engine, example, job, streams or threads)
            elif job.measure.repeat_mode == "process":
                windows_fn = functools.partial(fresh_process_windows, artifact, job, threads, example)
            measured, out.windows, notes = _measure(engine, example, job, windows_fn, engine.streams or streams)
            out.records.append(measured)
            out.notes.extend(notes)
            out.stage_s["measure"] = time.perf_counter() - t
    vram = (engine.vram(), engine.vram_source) if engine.vram is not None else (None, None)
    out.records.append(Memory(mem.peak_mb, mem.peak_mb - baseline_mb, *vram))
    if eval_x is not None:
        with stage(Stage.EVALUATE):
            t = time.perf_counter()
            if sequential is None:
                out.pred = predict(engine.run, eval_x(), job.batch_size, job.model.num_classes)
            else:   # a race's quality phase: until the bound answers (agent/sequential.py)
                from fleetbench.agent.sequential import predict_sequential
                out.pred, out.counts = predict_sequential(engine.run, eval_x(), job.batch_size, sequential,
                                                                 job.model.num_classes)
            out.stage_s["evaluate"] = time.perf_counter() - t
    out.notes.extend(engine.notes())   # engine-specific notes (placement, caches, VRAM source)
    engine.close()
    return out


def _measure(engine: Engine, example: np.ndarray, job: Job, windows_fn: Optional[Callable[[], list]] = None,
             streams: Optional[int] = None) -> tuple[Measured, list, list[str]]:
    t = time.perf_counter()
    first = engine.run(example)
    first_ms = (time.perf_counter() - t) * 1e3
    logits(first, job.batch_size, job.model.num_classes)   # logits of this batch size, before anything is timed
    if windows_fn is None:
        windows = measure.measure_windows(lambda: engine.run(example), job.measure, job.measure.repeats,
                                          gpu_index=_gpu_index(job))
    else:
        windows = windows_fn()
    device_p50, device_notes = _measure_device_resident(engine, example, job)
    return Measured(first_ms, device_p50, streams), windows, device_notes


def _throughput_windows(engine, example: np.ndarray, job: Job, streams: int) -> list:
    if engine.throughput is not None:   # the engine's own driver: async infer requests, execution contexts
        return [engine.throughput(example, job.measure) for _ in range(job.measure.repeats)]
    return [measure.throughput_window(lambda: engine.run(example), job.measure, streams)
            for _ in range(job.measure.repeats)]


def fresh_process_windows(artifact, job: Job, threads: int, example: np.ndarray) -> list:
    """`repeats` windows, each in a fresh process that loads the engine, warms up and times one window
    (repeat_mode: process): what one process's allocator, JIT or thread placement did is then not
    repeated in every window."""
    windows = []
    for _ in range(job.measure.repeats):
        with helper_pool() as pool:
            windows.append(pool.apply(_window_in_this_process, (artifact, job, threads, example)))
    return windows


def helper_pool():
    """A one-worker spawn pool whose worker dies with this process (a force-cancelled job leaves none)."""
    import multiprocessing
    import os

    from fleetbench.agent.childproc import die_with_parent
    return multiprocessing.get_context("spawn").Pool(1, initializer=die_with_parent, initargs=(os.getpid(),))


def _window_in_this_process(artifact, job: Job, threads: int, example: np.ndarray):
    from fleetbench.agent.backends import get as get_backend
    engine = get_backend(job.backend).load(artifact, job, threads)
    try:
        engine.run(example)
        return measure.measure_windows(lambda: engine.run(example), job.measure, 1, gpu_index=_gpu_index(job))[0]
    finally:
        engine.close()


def _gpu_index(job: Job) -> Optional[int]:
    from fleetbench.agent.gpu import device_index
    on_gpu = job.device.startswith("cuda") or job.backend == BackendName.TENSORRT
    return device_index(job.device) if on_gpu else None


def _measure_device_resident(engine: Engine, example: np.ndarray, job: Job) -> tuple[Optional[float], list[str]]:
    """GPU engines that can run on inputs already on the device are timed that way too, so the row
    tells device time from host end-to-end time (copies in and out included). A device-resident call
    returns its device seconds from CUDA events where the engine can record them on its stream; else
    (None) the host clock around the synchronised call is the figure, and a note says which."""
    if engine.prepare_device_run is None:
        return None, []
    run = engine.prepare_device_run(example)
    device: list = []
    host = measure.time_loop(lambda: device.append(run()), job.measure)
    device = device[job.measure.warmup_iters:]
    if device and all(d is not None for d in device):
        return measure.summarize(device).p50_ms, ["latency_device_p50_ms: CUDA events on the engine's stream"]
    return measure.summarize(host).p50_ms, ["latency_device_p50_ms: host clock around a synchronised "
                                            "device-resident run (no CUDA stream of the engine's to time with events)"]


def timed(windows: list, job: Job) -> tuple[Timed, list[str]]:
    """A row's latency figures, p50 interval, validity verdict, energy and raw samples from its timed
    windows, and notes for the row (why energy is missing)."""
    from fleetbench.agent import validity
    from fleetbench.shared.stats import p50_with_ci
    samples = [s for w in windows for s in w.samples_s]
    stats = measure.summarize(samples)
    per_window = [measure.summarize(w.samples_s) for w in windows]
    window_p50s = [w.p50_ms for w in per_window]
    samples_ms = [s * 1e3 for s in samples]
    p50, ci_low, ci_high = p50_with_ci(window_p50s, samples_ms)
    measure_s, throughput = stats.window_s, stats.throughput(job.batch_size)
    if job.scenario == "throughput":   # concurrent calls: items over the windows' wall time
        measure_s = sum(w.duration_s for w in windows)
        throughput = job.batch_size * stats.iterations / measure_s
    reasons: list[str] = []
    for i, w in enumerate(windows):
        prefix = f"window {i + 1}: " if len(windows) > 1 else ""
        reasons.extend(prefix + r for r in validity.judge(w, job.measure))
    reasons.extend(validity.judge_tail(len(samples), job.measure))
    cvs = [c for c in (validity.cv_pct(w.samples_s) for w in windows) if c is not None]
    cpu = [w.cpu for w in windows if w.cpu is not None]
    energy = [w.energy_j for w in windows]
    per_item = sum(energy) / (stats.iterations * job.batch_size) if all(e is not None for e in energy) else None
    notes = [] if per_item is not None else [
        f"{next((w.energy_reason for w in windows if w.energy_reason), 'energy: not reported')}: "
        "energy_j_per_item left empty"]
    return Timed(
        latency_mean_ms=stats.mean_ms, latency_p50_ms=p50, latency_p90_ms=stats.p90_ms,
        latency_p99_ms=stats.p99_ms, latency_std_ms=stats.std_ms, latency_min_ms=stats.min_ms,
        latency_p50_ci_low_ms=ci_low, latency_p50_ci_high_ms=ci_high, iterations=stats.iterations,
        measure_s=measure_s, throughput_ips=throughput, repeats=len(windows), window_p50s_ms=window_p50s,
        window_iters=[w.iterations for w in per_window], samples_ms=samples_ms,
        valid=not reasons, validity="; ".join(reasons) or None, cv_pct=max(cvs) if cvs else None,
        other_cpu_cores=max(c.other_cpu_cores for c in cpu) if cpu else None,
        cpu_steal_pct=max(c.steal_pct for c in cpu) if cpu else None,
        window_start=_iso(windows[0].started), window_end=_iso(windows[-1].ended), energy_j_per_item=per_item,
    ), notes


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
