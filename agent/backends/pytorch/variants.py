"""Precision variants of a PyTorch module for the eager and TorchScript engines (fp16, bf16, int8-dynamic)."""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetbench.agent.backends.precision import majority_dtype
from fleetbench.agent.compress.cluster import layer_kind

log = logging.getLogger(__name__)


@dataclass
class TorchVariant:
    module: Any                 # the module to save/trace
    dtype: str                  # what it computes in (fp32 | fp16 | bf16 | int8)
    param_dtype: Any = None     # torch dtype inputs must be cast to (None: float32)
    quantized: bool = False     # holds quantized (packed) modules: not a plain state dict
    notes: list[str] = field(default_factory=list)


def torch_variant(model, method: str) -> TorchVariant:
    """The module an eager/TorchScript engine runs for `method`. Model-level methods (prune, cluster)
    were applied before; here only the precision changes."""
    import torch
    if method == "fp16":
        return TorchVariant(copy.deepcopy(model).half(), "fp16", torch.float16)
    if method == "bf16":
        return TorchVariant(copy.deepcopy(model).to(torch.bfloat16), "bf16", torch.bfloat16)
    if method == "int8-dynamic":
        return _dynamic_int8(model)
    return TorchVariant(model, "fp32")


def _dynamic_int8(model) -> TorchVariant:
    """torch.ao dynamic quantization: int8 weights, activations quantized at run time. Linear only:
    PyTorch has no dynamically quantized convolution, so a CNN's convolutions stay fp32."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao eager quantization is deprecated in favour of torchao
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    n_int8 = sum(1 for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"))
    n_float = sum(1 for m in q.modules() if layer_kind(m) is not None)
    dtype = majority_dtype({"int8": n_int8, "fp32": n_float})
    note = (f"int8-dynamic (torch.ao quantize_dynamic): {n_int8} of {n_int8 + n_float} conv/linear layers "
            f"run int8 (Linear only; PyTorch has no dynamic int8 convolution)")
    log.info(note)
    return TorchVariant(q, dtype, None, quantized=n_int8 > 0, notes=[note])


def cast_io(module, dtype):
    """`module` wrapped to take float32 input, run in `dtype` and return float32, so a traced
    TorchScript module keeps the same float32 interface at every precision."""
    import torch

    class CastIO(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.to(dtype)).float()

    return CastIO(module)


def save_weights(variant: TorchVariant, workdir: Path) -> Path:
    """The eager engine's artifact: safetensors for plain modules, torch.save of the state dict for
    quantized ones (their packed int8 weights are not plain tensors)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if variant.quantized:
        import torch
        path = workdir / "model.pt"
        torch.save(variant.module.state_dict(), str(path))
        return path
    from safetensors.torch import save_model
    path = workdir / "model.safetensors"
    save_model(variant.module, str(path))
    return path
