"""Compression as a sweep axis: what each backend can do, and the torch-level transforms.

The runner calls `check(job, backend)` before loading anything (a reason -> an `unsupported` row) and
`apply(job, model, data, notes, res)` in the "compress" stage. Model-level methods (prune, prune-channels,
cluster) change the fp32 network before export, so every engine gets the same compressed network.
Precision methods (fp16, bf16, int8-dynamic, int8-static) are applied by each backend's export:
`agent.compress.torch_variants` (eager, TorchScript), `agent.compress.onnx_variants` (ONNX Runtime,
TensorRT) and `agent.compress.openvino_variants` (OpenVINO IR, NNCF).

A backend may define `check_compression(job) -> Optional[str]`; it then decides for itself. Backends
not listed here (tensorrt, tflite) judge precision methods in their own `check()`, which runs first.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from fleetbench.shared.job import Job, Result

log = logging.getLogger(__name__)

MODEL_METHODS = ("prune", "prune-channels", "cluster")          # torch-level, before export
PRECISION_METHODS = ("fp16", "bf16", "int8-dynamic", "int8-static")

# What each backend does with each precision method: None = supported, else the reason it cannot.
_TORCH_INT8_STATIC = ("{b}: int8-static (PyTorch PT2E / torchao static quantization) is not implemented in "
                      "fleetbench; run int8-static on onnxruntime or openvino")
_REASONS: dict[str, dict[str, Optional[str]]] = {
    "pytorch": {"int8-static": _TORCH_INT8_STATIC},
    "torchscript": {"int8-static": _TORCH_INT8_STATIC},
    "onnxruntime": {"bf16": "onnxruntime: bf16 has no ONNX variant (the ONNX Conv operator does not take "
                            "bfloat16 tensors, opset 18)"},
}


def check(job: Job, backend: Any) -> Optional[str]:
    """Reason this job's compression cannot run on this backend/device, or None."""
    method = job.compression.method
    if method == "none":
        return None
    own = getattr(backend, "check_compression", None)
    if callable(own):
        return own(job)
    name = job.backend
    if method in MODEL_METHODS:
        if job.model.scheme == "onnx":
            return f"{job.compression.name}: needs a PyTorch model; an onnx: source cannot be {method}d"
        if method == "prune-channels":
            try:
                import torch_pruning  # noqa: F401
            except ImportError as e:
                return f"prune-channels needs torch-pruning ({e}); pip install 'fleetbench[compress]'"
        return None
    if name == "openvino":
        from fleetbench.agent.compress import openvino_variants
        return openvino_variants.check(method, job.device)
    if name in ("pytorch", "torchscript") and method == "int8-dynamic" and job.device != "cpu":
        return f"{name}: int8-dynamic kernels (torch.ao dynamic quantization) run on CPU only, not {job.device}"
    if name in _REASONS:
        reason = _REASONS[name].get(method)
        return reason.format(b=name) if reason else None
    return None   # other backends (tensorrt, tflite) judge precision methods in their own check()


def apply(job: Job, model, data, notes: list[str], res: Result):
    """Apply a model-level method to the fp32 network (in place); precision methods pass through."""
    method = job.compression.method
    if method not in MODEL_METHODS or model is None:
        return model
    import numpy as np
    import torch
    spec = job.compression
    example = torch.from_numpy(np.ascontiguousarray(data.calib_x[:1]))
    if method == "prune":
        from fleetbench.agent.compress.prune import prune_unstructured
        res.sparsity, n = prune_unstructured(model, spec.percent, spec.layers)
        notes.append(f"prune {spec.percent:g}% (global L1, unstructured) over {n} {_what(spec.layers)} layers: "
                     f"sparsity {res.sparsity:.3f}")
    elif method == "prune-channels":
        from fleetbench.agent.compress.prune import count_params, prune_channels, recalibrate_batchnorm
        before = count_params(model)
        model = prune_channels(model, spec.percent, example, spec.layers)
        after = count_params(model)
        n_bn = recalibrate_batchnorm(model, data.calib_x)
        notes.append(f"prune-channels {spec.percent:g}% (torch-pruning, L1 magnitude, classifier kept): "
                     f"params {before:,} -> {after:,} ({after / before:.2f}x)"
                     + (f"; {n_bn} BatchNorm statistics re-estimated on {len(data.calib_x)} calibration images"
                        if n_bn else "") + "; no fine-tuning")
    elif method == "cluster":
        _cluster(model, spec, example, notes)
    log.info("%s: %s", job.describe(), notes[-1])
    return model.eval()


def _cluster(model, spec, example, notes: list[str]) -> None:
    import torch

    from fleetbench.agent.compress.cluster import cluster_model, fold_batchnorm
    with torch.no_grad():
        before = model(example)
    folded = fold_batchnorm(model, example)
    with torch.no_grad():
        drift = float((model(example) - before).abs().max() / (before.abs().max() + 1e-12))
    if drift > 1e-3:
        raise RuntimeError(f"BatchNorm folding changed the outputs (max relative difference {drift:.2e})")
    unique = cluster_model(model, spec.clusters, spec.layers)
    for name, n in unique.items():
        log.info("cluster: %s has %d unique weight values", name, n)
    notes.append(f"folded {len(folded)} BatchNorm; clustered {len(unique)} {_what(spec.layers)} layers "
                 f"to <={spec.clusters} values (max {max(unique.values(), default=0)} unique per layer)")


def _what(layers: str) -> str:
    return "conv+linear" if layers == "all" else layers
