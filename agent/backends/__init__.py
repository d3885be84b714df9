"""Backend registry: names map to lazy loaders, so a node without TensorRT still imports this package."""
from __future__ import annotations

import importlib

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext

__all__ = ["Artifact", "Availability", "Backend", "Engine", "ExportContext", "get", "names"]

_REGISTRY: dict[str, str] = {
    "pytorch": "fleetbench.agent.backends.pytorch:PytorchBackend",
    "torchscript": "fleetbench.agent.backends.torchscript:TorchScriptBackend",
    "onnxruntime": "fleetbench.agent.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "fleetbench.agent.backends.openvino:OpenVinoBackend",
    "tensorrt": "fleetbench.agent.backends.tensorrt:TensorRTBackend",
    "tflite": "fleetbench.agent.backends.tflite:TFLiteBackend",
    "null": "fleetbench.agent.backends.null:NullBackend",
}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    target = _REGISTRY.get(name)
    if target is None:
        raise KeyError(f"unknown backend {name!r} (valid: {', '.join(_REGISTRY)})")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()
