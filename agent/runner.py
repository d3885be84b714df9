"""run_job(job) -> Result: one job, stage by stage. No Ray here.

Stages: load (data, reference predictions), compress, export, build, measure, evaluate. Preparation
(load, compress, export) takes what the node already made from its cache (agent/cache.py) and makes
the rest once (agent/prepare.py); then, with nothing else of the job running, an engine whose artifact
is files is built, timed and (unless its predictions are cached) evaluated in a fresh measuring process
that imports only its runtime (agent/measureproc.py); PyTorch eager and TensorRT run here
(agent/measuring.py both ways). Quality is scored here.
A third-party exception is translated at its stage's boundary into a StageError; the job then
becomes a `failed` row with that stage and a one-line error (the traceback goes to the log).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import json
import logging
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fleetbench.agent import compress, measure, measureproc, prepare, sequential, sizes
from fleetbench.agent.backends import Artifact, Backend, ExportContext
from fleetbench.agent.backends import get as get_backend
from fleetbench.agent.limits import usable_cpus
from fleetbench.agent.measuring import EngineRun, run_engine, throughput_reason, timed
from fleetbench.agent.quality import batches, nonfinite, quality
from fleetbench.agent.sequential import Sequential
from fleetbench.agent.stages import Built, Compressed, Efficiency, Exported, Provenance, default_threads, stage, threads_reason
from fleetbench.shared.errors import StageError, Unsupported, one_line
from fleetbench.shared.job import RESULT_COLUMNS, SIDE_FIELDS, Job, Result
from fleetbench.shared.vocab import Stage, Status

log = logging.getLogger(__name__)
MB = 2**20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
            on_stage: Optional[Callable[[str], object]] = None, diagnostics: Optional[dict] = None) -> Result:
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
    reason = reason or throughput_reason(job, backend)
    if reason:
        raise Unsupported(reason)
    return backend



@dataclass
class _Job:
    """One job's working state across its stages: what was reused and the seconds per stage."""

    job: Job
    backend: Backend
    threads: int
    streams: Optional[int]
    workdir: Path
    stage: Any
    times: dict[str, float] = field(default_factory=dict)
    reuse: dict[str, bool] = field(default_factory=dict)


def _execute(job: Job, out: Outcome, weights: Optional[bytes], workdir: Path, stage) -> None:
    """Prepare (from the node's cache where it can), then measure: in a fresh lean process for a backend
    whose artifact is files (agent/measureproc.py), here for the others (PyTorch eager, TensorRT)."""
    clock = time.perf_counter()
    backend = _backend_for(job)
    threads = job.measure.threads or default_threads()
    reason = threads_reason(threads, usable_cpus())
    if reason:
        raise Unsupported(reason)
    streams: Optional[int] = None
    if job.scenario == "throughput" and backend.throughput_driver == "calls":   # each stream its share of the threads
        streams = job.measure.streams or threads
        threads = max(1, threads // streams)
    st = _Job(job, backend, threads, streams, workdir, stage)
    baseline_mb = 0.0
    if not backend.cacheable:
        if backend.needs_model:
            _import_libraries()
        baseline_mb = measure.rss_mb()
    st.times["start"] = time.perf_counter() - clock   # the backend's probe and imports
    clock = time.perf_counter()
    with stage(Stage.LOAD):
        data, ref = _load(st, weights, out)
    out.add(Efficiency(ref.gflops if ref else None))
    st.times["load"] = time.perf_counter() - clock
    example = next(batches(np.array(data.eval_x()[: job.batch_size]), job.batch_size))[0]   # a writable copy

    artifact = _artifact(st, weights, data, example, out)
    _release_memory()

    scored = backend.needs_model and job.phase != "block"   # a race's timing block is timed only
    cached_pred = prepare.stored_predictions(job, backend, threads) if scored else None
    evaluate = scored and cached_pred is None
    seq = Sequential.for_job(job, ref.pred, data.eval_y) if job.phase == "quality" and scored and ref else None
    check = seq if evaluate else None   # cached predictions of the whole set: their counts are the evidence
    if backend.cacheable:
        spec = measureproc.Spec(job, measureproc.backend_target(backend), artifact, threads, streams,
                                data.eval_x_path, evaluate, check)
        run: EngineRun = measureproc.measure_in_child(spec, workdir, _forward(stage))
    else:
        run = run_engine(backend, artifact, job, threads, streams, example,
                         (lambda: data.eval_x(mmap=check is not None)) if evaluate else None, baseline_mb, stage, check)
    for record in run.records:
        out.add(record)
    out.notes.extend(run.notes)
    st.times.update(run.stage_s)
    clock = time.perf_counter()
    timed_windows, notes = timed(run.windows, job)
    out.add(timed_windows, notes)
    source = None
    if scored and ref is not None:
        with stage(Stage.EVALUATE):
            source = (_quality(st, data, ref, run.pred, cached_pred, out) if run.counts is None or seq is None
                      else _sequential_quality(st, data, ref, run.pred, run.counts, seq, out))
    built = next(r for r in run.records if isinstance(r, Built))
    if job.phase == "full":   # a race's steps skip the node's GEMM peak (its final has it)
        out.add(*_efficiency(job, ref.gflops if ref else None, timed_windows.throughput_ips, built.dtype,
                             threads * (streams or 1)))
    st.times["score"] = time.perf_counter() - clock   # figures, verdict, quality and efficiency from the run
    out.add(Provenance(prepare.describe_reuse(st.reuse) or None, source,
                       json.dumps({k: round(v, 4) for k, v in st.times.items()}, sort_keys=True)))


def _load(st: _Job, weights: Optional[bytes], out: Outcome):
    """The node's dataset entry and, for a model, the fp32 reference predictions (made once per node)."""
    job = st.job
    data = prepare.dataset(job)
    classes = data.entry.info.get("classes")
    out.notes.extend(data.entry.info.get("notes") or [])
    if classes is not None and len(classes) > job.model.num_classes:
        raise StageError(Stage.LOAD, f"{job.dataset.path}: {len(classes)} class folders but "
                                     f"num_classes is {job.model.num_classes}: labels {job.model.num_classes}.."
                                     f"{len(classes) - 1} are outside the model's classes")
    st.reuse["dataset"] = data.entry.hit
    if not st.backend.needs_model:
        return data, None
    ref = prepare.reference(job, weights, data, st.threads)
    st.reuse["reference"] = ref.hit
    out.notes.extend(ref.notes)
    return data, ref


def _quality(st: _Job, data, ref, pred, cached_pred, out: Outcome) -> str:
    """Score the engine's predictions (made now, or the node's cached ones); where they came from."""
    job = st.job
    if cached_pred is None:
        bad = nonfinite(pred)
        if bad:
            raise StageError(Stage.EVALUATE, f"{job.backend} gives non-finite logits (NaN or inf) for {bad} of "
                                             f"{len(pred)} images")
        prepare.store_predictions(job, st.backend, st.threads, pred)
        source = f"evaluated in this job ({len(pred)} images at batch size {job.batch_size})"
    else:
        pred = cached_pred
        source = ("reused predictions from the node's cache: same artifact, batch size, threads and "
                  "dataset, made by an earlier job")
    st.reuse["predictions"] = cached_pred is not None
    out.add(quality(pred, data.eval_y, ref.pred))
    if job.phase == "quality":   # a race's quality step on the whole set: its counts are the evidence
        seq = Sequential.for_job(job, ref.pred, data.eval_y)
        out.add(sequential.evidence(seq.counts(np.asarray(pred)[seq.order], len(seq.order))))
    return source


def _sequential_quality(st: _Job, data, ref, pred, counts: dict, seq: Sequential, out: Outcome) -> str:
    """Score a race's sequential quality check on the images it saw; its counts are the row's evidence.
    Predictions of the whole set are kept in the node's cache like a full evaluation's."""
    n, total = counts["n"], counts["total"]
    idx = seq.order[:n]
    labels = data.eval_y
    out.add(quality(pred, None if labels is None else labels[idx], ref.pred[idx]))
    out.add(sequential.evidence(counts))
    if n == total:
        full = np.empty_like(pred)
        full[idx] = pred
        prepare.store_predictions(st.job, st.backend, st.threads, full)
    return f"sequential: {n} of {total} images in a seeded order (decision {sequential.verdict(counts).decision})"


def _forward(stage) -> Callable[[str], None]:
    """The stage names the measuring process reports, forwarded to the coordinator's tracker."""
    def forward(name: str) -> None:
        with stage(name):
            pass
    return forward


def _artifact(st: _Job, weights: Optional[bytes], data, example: np.ndarray, out: Outcome) -> Artifact:
    """The backend's artifact: from the node's cache, else compressed and exported now (and kept)."""
    clock = time.perf_counter()
    stored = prepare.stored_artifact(st.job, st.backend)
    if stored is None:
        return _prepare_artifact(st, weights, data, example, out)
    artifact, entry = stored
    with st.stage(Stage.COMPRESS):
        out.add(Compressed(entry.info.get("sparsity")), entry.info.get("compression_notes") or [])
    with st.stage(Stage.EXPORT):
        st.reuse["artifact"] = True
        made, packed = entry.info.get("size_bytes"), entry.info.get("compressed_bytes")   # measured when it was made
        size = (made, packed) if isinstance(made, int) and isinstance(packed, int) else _sizes(artifact)
        out.add(Exported(0.0, True, size[0] / MB, size[1] / MB), artifact.notes)
    st.times["export"] = time.perf_counter() - clock   # finding and checking the kept artifact
    return artifact


def _sizes(artifact: Artifact) -> tuple[int, int]:
    """Bytes of the artifact's files, and after zstd."""
    return sizes.size_bytes(artifact.files), sizes.compressed_bytes(artifact.files)


def _prepare_artifact(st: _Job, weights: Optional[bytes], data, example: np.ndarray, out: Outcome) -> Artifact:
    """Compress (once per model and compression on the node) and export this backend's artifact, keeping
    it in the node's cache when it is files."""
    job, backend = st.job, st.backend
    shared = prepare.shares_batch(backend, job)
    box: dict[str, Any] = {}

    def model():
        if "cm" not in box:
            box["cm"] = prepare.compressed(job, weights, data)
            if prepare.model_level(job):
                st.reuse["compressed"] = box["cm"].hit
        return box["cm"].model

    clock = time.perf_counter()
    with st.stage(Stage.COMPRESS):
        info = _compression_info(st, model, box)
    out.add(Compressed(info["sparsity"]), info["compression_notes"])
    st.times["compress"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with st.stage(Stage.EXPORT):
        flags = {"dynamic": shared}

        def onnx() -> Path:
            path, st.reuse["onnx"], flags["dynamic"] = prepare.onnx_export(job, model, example, shared)
            return path

        calib_example = next(batches(np.array(data.eval_x()[: prepare.CALIB_BATCH]), prepare.CALIB_BATCH))[0]
        onnx_source = prepare.onnx_source(job, weights) if job.model.scheme == "onnx" else None
        needs_module = backend.needs_model and not backend.takes_onnx and onnx_source is None
        ctx = ExportContext(job=job, model=model() if needs_module else None,
                            example=calib_example if shared else example, workdir=st.workdir,
                            calib_x=data.calib_x, onnx_source=onnx_source,
                            onnx_fn=onnx if backend.takes_onnx else None)
        t = time.perf_counter()
        artifact = backend.export(ctx)
        export_s = time.perf_counter() - t
        cache_hit = artifact.cache_hit   # a backend with a cache of its own (TensorRT engines) says so itself
        size = _sizes(artifact)
        if backend.cacheable:
            cache_hit = False
            if flags["dynamic"] == shared:   # a static export where a shared one was planned is not kept
                artifact = prepare.keep_artifact(job, backend, artifact, st.workdir,
                                                 {**info, "size_bytes": size[0], "compressed_bytes": size[1]})
            st.reuse["artifact"] = False
        out.add(Exported(export_s, cache_hit, size[0] / MB, size[1] / MB), artifact.notes)
    del ctx
    box.clear()
    st.times["export"] = time.perf_counter() - clock
    return artifact


def _compression_info(st: _Job, model, box: dict) -> dict:
    """Sparsity and notes of the job's model-level compression (made now or read from the node's cache)."""
    job, backend = st.job, st.backend
    if not backend.needs_model or job.model.scheme == "onnx" or not prepare.model_level(job):
        return {"sparsity": None, "compression_notes": []}
    kept = prepare.compressed_info(job)   # without loading the module, which only an export needs
    if kept is not None:
        st.reuse["compressed"] = True
        return kept
    model()
    cm = box["cm"]
    return {"sparsity": cm.sparsity, "compression_notes": list(cm.notes)}


def _efficiency(job: Job, gflops: Optional[float], throughput_ips: float, dtype: str,
                threads: int) -> tuple[Efficiency, list[str]]:
    """achieved GFLOP/s and its share of this node's GEMM peak for the row's dtype (after the job's
    own measurement, so the probe never overlaps it). `threads`: all the threads the achieved rate used
    (every stream's share together), so the peak is measured on as many."""
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
