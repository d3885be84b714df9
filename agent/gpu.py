"""NVIDIA GPUs through NVML (nvidia-ml-py). Never raises: no GPU or no library is an answer, not an error."""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

log = logging.getLogger(__name__)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvidia_gpus() -> tuple[list[dict[str, Any]], Optional[str], Optional[str]]:
    """(gpus, driver version, reason when none): each GPU as index, name, uuid, memory_mb, compute capability."""
    try:
        import pynvml
    except ImportError:
        return [], None, "no NVIDIA GPU found (nvidia-ml-py not installed; pip install 'fleetbench[nvidia]')"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded...
        return [], None, f"no NVIDIA GPU found (NVML: {e})"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append({"index": i, "name": _text(pynvml.nvmlDeviceGetName(h)),
                         "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                         "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20,
                         "compute_capability": f"{major}.{minor}"})
        return gpus, driver, None if gpus else "no NVIDIA GPU found (NVML reports 0 devices)"
    except Exception as e:
        return [], None, f"no NVIDIA GPU found (NVML: {e})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvidia_gpu(index: int = 0) -> tuple[Optional[dict[str, Any]], Optional[str], Optional[str]]:
    """(the GPU at `index`, driver version, reason when there is none)."""
    gpus, driver, reason = nvidia_gpus()
    for g in gpus:
        if g["index"] == index:
            return g, driver, None
    return None, driver, reason or f"no NVIDIA GPU with index {index} (NVML reports {len(gpus)})"


def device_index(device: str) -> int:
    """The GPU index of a device name: cuda -> 0, cuda:1 -> 1 (other names: 0)."""
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0


def _process_mb(pynvml: Any, handle: Any, pid: int) -> Optional[float]:
    """Memory `pid` holds on one GPU (MB), None when NVML does not list it or cannot say."""
    used = None
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:   # None: NVML_VALUE_NOT_AVAILABLE
            used = (used or 0.0) + proc.usedGpuMemory / 2**20
    return used


class ProcessVram:
    """This process's own GPU memory as NVML reports it (nvmlDeviceGetComputeRunningProcesses).

    Counts everything the process holds on the GPU: CUDA context, allocator pools, TensorRT activation
    memory. `sample()` reads it now; `start()` samples from a thread every `interval_s` and keeps the peak.
    NVML lists host PIDs: inside a PID namespace (a container without --pid=host) the process is not
    found and every figure is None. Never raises.
    """

    def __init__(self, index: Optional[int] = None, pid: Optional[int] = None, interval_s: float = 0.02):
        self.pid = os.getpid() if pid is None else pid
        self.index, self.interval_s = index, interval_s
        self.peak_mb: Optional[float] = None
        self.reason: Optional[str] = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._open()

    def _open(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as e:
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})"
            return
        try:
            n = pynvml.nvmlDeviceGetCount()
            idx = range(n) if self.index is None else [self.index]
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in idx]
            self._nvml = pynvml
        except Exception as e:
            self.reason = f"NVML: {e}"
            _shutdown(pynvml)

    def sample(self) -> Optional[float]:
        """MB this process holds now (summed over the watched GPUs); updates the peak."""
        if self._nvml is None:
            return None
        try:
            parts = [_process_mb(self._nvml, h, self.pid) for h in self._handles]
        except Exception as e:
            self.reason = f"NVML: {e}"
            return None
        seen = [p for p in parts if p is not None]
        if not seen:
            self.reason = f"NVML lists no memory for pid {self.pid}"
            return None
        now = sum(seen)
        self.peak_mb = now if self.peak_mb is None else max(self.peak_mb, now)
        return now

    def peak(self) -> Optional[float]:
        """The peak so far, after one more sample."""
        self.sample()
        return self.peak_mb

    def start(self) -> "ProcessVram":
        if self._nvml is None or self._thread is not None:
            return self
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, name="nvml-vram", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._nvml is not None:
            self.sample()
            _shutdown(self._nvml)
            self._nvml = None

    def __enter__(self) -> "ProcessVram":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def process_vram_mb(index: Optional[int] = None, pid: Optional[int] = None) -> Optional[float]:
    """MB that `pid` (default: this process) holds on GPU `index` (default: all), or None."""
    watch = ProcessVram(index=index, pid=pid)
    try:
        return watch.sample()
    finally:
        watch.close()


def _shutdown(pynvml: Any) -> None:
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass
