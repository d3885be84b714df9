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
    """(CUDA device `index` as NVML describes it, driver version, reason when there is none).
    CUDA numbers the devices CUDA_VISIBLE_DEVICES lets it see; NVML numbers every GPU: see cuda_to_nvml."""
    gpus, driver, reason = nvidia_gpus()
    try:
        kind, key = cuda_to_nvml(index, cuda_uuid=_torch_cuda_uuid(index))
    except ValueError as e:
        return None, driver, str(e)
    for g in gpus:
        if g["uuid" if kind == "uuid" else "index"] == key:
            return g, driver, None
    return None, driver, reason or f"no NVIDIA GPU for CUDA device {index} (NVML {kind} {key}; NVML reports {len(gpus)})"


def device_index(device: str) -> int:
    """The GPU index of a device name: cuda -> 0, cuda:1 -> 1 (other names: 0)."""
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0


def cuda_to_nvml(cuda_index: int, visible: Optional[str] = None, cuda_uuid: Optional[str] = None) -> tuple[str, Any]:
    """How to find CUDA device `cuda_index` in NVML, which numbers GPUs physically and ignores
    CUDA_VISIBLE_DEVICES: ('uuid', 'GPU-...') when the CUDA runtime or CUDA_VISIBLE_DEVICES names the
    device's UUID, else ('index', the NVML index CUDA_VISIBLE_DEVICES maps it to)."""
    if cuda_uuid:
        return "uuid", cuda_uuid if cuda_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{cuda_uuid}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None or not visible.strip():
        return "index", cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise ValueError(f"CUDA device {cuda_index} is not visible (CUDA_VISIBLE_DEVICES={visible})")
    entry = entries[cuda_index]
    if entry.startswith(("GPU-", "MIG-")):
        return "uuid", entry
    if entry.isdigit():
        return "index", int(entry)
    raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r} is neither an index nor a UUID")


def _torch_cuda_uuid(cuda_index: int) -> Optional[str]:
    """The UUID the CUDA runtime gives device `cuda_index`, if torch is imported and CUDA is up."""
    import sys
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return str(torch.cuda.get_device_properties(cuda_index).uuid)
    except Exception:
        pass
    return None


def nvml_handle(pynvml: Any, cuda_index: int) -> Any:
    """The NVML handle of CUDA device `cuda_index` (by UUID where known, honouring CUDA_VISIBLE_DEVICES)."""
    kind, key = cuda_to_nvml(cuda_index, cuda_uuid=_torch_cuda_uuid(cuda_index))
    if kind == "uuid":
        return pynvml.nvmlDeviceGetHandleByUUID(key)
    return pynvml.nvmlDeviceGetHandleByIndex(key)


def _process_mb(pynvml: Any, handle: Any, pid: int) -> Optional[float]:
    """Memory `pid` holds on one GPU (MB), None when NVML does not list it or cannot say."""
    used = None
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:   # None: NVML_VALUE_NOT_AVAILABLE
            used = (used or 0.0) + proc.usedGpuMemory / 2**20
    return used


class ProcessVram:
    """This process's own GPU memory as NVML reports it, with a fallback where NVML cannot say.

    `source` names the figure: 'nvml-process' (nvmlDeviceGetComputeRunningProcesses: everything the process
    holds: CUDA context, allocator pools, TensorRT activation memory) or, where NVML lists no entry for this
    process (a container without the host PID namespace sees none), 'nvml-device-delta': the device's used
    memory minus what was used when the watch started (other processes' allocations meanwhile count too).
    `index` is a CUDA device index (mapped to NVML by UUID / CUDA_VISIBLE_DEVICES); None watches every GPU.
    `sample()` reads it now; `start()` samples from a thread every `interval_s` and keeps the peak. Never raises.
    """

    def __init__(self, index: Optional[int] = None, pid: Optional[int] = None, interval_s: float = 0.02):
        self.pid = os.getpid() if pid is None else pid
        self.index, self.interval_s = index, interval_s
        self.peak_mb: Optional[float] = None
        self.source: Optional[str] = None
        self.reason: Optional[str] = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._baseline: list[float] = []
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
            if self.index is None:
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            else:
                self._handles = [nvml_handle(pynvml, self.index)]
            self._baseline = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in self._handles]
            self._nvml = pynvml
        except Exception as e:
            self.reason = f"NVML: {e}"
            nvml_shutdown(pynvml)

    def sample(self) -> Optional[float]:
        """MB this process holds now (summed over the watched GPUs); updates the peak."""
        if self._nvml is None:
            return None
        try:
            parts = [_process_mb(self._nvml, h, self.pid) for h in self._handles]
            seen = [p for p in parts if p is not None]
            if seen:
                now, source = sum(seen), "nvml-process"
            else:
                used = [self._nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in self._handles]
                now, source = max(0.0, sum(used) - sum(self._baseline)), "nvml-device-delta"
                self.reason = f"NVML lists no memory for pid {self.pid}; device used memory minus the start's"
        except Exception as e:
            self.reason = f"NVML: {e}"
            return None
        if self.source is not None and source != self.source:
            self.peak_mb = None   # never mix the two figures in one peak
        self.source = source
        self.peak_mb = now if self.peak_mb is None else max(self.peak_mb, now)
        return now

    def peak(self) -> Optional[float]:
        """The peak so far, after one more sample."""
        self.sample()
        return self.peak_mb

    def bind(self, engine: Any) -> Any:
        """Make `engine.vram()` return this peak and set `engine.vram_source` to the figure it is."""
        def vram() -> Optional[float]:
            peak = self.peak()
            engine.vram_source = self.source if peak is not None else None
            return peak
        engine.vram = vram
        return engine

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
            nvml_shutdown(self._nvml)
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


def nvml_shutdown(pynvml: Any) -> None:
    """Shut NVML down; never raises (a close must not fail a row)."""
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass
