"""ONNX Runtime: the exported ONNX graph run by an execution provider (CPU here; CUDA/TensorRT EPs on NVIDIA)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Engine, ExportContext
from fleetbench.shared.job import Job

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt-ep": "TensorrtExecutionProvider"}


def onnx_files(path) -> list:
    """The ONNX file and its external-data file(s) beside it."""
    return [path] + sorted(p for p in path.parent.glob(path.name + ".data*") if p.is_file())


class OnnxRuntimeBackend:
    name = "onnxruntime"

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

    def export(self, ctx: ExportContext) -> Artifact:
        from fleetbench.agent.compress.onnx_variants import onnx_variant, ort_runtime_dtype
        variant = onnx_variant(ctx)   # the graph the job's compression calls for (fp32, fp16, QDQ int8, dynamic int8)
        dtype, notes = variant.dtype, list(variant.notes)
        if ctx.job.device == "cpu":   # what the CPU provider really computes in; Unsupported if fp16 would run fp32
            dtype, seen = ort_runtime_dtype(variant, [PROVIDERS["cpu"]])
            notes += seen
        return Artifact(variant.files, dtype=dtype, meta={"notes": notes})

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")   # which EP ran each node
        provider = PROVIDERS[job.device]
        if provider != PROVIDERS["cpu"]:
            from fleetbench.agent.backends._ort_gpu import gpu_engine
            return gpu_engine(ort, artifact, job, threads, opts, provider)
        sess = ort.InferenceSession(str(artifact.main), sess_options=opts, providers=[provider])
        name = sess.get_inputs()[0].name
        used = sess.get_providers()[0]

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0]

        return Engine(run=run, dtype=artifact.dtype, threads=threads, provider=used)


def _has_nvidia_gpu() -> bool:
    from fleetbench.agent.gpu import nvidia_gpus
    return bool(nvidia_gpus()[0])
