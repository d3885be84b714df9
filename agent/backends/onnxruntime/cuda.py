"""ONNX Runtime on NVIDIA GPUs: the CUDA and TensorRT execution providers (devices `cuda`, `tensorrt-ep`).

- I/O binding: `run` binds the host batch and a device output, runs, and copies the output back (host
  end-to-end); `prepare_device_run` binds device-resident input and output once, so the runner can also time
  the model alone (the difference is the copies).
- ORT silently retries with fallback providers when an EP cannot be created: a session whose first provider is
  not the requested one is reported `unsupported`, never measured under the wrong name.
- Where nodes fall back to CPU, a note says which provider ran how many nodes, and the CPU op types
  (`session.record_ep_graph_assignment_info` + `get_provider_graph_assignment_info`, ORT >= 1.2x).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetbench.agent.backends.base import Artifact, Engine
from fleetbench.agent.paths import cache_dir
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def ort_trt_cache() -> Path:
    return cache_dir("ort-tensorrt")


def artifact_digest(artifact: Artifact) -> str:
    """sha256 (16 hex) of every file of an artifact: graph, weights and shapes."""
    h = hashlib.sha256()
    for f in artifact.files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def provider_chain(provider: str, device_id: int = 0, artifact: Optional[Artifact] = None) -> list[Any]:
    """Providers in order, with options: TensorRT EP falls back to CUDA, then CPU; CUDA EP to CPU.

    TensorRT EP: ORT names a cached engine after the graph's file name and tensor names only, and every
    fleetbench graph is `model.onnx`; the prefix (a digest of the artifact's files) keeps one job's
    engine from serving another. The precision flags follow the graph: on TensorRT 10 (weakly typed) an
    fp16 graph builds fp16 kernels only with trt_fp16_enable, a QDQ graph int8 only with trt_int8_enable.
    CUDA EP: TF32 off (use_tf32=0), so an fp32 row computes in IEEE fp32."""
    cuda = (CUDA, {"device_id": device_id, "use_tf32": 0})
    if provider == TRT:
        cache = str(ort_trt_cache())
        dtype = artifact.dtype if artifact is not None else "fp32"
        opts = {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
                "trt_fp16_enable": dtype == "fp16", "trt_int8_enable": dtype == "int8"}
        if artifact is not None:
            opts["trt_engine_cache_prefix"] = f"fb-{artifact_digest(artifact)}"
        return [(TRT, opts), cuda, CPU]
    return [cuda, CPU]


def trt_ep_dtype(dtype: str, compute_capability: Optional[str]) -> tuple[str, str]:
    """(the row's dtype, how it was established) for a graph of `dtype` on ORT's TensorRT EP.

    The EP has no switch for TensorRT's TF32 builder flag (on by default): an fp32 graph on an Ampere or
    later GPU (compute capability >= 8.0) may run its convolutions and matrix products in TF32."""
    how = ("from the graph and the EP's precision flags (the TensorRT EP does not expose the engine's layer "
           "precisions)")
    if dtype == "fp32":
        try:
            ampere = float(compute_capability or 0) >= 8.0
        except ValueError:
            ampere = False
        if ampere:
            return "tf32", how + "; TensorRT's TF32 default applies to fp32 layers on cc >= 8.0"
    return dtype, how


def gpu_engine(ort: Any, artifact: Artifact, job: Job, threads: int, opts: Any, provider: str,
               device_id: int = 0) -> Engine:
    from fleetbench.agent.gpu import ProcessVram
    if provider == TRT:
        ort_trt_cache().mkdir(parents=True, exist_ok=True)
    vram = ProcessVram(index=device_id)   # sampled at stage ends: no thread wakes inside a timed loop
    try:
        sess = ort.InferenceSession(str(artifact.main), sess_options=opts,
                                    providers=provider_chain(provider, device_id, artifact))
    except BaseException:
        vram.close()
        raise
    used = sess.get_providers()[0]
    if used != provider:
        vram.close()
        raise Unsupported(f"onnxruntime: {provider} could not be created on this node (ORT fell back to {used})")
    io = BoundSession(sess, device_id)
    placement = placement_note(sess)
    dtype, how = artifact.dtype, "TF32 off (CUDA EP use_tf32=0)" if provider == CUDA else ""
    if provider == TRT:
        from fleetbench.agent.gpu import nvidia_gpu
        gpu = nvidia_gpu(device_id)[0] or {}
        dtype, how = trt_ep_dtype(artifact.dtype, gpu.get("compute_capability"))

    def notes() -> list[str]:
        out = [placement] if placement else []
        if how:
            out.append(f"dtype {dtype}: {how}")
        if vram.peak_mb is None and vram.reason:
            out.append(f"vram: {vram.reason}")
        return out

    vram.sample()   # after the session (and a TensorRT EP engine) is built; fixes which figure `source` is
    return Engine(run=io.run, dtype=dtype, threads=threads, provider=used, vram=vram.peak,
                  vram_source=vram.source, close=vram.close, notes=notes,
                  prepare_device_run=io.prepare_device_run)


class BoundSession:
    """One input, first output; host in/out through I/O binding, or device-resident for timing the model alone."""

    def __init__(self, sess: Any, device_id: int = 0):
        self.sess, self.device_id = sess, device_id
        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        self.in_name, self.out_name = inp.name, out.name
        self.in_dtype = NP_TYPES.get(inp.type, np.float32)
        self.io = sess.io_binding()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.io.bind_cpu_input(self.in_name, np.ascontiguousarray(x, dtype=self.in_dtype))
        self.io.bind_output(self.out_name, "cuda", self.device_id)
        self.sess.run_with_iobinding(self.io)
        return np.asarray(self.io.copy_outputs_to_cpu()[0], dtype=np.float32)   # device-to-host: synchronous

    def prepare_device_run(self, x: np.ndarray):
        import onnxruntime as ort
        xv = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=self.in_dtype), "cuda", self.device_id)
        io = self.sess.io_binding()
        io.bind_ortvalue_input(self.in_name, xv)
        io.bind_output(self.out_name, "cuda", self.device_id)
        self.sess.run_with_iobinding(io)               # first run: ORT allocates the output on the device
        io.bind_ortvalue_output(self.out_name, io.get_outputs()[0])

        keep = (xv, io)   # the bound OrtValues live as long as the call

        def device_run() -> None:
            self.sess.run_with_iobinding(keep[1])
            keep[1].synchronize_outputs()

        return device_run


def placement_note(sess: Any) -> Optional[str]:
    """'ORT node placement: TensorrtExecutionProvider 50, CPUExecutionProvider 2 (on CPU: Shape x2)';
    'ORT node placement: all 52 nodes on CUDAExecutionProvider'; None when ORT cannot say."""
    try:
        subgraphs = sess.get_provider_graph_assignment_info()
    except Exception:
        return None
    counts: Counter = Counter()
    cpu_ops: Counter = Counter()
    for sg in subgraphs:
        nodes = list(sg.get_nodes())
        counts[sg.ep_name] += len(nodes)
        if sg.ep_name == CPU:
            cpu_ops.update(n.op_type for n in nodes)
    if len(counts) <= 1 and not cpu_ops:
        return None if not counts else f"ORT node placement: all {sum(counts.values())} nodes on {next(iter(counts))}"
    text = "ORT node placement: " + ", ".join(f"{ep} {n}" for ep, n in counts.most_common())
    if cpu_ops:
        text += " (on CPU: " + ", ".join(f"{op} x{n}" for op, n in cpu_ops.most_common()) + ")"
    return text
