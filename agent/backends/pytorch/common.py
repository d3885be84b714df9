"""Helpers shared by the PyTorch-based backends (eager and TorchScript)."""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

import numpy as np

from fleetbench.agent.backends.base import Artifact, Backend, Engine
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job

_INT8_STATIC = ("{b}: int8-static (PyTorch PT2E / torchao static quantization) is not implemented in "
                "fleetbench; run int8-static on onnxruntime or openvino")


def torch_precisions(name: str) -> dict[str, Union[str, Unsupported]]:
    """What the torch engines do with each precision method (int8-dynamic: Linear layers only)."""
    return {"fp16": "fp16", "bf16": "bf16", "int8-dynamic": "int8",
            "int8-static": Unsupported(_INT8_STATIC.format(b=name))}


class TorchBackend(Backend):
    """What the eager and TorchScript engines share: devices and the checks of a job."""

    throughput_driver = "calls"   # modules take concurrent calls in inference mode: one per stream

    def check(self, job: Job) -> Optional[str]:
        if job.model.scheme == "onnx":
            return f"{self.name}: an onnx: model has no PyTorch module to run"
        if job.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", job.device):
            return f"{self.name}: no device {job.device!r} (valid: cpu, cuda[:N])"
        return None

    def check_compression(self, job: Job) -> Optional[str]:
        if job.compression.method == "int8-dynamic" and job.device != "cpu":
            return (f"{self.name}: int8-dynamic kernels (torch.ao dynamic quantization) run on CPU only, "
                    f"not {job.device}")
        return super().check_compression(job)


def torch_devices() -> tuple[str, ...]:
    import torch
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    return tuple(devs)


def set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def torch_engine(fn: Any, artifact: Artifact, job: Job, threads: int, kind: str) -> Engine:
    """The engine of a torch callable on the job's device. On CUDA: device-resident timing, and NVML's
    per-process VRAM in a note (the row's vram_peak_mb stays torch.cuda.max_memory_allocated, the
    allocator's view; NVML sees the whole process, CUDA context and allocator pools included)."""
    device = job.device
    run, prepare = make_runner(fn, device)
    provider = f"{kind}:{device}"
    if not device.startswith("cuda"):
        return Engine(run=run, dtype=artifact.dtype, threads=threads, provider=provider)
    import torch
    pin_ieee_fp32()

    from fleetbench.agent.gpu import ProcessVram, device_index
    nvml = ProcessVram(index=device_index(device))   # sampled when read: no thread in timed loops

    def notes() -> list[str]:
        peak = nvml.peak()
        return [f"NVML process VRAM peak {peak:.1f} MB (vram_peak_mb is torch.cuda.max_memory_allocated)"
                if peak is not None else f"NVML process VRAM: {nvml.reason}",
                "TF32 off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False): "
                "fp32 rows compute in IEEE fp32"]

    return Engine(run=run, dtype=artifact.dtype, threads=threads, provider=provider,
                  vram=lambda: torch.cuda.max_memory_allocated(torch.device(device)) / 2**20,
                  vram_source="torch.cuda.max_memory_allocated", close=nvml.close, notes=notes,
                  prepare_device_run=prepare)


def pin_ieee_fp32() -> None:
    """fp32 means IEEE fp32 on CUDA: cuDNN convolutions use TF32 by default on Ampere and later (matmuls do
    not, since torch 1.12); both switches off, for every torch CUDA row of this process."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def make_runner(fn, device: str) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[Callable]]:
    """Wrap a torch callable as host-numpy-in, host-numpy-out (synchronous on CUDA), and on CUDA a
    `prepare_device_run` for timing on inputs already on the device."""
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

    return run, (prepare_device_run if dev.type == "cuda" else None)
