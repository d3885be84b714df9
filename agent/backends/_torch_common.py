"""Helpers shared by the PyTorch-based backends (eager and TorchScript)."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from fleetbench.shared.job import Job

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
    if job.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", job.device):
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

    in_dtype = dtype if dtype.is_floating_point else torch.float32

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(dev, dtype=in_dtype)
            out = fn(t)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)    # every stream, not only the one .cpu() waits on
            return out.float().cpu().numpy()

    def prepare_device_run(x: np.ndarray):
        """Input uploaded once; the returned call runs on it and synchronises (no host copies)."""
        with torch.inference_mode():
            t = torch.from_numpy(x).to(dev, dtype=in_dtype)
        torch.cuda.synchronize(dev)

        stream = torch.cuda.current_stream(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def device_run() -> float:
            """One run; its device time in seconds (CUDA events around it on the stream it runs on)."""
            start.record(stream)
            with torch.inference_mode():
                fn(t)
            end.record(stream)
            torch.cuda.synchronize(dev)
            return start.elapsed_time(end) / 1e3

        return device_run

    run.prepare_device_run = prepare_device_run if dev.type == "cuda" else None
    return run


def with_cuda_extras(engine, device: str):
    """On a CUDA device: device-resident timing and NVML per-process VRAM for a torch engine.

    The row's vram_peak_mb stays torch.cuda.max_memory_allocated (the allocator's view); NVML's view of the
    whole process (CUDA context and allocator pools included) goes into a note."""
    if not device.startswith("cuda"):
        return engine
    pin_ieee_fp32()
    from fleetbench.agent.gpu import ProcessVram, device_index
    nvml = ProcessVram(index=device_index(device))   # sampled when read: no thread in timed loops
    engine.prepare_device_run = getattr(engine.run, "prepare_device_run", None)
    close = engine.close

    def notes() -> list[str]:
        peak = nvml.peak()
        return [f"NVML process VRAM peak {peak:.1f} MB (vram_peak_mb is torch.cuda.max_memory_allocated)"
                if peak is not None else f"NVML process VRAM: {nvml.reason}",
                "TF32 off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False): "
                "fp32 rows compute in IEEE fp32"]

    def close_all() -> None:
        nvml.close()
        close()

    engine.notes, engine.close = notes, close_all
    return engine


def pin_ieee_fp32() -> None:
    """fp32 means IEEE fp32 on CUDA: cuDNN convolutions use TF32 by default on Ampere and later (matmuls do
    not, since torch 1.12); both switches off, for every torch CUDA row of this process."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def cuda_vram(device: str):
    """Peak bytes the caching allocator handed out on this device, in MB."""
    import torch
    if not device.startswith("cuda"):
        return None
    return lambda: torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
