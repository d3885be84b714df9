"""ONNX Runtime: the exported ONNX graph run by an execution provider (CPU here; CUDA/TensorRT EPs on NVIDIA)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import HwKind

BATCH_AXIS = "batch"   # agent/onnx_export.py names a dynamic batch axis so
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt-ep": "TensorrtExecutionProvider"}
# Devices other than cpu: the module of this package that builds their engine, and their hardware kind.
# Another execution provider (OpenVINO EP, CoreML EP) is a line in each table and a module of its own.
EP_MODULES = {"cuda": "cuda", "tensorrt-ep": "cuda"}
HW_KINDS = {"cuda": HwKind.NVIDIA, "tensorrt-ep": HwKind.NVIDIA}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    throughput_driver = "calls"   # a session takes concurrent run() calls: one per stream, threads shared out
    precisions = {
        "fp16": "fp16",
        "bf16": Unsupported("onnxruntime: bf16 has no ONNX variant (the ONNX Conv operator does not take "
                            "bfloat16 tensors, opset 18)"),
        "int8-dynamic": "int8",
        "int8-static": "int8",
    }
    takes_onnx = True

    def shares_batch(self, job: Job) -> bool:
        return job.device in ("cpu", "cuda")   # the TensorRT EP builds per shape

    def probe(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return Availability(False, f"onnxruntime: not installed ({e}); pip install 'fleetbench[cpu]'")
        have = set(ort.get_available_providers())
        devs = tuple(d for d, p in PROVIDERS.items() if p in have and (d == "cpu" or _has_nvidia_gpu()))
        return Availability(True, devices=devs)

    def check(self, job: Job) -> Optional[str]:
        if job.device not in PROVIDERS:
            return f"onnxruntime: no device {job.device!r} (valid: {', '.join(PROVIDERS)})"
        return None

    def hw_kind(self, device: str, node_kinds: Sequence[str]) -> str:
        return HW_KINDS.get(device) or super().hw_kind(device, node_kinds)

    def export(self, ctx: ExportContext) -> Artifact:
        from fleetbench.agent.backends.onnxruntime.variants import onnx_variant, ort_runtime_dtype
        variant = onnx_variant(ctx)   # the graph the job's compression calls for (fp32, fp16, QDQ int8, dynamic int8)
        dtype, notes = variant.dtype, list(variant.notes)
        if ctx.job.device == "cpu":   # what the CPU provider really computes in; Unsupported if fp16 would run fp32
            dtype, seen = ort_runtime_dtype(variant, [PROVIDERS["cpu"]])
            notes += seen
        return Artifact(variant.files, dtype=dtype, notes=notes)

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import onnxruntime as ort
        opts = session_options(ort, threads)
        opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")   # which EP ran each node
        opts.add_free_dimension_override_by_name(BATCH_AXIS, job.batch_size)   # a shared graph runs at a fixed batch
        provider = PROVIDERS[job.device]
        if job.device in EP_MODULES:
            module = importlib.import_module(f"{__package__}.{EP_MODULES[job.device]}")
            return module.gpu_engine(ort, artifact, job, threads, opts, provider)
        sess = ort.InferenceSession(str(artifact.main), sess_options=opts, providers=[provider])
        return Engine(run=_runner(sess), dtype=artifact.dtype, threads=threads, provider=sess.get_providers()[0])


def session_options(ort, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def _runner(sess) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return run


def reference_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The fp32 ONNX graph of an onnx: source on the CPU provider: the agreement reference for its rows."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return _runner(ort.InferenceSession(str(path), sess_options=opts, providers=[PROVIDERS["cpu"]]))


def _has_nvidia_gpu() -> bool:
    from fleetbench.agent.gpu import nvidia_gpus
    return bool(nvidia_gpus()[0])
