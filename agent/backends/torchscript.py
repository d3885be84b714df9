"""TorchScript: a traced, frozen module saved to .pt and loaded back with torch.jit.load."""
from __future__ import annotations

import warnings
from typing import Optional

from fleetbench.agent.backends._torch_common import (check_torch_job, cuda_vram, make_runner, set_threads, torch_devices,
                                           with_cuda_extras)
from fleetbench.agent.backends.base import Artifact, Availability, Engine, ExportContext
from fleetbench.shared.job import Job


class TorchScriptBackend:
    name = "torchscript"

    def probe(self) -> Availability:
        try:
            import torch
            if not hasattr(torch.jit, "trace"):
                return Availability(False, "torchscript: this PyTorch has no torch.jit.trace")
            return Availability(True, devices=torch_devices())
        except ImportError as e:
            return Availability(False, f"torchscript: pytorch not installed ({e})")

    def check(self, job: Job) -> Optional[str]:
        return check_torch_job(job, self.name)

    def export(self, ctx: ExportContext) -> Artifact:
        import torch
        path = ctx.workdir / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        from fleetbench.agent.compress.torch_variants import cast_io, torch_variant
        variant = torch_variant(ctx.model, ctx.job.compression.method)   # fp32, fp16, bf16 or dynamic int8
        module = variant.module if variant.param_dtype is None else cast_io(variant.module, variant.param_dtype)
        example = torch.from_numpy(ctx.example)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # TorchScript is deprecated, still measured
            traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
        return Artifact([path], dtype=variant.dtype, meta={"notes": variant.notes})

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import torch
        set_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.freeze(torch.jit.load(str(artifact.main), map_location=job.device).eval())
        engine = Engine(run=make_runner(module, job.device), dtype=artifact.dtype, threads=threads,
                        provider=f"torchscript:{job.device}", vram=cuda_vram(job.device),
                        vram_source="torch.cuda.max_memory_allocated" if job.device.startswith("cuda") else None)
        return with_cuda_extras(engine, job.device)   # CUDA: device-resident timing, NVML VRAM note
