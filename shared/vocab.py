"""The product's vocabulary: one typed name for each backend, method, dtype, stage, status and hardware kind,
and the one method table that the sweep schema, the compress package and every backend read.

Values are plain strings on the wire and in the database (StrEnum compares equal to its value).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Optional


class BackendName(StrEnum):
    """Every shipped backend (BACKENDS below); `null` is the test-only engine."""

    PYTORCH = "pytorch"
    TORCHSCRIPT = "torchscript"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    TFLITE = "tflite"
    NULL = "null"


# The backend registry: name -> "module:Class", imported only when a job needs it (agent/backends/__init__.py
# reads this table; the sweep schema accepts exactly its names). A new engine is one line here.
BACKENDS: dict[str, object] = {
    BackendName.PYTORCH: "fleetbench.agent.backends.pytorch.eager:PytorchBackend",
    BackendName.TORCHSCRIPT: "fleetbench.agent.backends.pytorch.script:TorchScriptBackend",
    BackendName.ONNXRUNTIME: "fleetbench.agent.backends.onnxruntime.backend:OnnxRuntimeBackend",
    BackendName.OPENVINO: "fleetbench.agent.backends.openvino.backend:OpenVinoBackend",
    BackendName.TENSORRT: "fleetbench.agent.backends.tensorrt:TensorRTBackend",
    BackendName.TFLITE: "fleetbench.agent.backends.tflite:TFLiteBackend",
    BackendName.NULL: "fleetbench.agent.backends.null:NullBackend",
}


class Method(StrEnum):
    """Compression methods; METHODS below says what each takes and at which level it acts."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    PRUNE = "prune"
    PRUNE_CHANNELS = "prune-channels"
    CLUSTER = "cluster"


class Dtype(StrEnum):
    """What an engine computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class Stage(StrEnum):
    """The stages of one job, in order; a failed row names the one it died in."""

    LOAD = "load"
    COMPRESS = "compress"
    EXPORT = "export"
    BUILD = "build"
    MEASURE = "measure"
    EVALUATE = "evaluate"


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"
    ELIMINATED = "eliminated"    # left a race (search: race) at quality or speed, with its evidence


class HwKind(StrEnum):
    """The hardware kind a node is (it may be several) and a row is filed under."""

    CPU = "cpu"
    NVIDIA = "nvidia"
    INTEL = "intel"


@dataclass(frozen=True)
class MethodInfo:
    """One compression method.

    level "model": a torch-level transform of the fp32 network before export (agent/compress), so
    every engine gets the same changed network. level "precision": each backend makes its own variant
    and declares what it computes in, or why it cannot (agent/backends, `Backend.precisions`).
    """

    param: Optional[Literal["percent", "clusters"]]   # the one parameter the method takes, if any
    level: Literal["none", "model", "precision"]
    transform: Optional[str] = None   # model level: "module:function" in agent/compress that applies it
    requires: Optional[tuple[str, str]] = None   # (importable module, pip extra) the transform needs


METHODS: dict[str, MethodInfo] = {
    Method.NONE: MethodInfo(None, "none"),
    Method.FP16: MethodInfo(None, "precision"),
    Method.BF16: MethodInfo(None, "precision"),
    Method.INT8_DYNAMIC: MethodInfo(None, "precision"),
    Method.INT8_STATIC: MethodInfo(None, "precision"),
    Method.PRUNE: MethodInfo("percent", "model", "fleetbench.agent.compress.prune:apply_prune"),
    Method.PRUNE_CHANNELS: MethodInfo("percent", "model", "fleetbench.agent.compress.prune:apply_prune_channels",
                                      requires=("torch_pruning", "compress")),
    Method.CLUSTER: MethodInfo("clusters", "model", "fleetbench.agent.compress.cluster:apply_cluster"),
}


def methods_at(level: str) -> tuple[str, ...]:
    """The methods of one level ("model" or "precision"), in table order."""
    return tuple(name for name, info in METHODS.items() if info.level == level)
