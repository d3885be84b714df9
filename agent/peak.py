"""How close to the limit: the model's FLOPs per item, and this node's measured GEMM peak per dtype.

FLOPs come from torch.utils.flop_counter over the fp32 reference pass the runner makes anyway, per item (a
multiply-add counts 2). The peak is the best rate of a square matrix multiply in PyTorch with the
job's threads, on the job's device, for the dtype the engine computes in (fp32, bf16, fp16, int8
where PyTorch has the kernel); it is kept per node in $FLEETBENCH_CACHE/peaks.json, but only when
the probe's own window was quiet (other processes under `max_other_cpu_cores`): a peak measured
on a busy machine is used for that row, noted, and measured again next time.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from fleetbench.agent import validity

log = logging.getLogger(__name__)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def model_flops(model: Any, input_size: tuple[int, ...]) -> Optional[float]:
    """FLOPs of one item through `model` (a torch module), or None where it cannot be counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(torch.zeros((1, *input_size), dtype=torch.float32))
        return float(counter.get_total_flops()) or None
    except Exception as e:   # a model the counter cannot trace: no figure, never a failed job
        log.warning("FLOP count failed: %s", e)
        return None


def gemm_gflops(dtype: str, threads: int, device: str = "cpu", n: int = 1024, seconds: float = 0.5) -> float:
    """Best GFLOP/s of an n x n matrix multiply over a few short runs (2 n^3 FLOPs each)."""
    import torch
    torch.set_num_threads(threads)
    dev = device if device.startswith("cuda") else "cpu"   # cuda:1 is timed on cuda:1, not on device 0
    if dtype == "int8":
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=dev)
        mm = lambda: torch._int_mm(a, a)   # noqa: E731
    else:
        a = torch.randn(n, n, device=dev).to(getattr(torch, DTYPES[dtype]))
        mm = lambda: a @ a   # noqa: E731
    sync = (lambda: torch.cuda.synchronize(dev)) if dev != "cpu" else (lambda: None)
    mm()
    sync()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(3):
            mm()
        sync()
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def _cache_file() -> Path:
    base = os.environ.get("FLEETBENCH_CACHE") or Path.home() / ".cache" / "fleetbench"
    return Path(base).expanduser() / "peaks.json"


def node_peak(dtype: str, threads: int, device: str, max_other_cores: float) -> tuple[Optional[float], list[str]]:
    """(peak GFLOP/s, notes) for this node, dtype, thread count and device: cached, else probed."""
    if dtype not in DTYPES:
        return None, [f"peak: no GEMM probe for dtype {dtype}"]
    import hashlib

    from fleetbench.agent.cache import fingerprint
    node = hashlib.sha256(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
    key = f"{node}|{_device_key(device)}|{dtype}|{threads}"
    path = _cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key]), []
    before = validity.read_cpu()
    try:
        peak = gemm_gflops(dtype, threads, device)
    except Exception as e:   # no such kernel on this device (int8 on some CPUs): no figure
        return None, [f"peak: {dtype} GEMM probe failed ({type(e).__name__})"]
    after = validity.read_cpu()
    busy = validity.interference(before, after) if before and after else None
    if busy is not None and busy.other_cpu_cores > max_other_cores:
        return peak, [f"peak: GEMM probe disturbed (other processes used {busy.other_cpu_cores:.2f} cores); not cached"]
    known[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    except OSError as e:
        log.warning("cannot cache the GEMM peak in %s: %s", path, e)
    return peak, []


def _device_key(device: str) -> str:
    """The cache's name for a device: a GPU by its UUID where NVML knows it (cuda:1 is another GPU when
    CUDA_VISIBLE_DEVICES changes), else the device name."""
    if not device.startswith("cuda"):
        return device
    from fleetbench.agent.gpu import device_index, nvidia_gpu
    gpu, _, _ = nvidia_gpu(device_index(device))
    return f"{device}:{gpu['uuid']}" if gpu and gpu.get("uuid") else device
