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

import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetbench.agent.backends.base import Artifact, Engine
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def ort_trt_cache() -> Path:
    return Path(os.environ.get("FLEETBENCH_CACHE") or Path.home() / ".cache" / "fleetbench") / "ort-tensorrt"


def provider_chain(provider: str, device_id: int = 0) -> list[Any]:
    """Providers in order, with options: TensorRT EP falls back to CUDA, then CPU; CUDA EP to CPU."""
    cuda = (CUDA, {"device_id": device_id})
    if provider == TRT:
        cache = str(ort_trt_cache())
        return [(TRT, {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                       "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}), cuda, CPU]
    return [cuda, CPU]


def gpu_engine(ort: Any, artifact: Artifact, job: Job, threads: int, opts: Any, provider: str,
               device_id: int = 0) -> Engine:
    from fleetbench.agent.gpu import ProcessVram
    if provider == TRT:
        ort_trt_cache().mkdir(parents=True, exist_ok=True)
    vram = ProcessVram(index=device_id).start()
    try:
        sess = ort.InferenceSession(str(artifact.main), sess_options=opts,
                                    providers=provider_chain(provider, device_id))
    except BaseException:
        vram.close()
        raise
    used = sess.get_providers()[0]
    if used != provider:
        vram.close()
        raise Unsupported(f"onnxruntime: {provider} could not be created on this node (ORT fell back to {used})")
    io = BoundSession(sess, device_id)
    placement = placement_note(sess)

    def notes() -> list[str]:
        out = [placement] if placement else []
        if vram.peak_mb is None and vram.reason:
            out.append(f"vram: {vram.reason}")
        return out

    eng = Engine(run=io.run, dtype=artifact.dtype, threads=threads, provider=used, vram=vram.peak,
                 vram_source="nvml-process", close=vram.close)
    eng.prepare_device_run = io.prepare_device_run
    eng.notes = notes
    return eng


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

        def device_run() -> None:
            self.sess.run_with_iobinding(io)
            io.synchronize_outputs()

        device_run.keep = (xv, io)   # the bound OrtValues live as long as the call
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
