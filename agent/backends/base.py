"""The one small protocol every backend implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from fleetbench.shared.job import Job


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
    _onnx: Optional[Path] = None

    def onnx(self) -> Path:
        """The fp32 ONNX export of the model, made once per job and shared by ONNX-based backends."""
        if self.onnx_source is not None:
            return self.onnx_source
        if self._onnx is None:
            from fleetbench.agent.onnx_export import export_onnx
            self._onnx = export_onnx(self.model, self.example, self.workdir / "onnx" / "model.onnx")
        return self._onnx


@dataclass
class Artifact:
    """The files a backend exported, and what its engine will compute in."""

    files: list[Path]
    dtype: str = "fp32"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Path:
        return self.files[0]


@dataclass
class Engine:
    """A loaded model ready to run: `run(x)` takes a host float32 batch and returns host logits.

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


class Backend(Protocol):
    name: str

    def probe(self) -> Availability:
        """Can this node run the backend at all, and on which devices? Never raises."""

    def check(self, job: Job) -> Optional[str]:
        """Reason this job (compression, device, source) cannot run here, or None."""

    def export(self, ctx: ExportContext) -> Artifact:
        """Write the artifact's files under ctx.workdir."""

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        """Build/compile and load the engine for the job's device."""
