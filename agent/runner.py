"""run_job(job) -> Result: one job, stage by stage, in this process. No Ray here.

Stages: load (model, data, reference predictions), compress, export, build, measure, evaluate.
A third-party exception is translated at its stage's boundary into a StageError; the job then
becomes a `failed` row with that stage and a one-line error (the traceback goes to the log).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from fleetbench.agent import cache as engine_cache
from fleetbench.agent import compress
from fleetbench.agent import measure, sizes
from fleetbench.agent.backends import ExportContext
from fleetbench.agent.backends import get as get_backend
from fleetbench.agent.quality import batches, predict, quality
from fleetbench.shared.errors import FleetError, StageError, Unsupported, one_line
from fleetbench.shared.job import Job, Result

log = logging.getLogger(__name__)
MB = 2**20
# backends whose engines take concurrent calls from several threads (ONNX Runtime sessions and
# PyTorch modules are thread-safe for inference); OpenVINO and TensorRT need their own async APIs
THROUGHPUT_BACKENDS = ("onnxruntime", "pytorch", "torchscript")


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


def run_job(job: Job, weights: Optional[bytes] = None, workdir: Optional[Path] = None,
            on_stage: Optional[Callable[[str], None]] = None) -> Result:
    """Run one job and return its row; never raises for a job's own failure.

    `weights`: the checkpoint's bytes, shipped by the coordinator (cached here by content hash).
    `on_stage(name)` is called as each stage begins (the coordinator tracks where a job died).
    """
    res = Result.for_job(job, started_at=_now())
    t0 = time.perf_counter()
    notes: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            if workdir is None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetbench-")))
            _execute(job, res, notes, weights, Path(workdir), functools.partial(stage, on_stage=on_stage))
    except Unsupported as e:
        res.status, res.error = "unsupported", one_line(e)
    except StageError as e:
        res.status, res.stage, res.error = "failed", e.stage, one_line(e)
        log.error("%s failed in %s: %s\n%s", job.describe(), e.stage, res.error, traceback.format_exc())
    except Exception as e:  # a bug outside any stage: still a row, never a lost job
        res.status, res.stage, res.error = "failed", "load", one_line(e)
        log.error("%s failed: %s\n%s", job.describe(), res.error, traceback.format_exc())
    res.notes = "; ".join(notes) or None
    res.finished_at = _now()
    res.wall_s = time.perf_counter() - t0
    return res


def _execute(job: Job, res: Result, notes: list[str], weights: Optional[bytes], workdir: Path, stage) -> None:
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

    threads = job.measure.threads or default_threads()
    if job.scenario == "throughput":   # each of the streams gets its share of the threads
        res.streams = job.measure.streams or threads
        threads = max(1, threads // res.streams)
    needs_model = getattr(backend, "needs_model", True)
    if needs_model:
        _import_libraries()
    baseline_mb = measure.rss_mb()
    with stage("load"):
        data, model, onnx_source, reference = _load(job, weights, notes, threads, needs_model, res)

    with stage("compress"):
        model = _compress(job, model, data, notes, res)

    example = next(batches(data.eval_x[: job.batch_size], job.batch_size))[0]
    ctx = ExportContext(job=job, model=model, example=example, workdir=workdir, calib_x=data.calib_x,
                        onnx_source=onnx_source)
    with stage("export"):
        t = time.perf_counter()
        artifact = engine_cache.lookup(job, backend)   # engine cache: a hit skips the export (export_s 0)
        res.cache_hit = artifact is not None if engine_cache.cacheable(backend) else None
        res.export_s = 0.0
        if artifact is None:
            artifact = backend.export(ctx)
            res.export_s = time.perf_counter() - t
            engine_cache.store(job, backend, artifact, workdir)
        if res.cache_hit is None:   # a backend with a cache of its own (TensorRT engines) says so itself
            res.cache_hit = artifact.meta.get("cache_hit")
        res.size_mb = sizes.size_bytes(artifact.files) / MB
        res.size_compressed_mb = sizes.compressed_bytes(artifact.files) / MB
        notes.extend(artifact.meta.get("notes") or ())   # what the export did (quantized layers, precision seen)
    del ctx, model
    _release_memory()
    if not measure.reset_peak():
        notes.append("kernel peak RSS could not be reset: ram_peak_mb covers the whole job")

    with measure.PeakRSS() as mem:
        with stage("build"):
            t = time.perf_counter()
            engine = backend.load(artifact, job, threads)
            res.build_s = time.perf_counter() - t
        res.dtype, res.threads, res.provider = engine.dtype, engine.threads, engine.provider
        with stage("measure"):
            fresh = None
            if job.scenario == "throughput":
                fresh = functools.partial(_throughput_windows, engine, example, job, res.streams)
            elif job.measure.repeat_mode == "process":
                fresh = functools.partial(fresh_process_windows, artifact, job, threads, example)
            notes.extend(_measure(engine, example, job, res, fresh))
            _measure_device_resident(engine, example, job, res)
        with stage("evaluate"):
            if needs_model:
                pred = predict(engine.run, data.eval_x, job.batch_size)
                res.__dict__.update(quality(pred, data.eval_y, reference))
                res.eval_samples = int(len(pred))
    res.ram_peak_mb = mem.peak_mb
    res.ram_delta_mb = mem.peak_mb - baseline_mb
    if engine.vram is not None:
        res.vram_peak_mb, res.vram_source = engine.vram(), engine.vram_source
    notes.extend(engine.notes())   # engine-specific notes (placement, caches, VRAM source)
    engine.close()
    notes.extend(_efficiency(job, res, threads))


def _efficiency(job: Job, res: Result, threads: int) -> list[str]:
    """achieved GFLOP/s and its share of this node's GEMM peak for the row's dtype (after the job's
    own measurement, so the probe never overlaps it)."""
    if not res.gflops or not res.throughput_ips:
        return []
    res.achieved_gflops_s = res.gflops * res.throughput_ips
    if job.device != "cpu" and not job.device.startswith("cuda"):
        return [f"peak: no GEMM probe for device {job.device}"]
    from fleetbench.agent.peak import node_peak
    peak, why = node_peak(res.dtype or "fp32", threads, job.device, job.measure.max_other_cpu_cores)
    if peak:
        res.peak_gflops_s, res.efficiency_pct = peak, 100.0 * res.achieved_gflops_s / peak
    return why


def _load(job: Job, weights: Optional[bytes], notes: list[str], threads: int, needs_model: bool, res: Result):
    """Dataset, fp32 model, and the fp32 eager model's predictions (the agreement reference)."""
    from fleetbench.agent.data import load_dataset
    data = load_dataset(job.dataset, tuple(job.model.input_size))
    if not needs_model:
        return data, None, None, None
    checkpoint = None
    if weights is not None and job.weights_sha256:
        from fleetbench.agent.models import materialise_weights
        suffix = Path(job.model.checkpoint or job.model.source).suffix
        checkpoint = materialise_weights(weights, job.weights_sha256, suffix)
    if job.model.scheme == "onnx":
        path = checkpoint or Path(job.model.source.partition(":")[2])
        if not path.is_file():
            raise StageError("load", f"{path}: ONNX model not found")
        return data, None, path, _onnx_reference(path, data.eval_x, job.batch_size, threads)
    from fleetbench.agent.models import load_model
    model, model_notes = load_model(job.model, checkpoint)
    notes.extend(model_notes)
    import torch
    torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)   # FLOPs per item, counted on the reference pass itself
    with torch.inference_mode(), counter:
        reference = predict(lambda x: model(torch.from_numpy(x)).numpy(), data.eval_x, 64)
    items = -(-len(data.eval_x) // 64) * 64     # predict pads the last batch to 64
    res.gflops = counter.get_total_flops() / items / 1e9 or None
    return data, model, None, reference


def _onnx_reference(path: Path, x: np.ndarray, batch_size: int, threads: int) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return predict(lambda b: sess.run(None, {name: b})[0], x, batch_size)


def _compress(job: Job, model, data, notes: list[str], res: Result):
    if job.compression.method == "none" or model is None:
        return model
    return compress.apply(job, model, data, notes, res)


def _measure(engine, example: np.ndarray, job: Job, res: Result, windows_fn=None) -> list[str]:
    t = time.perf_counter()
    engine.run(example)
    res.first_ms = (time.perf_counter() - t) * 1e3
    if windows_fn is None:
        windows = measure.measure_windows(lambda: engine.run(example), job.measure, job.measure.repeats,
                                          gpu_index=_gpu_index(job))
    else:
        windows = windows_fn()
    return record_windows(windows, job, res)


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
    on_gpu = job.device.startswith("cuda") or job.backend == "tensorrt"
    return device_index(job.device) if on_gpu else None


def record_windows(windows: list, job: Job, res: Result) -> list[str]:
    """A row's latency figures, p50 interval, validity verdict, energy and raw samples from its timed
    windows; returns notes for the row (why energy is missing)."""
    from fleetbench.agent import validity
    from fleetbench.shared.stats import p50_with_ci
    samples = [s for w in windows for s in w.samples_s]
    stats = measure.summarize(samples)
    per_window = [measure.summarize(w.samples_s) for w in windows]
    res.window_p50s_ms = [w.p50_ms for w in per_window]
    res.window_iters = [w.iterations for w in per_window]
    res.samples_ms = [s * 1e3 for s in samples]
    p50, res.latency_p50_ci_low_ms, res.latency_p50_ci_high_ms = p50_with_ci(res.window_p50s_ms, res.samples_ms)
    res.latency_mean_ms, res.latency_p50_ms, res.latency_p90_ms = stats.mean_ms, p50, stats.p90_ms
    res.latency_p99_ms, res.latency_std_ms, res.latency_min_ms = stats.p99_ms, stats.std_ms, stats.min_ms
    res.iterations, res.measure_s, res.repeats = stats.iterations, stats.window_s, len(windows)
    res.throughput_ips = stats.throughput(job.batch_size)
    if job.scenario == "throughput":   # concurrent calls: items over the windows' wall time
        res.measure_s = sum(w.duration_s for w in windows)
        res.throughput_ips = job.batch_size * stats.iterations / res.measure_s
    reasons = []
    for i, w in enumerate(windows):
        prefix = f"window {i + 1}: " if len(windows) > 1 else ""
        reasons.extend(prefix + r for r in validity.judge(w, job.measure))
    reasons.extend(validity.judge_tail(len(samples), job.measure))
    res.valid, res.validity = not reasons, "; ".join(reasons) or None
    cvs = [c for c in (validity.cv_pct(w.samples_s) for w in windows) if c is not None]
    res.cv_pct = max(cvs) if cvs else None
    cpu = [w.cpu for w in windows if w.cpu is not None]
    res.other_cpu_cores = max(c.other_cpu_cores for c in cpu) if cpu else None
    res.cpu_steal_pct = max(c.steal_pct for c in cpu) if cpu else None
    res.window_start = _iso(windows[0].started)
    res.window_end = _iso(windows[-1].ended)
    energy = [w.energy_j for w in windows]
    if all(e is not None for e in energy):
        res.energy_j_per_item = sum(energy) / (stats.iterations * job.batch_size)
        return []
    why = next((w.energy_reason for w in windows if w.energy_reason), "energy: not reported")
    return [f"{why}: energy_j_per_item left empty"]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _measure_device_resident(engine, example: np.ndarray, job: Job, res: Result) -> None:
    """GPU engines that can run on inputs already on the device are timed that way too, so the row
    tells device-resident time from host end-to-end time (copies in and out included)."""
    if engine.prepare_device_run is not None:
        run = engine.prepare_device_run(example)
        res.latency_device_p50_ms = measure.summarize(measure.time_loop(run, job.measure)).p50_ms


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
