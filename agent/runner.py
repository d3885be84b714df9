"""run_job(job) -> Result: one job, stage by stage, in this process. No Ray here.

Stages: load (model, data, reference predictions), compress, export, build, measure, evaluate.
A third-party exception is translated at its stage's boundary into a StageError; the job then
becomes a `failed` row with that stage and a one-line error (the traceback goes to the log).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from fleetbench.agent import cache as engine_cache
from fleetbench.agent import compress, measure, sizes
from fleetbench.agent.backends import Artifact, Backend, Engine, ExportContext
from fleetbench.agent.backends import get as get_backend
from fleetbench.agent.quality import batches, predict, quality
from fleetbench.shared.errors import FleetError, StageError, Unsupported, one_line
from fleetbench.shared.job import RESULT_COLUMNS, SIDE_FIELDS, Job, Result
from fleetbench.shared.vocab import BackendName, Stage, Status

log = logging.getLogger(__name__)
MB = 2**20
# backends whose engines take concurrent calls from several threads (ONNX Runtime sessions and
# PyTorch modules are thread-safe for inference); OpenVINO and TensorRT need their own async APIs
THROUGHPUT_BACKENDS = (BackendName.ONNXRUNTIME, BackendName.PYTORCH, BackendName.TORCHSCRIPT)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def stage(name: str, on_stage: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """The one boundary per stage where foreign exceptions become our StageError."""
    if on_stage is not None:
        on_stage(name)
    try:
        yield
    except FleetError:
        raise
    except MemoryError as e:
        raise StageError(name, f"out of memory: {e}") from e
    except Exception as e:
        log.debug("stage %s failed:\n%s", name, traceback.format_exc())
        raise StageError(name, one_line(e)) from e


def default_threads() -> int:
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass
class Loaded:
    """The load stage: dataset, fp32 model (None for onnx: sources), and the agreement reference."""

    data: Any
    model: Any
    onnx_source: Optional[Path]
    reference: Optional[np.ndarray]
    notes: list[str] = field(default_factory=list)
    gflops: Optional[float] = None   # the fp32 model's GFLOPs per item, counted on the reference pass


@dataclass(frozen=True)
class Compressed:
    """The compress stage: the sparsity a prune reached (None for other methods)."""

    sparsity: Optional[float]


@dataclass(frozen=True)
class Exported:
    """The export stage (Result columns of the same names)."""

    export_s: float
    cache_hit: Optional[bool]
    size_mb: float
    size_compressed_mb: float


@dataclass(frozen=True)
class Built:
    """The build stage: what the engine says it computes in, and how long it took."""

    build_s: float
    dtype: str
    threads: Optional[int]
    provider: Optional[str]


@dataclass(frozen=True)
class Measured:
    """The measure stage beside its timed windows: the first call, device-resident time, streams in flight."""

    first_ms: float
    latency_device_p50_ms: Optional[float] = None
    streams: Optional[int] = None   # throughput scenario: requests kept in flight


@dataclass(frozen=True)
class Timed:
    """The timed windows (`timed`): latency figures, p50 interval, validity verdict, energy, raw samples."""

    latency_mean_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_std_ms: float
    latency_min_ms: float
    latency_p50_ci_low_ms: Optional[float]
    latency_p50_ci_high_ms: Optional[float]
    iterations: int
    measure_s: float
    throughput_ips: float
    repeats: int
    window_p50s_ms: list[float]
    window_iters: list[int]
    samples_ms: list[float]
    valid: bool
    validity: Optional[str]
    cv_pct: Optional[float]
    other_cpu_cores: Optional[float]
    cpu_steal_pct: Optional[float]
    window_start: str
    window_end: str
    energy_j_per_item: Optional[float]


@dataclass(frozen=True)
class Efficiency:
    """FLOPs per item of the fp32 model, the GFLOP/s achieved and their share of this node's GEMM peak."""

    gflops: Optional[float]
    achieved_gflops_s: Optional[float] = None
    peak_gflops_s: Optional[float] = None
    efficiency_pct: Optional[float] = None


@dataclass(frozen=True)
class Memory:
    """RAM and VRAM over build, measure and evaluate."""

    ram_peak_mb: float
    ram_delta_mb: float
    vram_peak_mb: Optional[float] = None
    vram_source: Optional[str] = None


@dataclass
class Outcome:
    """What the stages returned so far (a failed job keeps what was measured before it failed)."""

    records: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, record: Any, notes: Sequence[str] = ()) -> None:
        self.records.append(record)
        self.notes.extend(notes)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for record in self.records:
            for f in dataclasses.fields(record):
                if f.name not in _COLUMNS:
                    raise TypeError(f"{type(record).__name__}.{f.name} is not a Result column")
                out[f.name] = getattr(record, f.name)
        return out


# Fields a stage record may fill: not the job's own (Result.for_job) nor notes (a record's notes join them).
_COLUMNS = set(RESULT_COLUMNS + SIDE_FIELDS) - {"job_id", "sweep", "model", "compression", "backend", "device",
                                               "batch_size", "node_id", "hostname", "hw_kind", "host_id",
                                               "scenario", "notes"}


def run_job(job: Job, weights: Optional[bytes] = None, workdir: Optional[Path] = None,
            on_stage: Optional[Callable[[str], None]] = None, diagnostics: Optional[dict] = None) -> Result:
    """Run one job and return its row; never raises for a job's own failure.

    `weights`: the checkpoint's bytes, shipped by the coordinator (cached here by content hash).
    `on_stage(name)` is called as each stage begins (the coordinator tracks where a job died).
    `diagnostics`, when given, gets the traceback of a failed job under "traceback".
    """
    started_at = _now()
    t0 = time.perf_counter()
    out = Outcome()
    status: dict[str, Any] = {"status": Status.OK}
    try:
        with contextlib.ExitStack() as stack:
            if workdir is None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetbench-")))
            _execute(job, out, weights, Path(workdir), functools.partial(stage, on_stage=on_stage))
    except Unsupported as e:
        status = {"status": Status.UNSUPPORTED, "error": one_line(e)}
    except StageError as e:
        status = {"status": Status.FAILED, "stage": e.stage, "error": one_line(e)}
        if diagnostics is not None:
            diagnostics["traceback"] = traceback.format_exc()
        log.error("%s failed in %s: %s\n%s", job.describe(), e.stage, status["error"], traceback.format_exc())
    except Exception as e:  # a bug outside any stage: still a row, never a lost job
        status = {"status": Status.FAILED, "stage": Stage.LOAD, "error": one_line(e)}
        if diagnostics is not None:
            diagnostics["traceback"] = traceback.format_exc()
        log.error("%s failed: %s\n%s", job.describe(), status["error"], traceback.format_exc())
    return Result.for_job(job, **status, **out.fields(), notes="; ".join(out.notes) or None,
                          started_at=started_at, finished_at=_now(), wall_s=time.perf_counter() - t0)


def _backend_for(job: Job) -> Backend:
    """The job's backend, if it can run this job on this node; else Unsupported with the reason."""
    try:
        backend = get_backend(job.backend)
    except KeyError:
        raise Unsupported(f"{job.backend}: backend not available in this fleetbench build") from None
    except ImportError as e:
        raise Unsupported(f"{job.backend}: cannot import its module ({e})") from None
    avail = backend.probe()
    if not avail.available:
        raise Unsupported(avail.reason or f"{job.backend}: not available on this node")
    if job.device not in avail.devices:
        raise Unsupported(f"{job.backend}: no device {job.device!r} on this node "
                          f"(has: {', '.join(avail.devices) or 'none'})")
    reason = backend.check(job) or compress.check(job, backend)
    if job.scenario == "throughput" and (job.backend not in THROUGHPUT_BACKENDS or job.device != "cpu"):
        reason = reason or (f"{job.backend}:{job.device}: the throughput scenario drives "
                            f"{', '.join(THROUGHPUT_BACKENDS)} on cpu (concurrent calls); not this engine yet")
    if reason:
        raise Unsupported(reason)
    return backend


def _execute(job: Job, out: Outcome, weights: Optional[bytes], workdir: Path, stage) -> None:
    backend = _backend_for(job)
    threads = job.measure.threads or default_threads()
    streams: Optional[int] = None
    if job.scenario == "throughput":   # each of the streams gets its share of the threads
        streams = job.measure.streams or threads
        threads = max(1, threads // streams)
    if backend.needs_model:
        _import_libraries()
    baseline_mb = measure.rss_mb()
    with stage(Stage.LOAD):
        loaded = _load(job, weights, threads, backend.needs_model)
    out.add(Efficiency(loaded.gflops), loaded.notes)

    with stage(Stage.COMPRESS):
        change = compress.apply(job, loaded.model, loaded.data.calib_x)
    out.add(Compressed(change.sparsity), change.notes)

    example = next(batches(loaded.data.eval_x[: job.batch_size], job.batch_size))[0]
    ctx = ExportContext(job=job, model=change.model, example=example, workdir=workdir,
                        calib_x=loaded.data.calib_x, onnx_source=loaded.onnx_source)
    with stage(Stage.EXPORT):
        artifact, exported = _export(job, backend, ctx, workdir)
    out.add(exported, artifact.notes)   # what the export did (quantized layers, precision seen)
    del ctx, change
    loaded.model = None
    _release_memory()
    if not measure.reset_peak():
        out.notes.append("kernel peak RSS could not be reset: ram_peak_mb covers the whole job")

    with measure.PeakRSS() as mem:
        with stage(Stage.BUILD):
            t = time.perf_counter()
            engine = backend.load(artifact, job, threads)
            built = Built(time.perf_counter() - t, engine.dtype, engine.threads, engine.provider)
            out.add(built)
        with stage(Stage.MEASURE):
            windows = None
            if job.scenario == "throughput":
                windows = functools.partial(_throughput_windows, engine, example, job, streams or threads)
            elif job.measure.repeat_mode == "process":
                windows = functools.partial(fresh_process_windows, artifact, job, threads, example)
            measured, timed_windows, notes = _measure(engine, example, job, windows, streams)
            out.add(measured, notes)
            out.add(timed_windows)
        with stage(Stage.EVALUATE):
            if backend.needs_model:
                pred = predict(engine.run, loaded.data.eval_x, job.batch_size)
                out.add(quality(pred, loaded.data.eval_y, loaded.reference))
    vram = (engine.vram(), engine.vram_source) if engine.vram is not None else (None, None)
    out.add(Memory(mem.peak_mb, mem.peak_mb - baseline_mb, *vram),
            engine.notes())   # engine-specific notes (placement, caches, VRAM source)
    engine.close()
    out.add(*_efficiency(job, loaded.gflops, timed_windows.throughput_ips, built.dtype, threads))


def _export(job: Job, backend: Backend, ctx: ExportContext, workdir: Path) -> tuple[Artifact, Exported]:
    """The engine cache's artifact (a hit skips the export: export_s 0), else the backend's export."""
    t = time.perf_counter()
    artifact = engine_cache.lookup(job, backend)
    cache_hit = artifact is not None if backend.cacheable else None
    export_s = 0.0
    if artifact is None:
        artifact = backend.export(ctx)
        export_s = time.perf_counter() - t
        engine_cache.store(job, backend, artifact, workdir)
    if cache_hit is None:   # a backend with a cache of its own (TensorRT engines) says so itself
        cache_hit = artifact.cache_hit
    return artifact, Exported(export_s, cache_hit, sizes.size_bytes(artifact.files) / MB,
                              sizes.compressed_bytes(artifact.files) / MB)


def _efficiency(job: Job, gflops: Optional[float], throughput_ips: float, dtype: str,
                threads: int) -> tuple[Efficiency, list[str]]:
    """achieved GFLOP/s and its share of this node's GEMM peak for the row's dtype (after the job's
    own measurement, so the probe never overlaps it)."""
    if not gflops or not throughput_ips:
        return Efficiency(gflops), []
    achieved = gflops * throughput_ips
    if job.device != "cpu" and not job.device.startswith("cuda"):
        return Efficiency(gflops, achieved), [f"peak: no GEMM probe for device {job.device}"]
    from fleetbench.agent.peak import node_peak
    peak, why = node_peak(dtype or "fp32", threads, job.device, job.measure.max_other_cpu_cores)
    if not peak:
        return Efficiency(gflops, achieved), why
    return Efficiency(gflops, achieved, peak, 100.0 * achieved / peak), why


def _load(job: Job, weights: Optional[bytes], threads: int, needs_model: bool) -> Loaded:
    """Dataset, fp32 model, and the fp32 eager model's predictions (the agreement reference)."""
    from fleetbench.agent.data import load_dataset
    data = load_dataset(job.dataset, tuple(job.model.input_size))
    if data.classes is not None and len(data.classes) > job.model.num_classes:
        raise StageError("load", f"{job.dataset.path}: {len(data.classes)} class folders but "
                                 f"num_classes is {job.model.num_classes}: labels {job.model.num_classes}.."
                                 f"{len(data.classes) - 1} are outside the model's classes")
    if not needs_model:
        return Loaded(data, None, None, None)
    checkpoint = None
    if weights is not None and job.weights_sha256:
        from fleetbench.agent.models import materialise_weights
        suffix = Path(job.model.checkpoint or job.model.source).suffix
        checkpoint = materialise_weights(weights, job.weights_sha256, suffix)
    if job.model.scheme == "onnx":
        path = checkpoint or Path(job.model.source.partition(":")[2])
        if not path.is_file():
            raise StageError(Stage.LOAD, f"{path}: ONNX model not found")
        from fleetbench.agent.backends.onnxruntime.backend import reference_runner
        return Loaded(data, None, path, predict(reference_runner(path, threads), data.eval_x, job.batch_size))
    from fleetbench.agent.models import load_model
    model, model_notes = load_model(job.model, checkpoint)
    import torch
    torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)   # FLOPs per item, counted on the reference pass itself
    with torch.inference_mode(), counter:
        reference = predict(lambda x: model(torch.from_numpy(x)).numpy(), data.eval_x, 64)
    items = -(-len(data.eval_x) // 64) * 64     # predict pads the last batch to 64
    gflops = counter.get_total_flops() / items / 1e9 or None
    return Loaded(data, model, None, reference, list(model_notes), gflops)


def _measure(engine: Engine, example: np.ndarray, job: Job, windows_fn: Optional[Callable[[], list]] = None,
             streams: Optional[int] = None) -> tuple[Measured, Timed, list[str]]:
    t = time.perf_counter()
    engine.run(example)
    first_ms = (time.perf_counter() - t) * 1e3
    if windows_fn is None:
        windows = measure.measure_windows(lambda: engine.run(example), job.measure, job.measure.repeats,
                                          gpu_index=_gpu_index(job))
    else:
        windows = windows_fn()
    timed_windows, notes = timed(windows, job)
    device_p50, device_notes = _measure_device_resident(engine, example, job)
    return Measured(first_ms, device_p50, streams), timed_windows, notes + device_notes


def _throughput_windows(engine, example: np.ndarray, job: Job, streams: int) -> list:
    return [measure.throughput_window(lambda: engine.run(example), job.measure, streams)
            for _ in range(job.measure.repeats)]


def fresh_process_windows(artifact, job: Job, threads: int, example: np.ndarray) -> list:
    """`repeats` windows, each in a fresh process that loads the engine, warms up and times one window
    (repeat_mode: process): what one process's allocator, JIT or thread placement did is then not
    repeated in every window."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    windows = []
    for _ in range(job.measure.repeats):
        with ctx.Pool(1) as pool:
            windows.append(pool.apply(_window_in_this_process, (artifact, job, threads, example)))
    return windows


def _window_in_this_process(artifact, job: Job, threads: int, example: np.ndarray):
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


def _import_libraries() -> None:
    """Import what loading needs before the RAM baseline, so ram_delta_mb is the job's model, data and
    engine rather than library code (the backend's runtime was imported by its probe already)."""
    import sklearn.datasets  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    with contextlib.suppress(ImportError):
        import timm  # noqa: F401


def _release_memory() -> None:
    """Give freed export memory back to the OS, so the engine's peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
