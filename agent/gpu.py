"""NVIDIA GPUs through NVML (nvidia-ml-py). Never raises: no GPU or no library is an answer, not an error."""
from __future__ import annotations

import logging
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
