"""Backend registry: names map to lazy "module:Class" targets, so a node without TensorRT still imports
this package. A backend class is checked (`base.validate`) when it is first loaded or registered."""
from __future__ import annotations

import importlib
from typing import Union

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext, validate
from fleetbench.shared.vocab import BACKENDS

__all__ = ["Artifact", "Availability", "Backend", "Engine", "ExportContext", "get", "names", "register"]

# The one registry table lives in shared.vocab (the sweep schema reads its names); values are lazy
# "module:Class" targets, or a class registered at run time.
_REGISTRY = BACKENDS


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
        target = getattr(importlib.import_module(module), cls)
    return validate(target)


def get(name: str) -> Backend:
    return backend_class(name)()
