"""Helpers shared by the PyTorch-based backends (eager and TorchScript)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from shared.job import Job

TORCH_DTYPES = {"none": "fp32", "fp16": "fp16", "bf16": "bf16"}


def torch_devices() -> tuple[str, ...]:
    import torch
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    return tuple(devs)


def check_torch_job(job: Job, name: str) -> Optional[str]:
    if job.model.scheme == "onnx":
        return f"{name}: an onnx: model has no PyTorch module to run"
    if job.device not in ("cpu",) and not job.device.startswith("cuda"):
        return f"{name}: no device {job.device!r} (valid: cpu, cuda[:N])"
    return None


def set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def make_runner(fn, device: str):
    """Wrap a torch callable as host-numpy-in, host-numpy-out; synchronous on CUDA."""
    import torch

    dev = torch.device(device)
    dtype = next((p.dtype for p in getattr(fn, "parameters", lambda: iter(()))()), torch.float32)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(dev, dtype=dtype if dtype.is_floating_point else torch.float32)
            out = fn(t)
            return out.float().cpu().numpy()   # .cpu() waits for the device: the call is synchronous

    return run


def cuda_vram(device: str):
    """Peak bytes the caching allocator handed out on this device, in MB."""
    import torch
    if not device.startswith("cuda"):
        return None
    return lambda: torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
