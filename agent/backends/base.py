"""The contract every backend implements: an abstract base class with declared capabilities, checked at registration."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import Dtype, HwKind, methods_at

if TYPE_CHECKING:
    from fleetbench.agent.validity import Window
    from fleetbench.shared.sweep import MeasureSpec


@dataclass(frozen=True)
class Availability:
    """What a probe found: never raised, always returned."""

    available: bool
    reason: Optional[str] = None
    devices: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "devices": list(self.devices)}


@dataclass
class ExportContext:
    """Everything a backend needs to write its artifact for one job."""

    job: Job
    model: Any                      # torch.nn.Module after compression, eval mode, fp32 on CPU (None for onnx: sources)
    example: np.ndarray             # one input batch, float32 NCHW at the job's batch size
    workdir: Path                   # where the artifact's files go
    calib_x: np.ndarray             # calibration inputs (disjoint from evaluation)
    onnx_source: Optional[Path] = None   # set for onnx:<path> models
    onnx_fn: Optional[Callable[[], Path]] = None   # the node's shared export (agent/prepare.py), made on first use
    _onnx: Optional[Path] = None

    def onnx(self) -> Path:
        """The fp32 ONNX export of the model, made once per job and shared by ONNX-based backends."""
        if self.onnx_source is not None:
            return self.onnx_source
        if self._onnx is None and self.onnx_fn is not None:
            self._onnx = self.onnx_fn()
        if self._onnx is None:
            from fleetbench.agent.onnx_export import export_onnx
            self._onnx = export_onnx(self.model, self.example, self.workdir / "onnx" / "model.onnx")
        return self._onnx


@dataclass
class Artifact:
    """The files a backend exported, and what its engine will compute in.

    Only `files`, `dtype`, `compute_dtype` and `notes` are kept in the node cache (agent/prepare.py);
    a backend whose artifact needs more (a live module, a TensorRT build record) is not cacheable and
    subclasses this with typed fields of its own.
    """

    files: list[Path]
    dtype: str = "fp32"                     # what the artifact asks the engine to compute in
    notes: list[str] = field(default_factory=list)   # what the export did (quantized layers, precision seen)
    compute_dtype: Optional[str] = None     # set when the export already knows what the engine computes in
    cache_hit: Optional[bool] = None        # set by a backend with a cache of its own (TensorRT engines)

    @property
    def main(self) -> Path:
        return self.files[0]


@dataclass(frozen=True)
class Engine:
    """A loaded model ready to run, built once and complete: `run(x)` takes a host float32 batch and
    returns host logits.

    `run` must be synchronous: when it returns, the computation is finished (GPU engines
    synchronise inside it), so timing a call times the work.
    """

    run: Callable[[np.ndarray], np.ndarray]
    dtype: str
    threads: Optional[int] = None
    provider: Optional[str] = None
    vram: Optional[Callable[[], Optional[float]]] = None   # peak device memory (MB) so far, if a GPU engine
    vram_source: Optional[str] = None
    close: Callable[[], None] = lambda: None
    notes: Callable[[], list[str]] = lambda: []             # engine-specific notes for the row (placement, VRAM)
    # GPU engines: given a host batch, a no-argument call that runs on inputs already on the device.
    prepare_device_run: Optional[Callable[[np.ndarray], Callable[[], object]]] = None
    # Throughput scenario, engines that drive themselves (Backend.throughput_driver "engine"): one timed window
    # (warm-up included) keeping `streams` requests in flight on this batch, the way the runtime is meant to
    # be driven (OpenVINO async infer requests, TensorRT execution contexts on their own CUDA streams).
    # None: the generic driver, concurrent `run` calls from threads (measure.throughput_window).
    throughput: Optional[Callable[[np.ndarray, "MeasureSpec"], "Window"]] = None
    streams: Optional[int] = None   # requests/contexts the engine's own throughput driver keeps in flight


class Backend(ABC):
    """What every backend is: declared capabilities (class attributes) and four required methods.

    Capabilities:
    - `name`: its registry name (shared.vocab.BackendName).
    - `precisions`: for every precision-level method of shared.vocab.METHODS, either the dtype the
      engine computes in (a str from shared.vocab.Dtype) or `Unsupported("why")`. Registration fails
      when a precision method is missing, so no method silently falls back to fp32.
    - `needs_model`: loads the model and evaluates quality (False only for the test-only null engine).
    - `cacheable`: its artifact is plain files, kept in the node's cache (agent/prepare.py) and timed in a
      fresh measuring process that imports only this backend's runtime (agent/measureproc.py).
    - `takes_onnx`: its artifact is made from the fp32 ONNX export (shared on the node by such backends).
    - `shares_batch(job)`: its artifact takes a dynamic batch axis, so one serves every batch size.
    """

    name: ClassVar[str]
    precisions: ClassVar[Mapping[str, Union[str, "Unsupported"]]]
    needs_model: ClassVar[bool] = True
    cacheable: ClassVar[bool] = True
    # How the throughput scenario keeps this backend's engine busy: "calls", concurrent `run` calls from
    # `streams` threads on CPU, each engine built with its share of the threads; "engine", the engine's own
    # driver (`Engine.throughput`) with all threads; None, not driven (an `unsupported` row).
    throughput_driver: ClassVar[Optional[Literal["calls", "engine"]]] = None
    takes_onnx: ClassVar[bool] = False

    def shares_batch(self, job: Job) -> bool:
        """Whether one artifact (dynamic batch axis) serves this job at every batch size."""
        return False

    @abstractmethod
    def probe(self) -> Availability:
        """Can this node run the backend at all, and on which devices? Never raises."""

    @abstractmethod
    def check(self, job: Job) -> Optional[str]:
        """Reason this job (device, source) cannot run here, or None. Compression is judged by
        `check_compression`, which reads `precisions` and may ask the device."""

    @abstractmethod
    def export(self, ctx: ExportContext) -> Artifact:
        """Write the artifact's files under ctx.workdir."""

    @abstractmethod
    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        """Build/compile and load the engine for the job's device."""

    def check_compression(self, job: Job) -> Optional[str]:
        """Reason this backend cannot apply the job's precision method on its device, or None."""
        declared = self.precisions.get(job.compression.method)
        return str(declared) if isinstance(declared, Unsupported) else None

    def check_throughput(self, job: Job) -> Optional[str]:
        """Reason this backend's engine cannot be driven in the throughput scenario on the job's device, or None."""
        if self.throughput_driver == "engine" or (self.throughput_driver == "calls" and job.device == "cpu"):
            return None
        how = "concurrent calls on cpu only" if self.throughput_driver == "calls" else "no throughput driver"
        return f"{self.name}:{job.device}: the throughput scenario cannot drive this engine ({how})"

    def hw_kind(self, device: str, node_kinds: Sequence[str]) -> str:
        """The hardware kind a row on `device` is filed under: an NVIDIA device is `nvidia`; a CPU row
        on an Intel node is `intel`; otherwise the node's most specific kind."""
        if device.startswith("cuda"):
            return HwKind.NVIDIA
        specific = [k for k in node_kinds if k != HwKind.CPU]
        if device != "cpu" and specific:
            return specific[0]
        return HwKind.INTEL if HwKind.INTEL in node_kinds else HwKind.CPU


def validate(cls: object) -> type[Backend]:
    """The registration check: a Backend subclass, no abstract method left, every capability declared."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a fleetbench Backend subclass")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"backend {cls.__name__}: missing required method(s) {', '.join(missing)}")
    if not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"backend {cls.__name__}: no `name` class attribute")
    table = getattr(cls, "precisions", None)
    if not isinstance(table, Mapping):
        raise TypeError(f"backend {cls.name}: no `precisions` class attribute")
    undeclared = [m for m in methods_at("precision") if m not in table]
    if undeclared:
        raise TypeError(f"backend {cls.name}: precision method(s) {', '.join(undeclared)} neither given a "
                        "dtype nor declared Unsupported in `precisions`")
    bad = {m: v for m, v in table.items() if not isinstance(v, Unsupported) and v not in set(Dtype)}
    if bad:
        raise TypeError(f"backend {cls.name}: precisions {bad} are not dtypes ({', '.join(Dtype)}) or Unsupported")
    return cls
