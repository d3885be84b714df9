"""Backend registry: names map to lazy "module:Class" targets, so a node without TensorRT still imports
this package. A backend class is checked (`base.validate`) when it is first loaded or registered."""
from __future__ import annotations

import importlib
from typing import Union

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext, validate

__all__ = ["Artifact", "Availability", "Backend", "Engine", "ExportContext", "get", "names", "register"]

_REGISTRY: dict[str, Union[str, type[Backend]]] = {
    "pytorch": "fleetbench.agent.backends.pytorch.eager:PytorchBackend",
    "torchscript": "fleetbench.agent.backends.pytorch.script:TorchScriptBackend",
    "onnxruntime": "fleetbench.agent.backends.onnxruntime.backend:OnnxRuntimeBackend",
    "openvino": "fleetbench.agent.backends.openvino.backend:OpenVinoBackend",
    "tensorrt": "fleetbench.agent.backends.tensorrt:TensorRTBackend",
    "tflite": "fleetbench.agent.backends.tflite:TFLiteBackend",
    "null": "fleetbench.agent.backends.null:NullBackend",
}


def names() -> list[str]:
    return list(_REGISTRY)


def register(name: str, target: Union[str, type[Backend]]) -> None:
    """Add a backend (a class, checked now, or a lazy "module:Class" target, checked when first used)."""
    if not isinstance(target, str):
        validate(target)
        if target.name != name:
            raise TypeError(f"backend {target.__name__}: name {target.name!r} registered as {name!r}")
    _REGISTRY[name] = target


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def backend_class(name: str) -> type[Backend]:
    target = _REGISTRY.get(name)
    if target is None:
        raise KeyError(f"unknown backend {name!r} (valid: {', '.join(_REGISTRY)})")
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        return validate(getattr(importlib.import_module(module), cls))
    return target


def get(name: str) -> Backend:
    return backend_class(name)()
