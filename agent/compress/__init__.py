"""Model-level compression: transforms of the fp32 torch network before export (prune, prune-channels,
cluster), so every engine gets the same changed network.

Each model-level method of shared.vocab.METHODS names its transform ("module:function"); a transform
takes (model, spec, calib_x) and returns a ModelChange. Precision methods (fp16, bf16, int8-dynamic,
int8-static) are not here: each backend makes its own variant and declares what it can do
(agent/backends, `Backend.precisions`).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from fleetbench.shared.job import Job
from fleetbench.shared.vocab import METHODS

log = logging.getLogger(__name__)


@dataclass
class ModelChange:
    """What a model-level transform did: the changed network, its notes and sparsity (prune only)."""

    model: Any
    notes: list[str] = field(default_factory=list)
    sparsity: Optional[float] = None


def check(job: Job, backend: Any) -> Optional[str]:
    """Reason this job's compression cannot run: a model-level method on a source without a torch
    module or without its library; a precision method the backend declares it cannot do."""
    method = job.compression.method
    info = METHODS[method]
    if info.level == "precision":
        return backend.check_compression(job)
    if info.level != "model":
        return None
    if job.model.scheme == "onnx":
        return f"{job.compression.name}: needs a PyTorch model; an onnx: source cannot be {method}d"
    if info.requires and importlib.util.find_spec(info.requires[0]) is None:
        module, extra = info.requires
        return (f"{method} needs {module.replace('_', '-')} (No module named {module!r}); "
                f"pip install 'fleetbench[{extra}]'")
    return None


def transform(method: str) -> Callable[..., ModelChange]:
    """The transform function of a model-level method."""
    target = METHODS[method].transform
    if target is None:
        raise ValueError(f"{method}: not a model-level method")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def apply(job: Job, model, calib_x) -> ModelChange:
    """Apply the job's model-level method to the fp32 network; other methods leave it as it is."""
    method = job.compression.method
    if METHODS[method].level != "model" or model is None:
        return ModelChange(model)
    change = transform(method)(model, job.compression, calib_x)
    change.model = change.model.eval()
    for note in change.notes:
        log.info("%s: %s", job.describe(), note)
    return change


def layers_word(layers: str) -> str:
    return "conv+linear" if layers == "all" else layers
