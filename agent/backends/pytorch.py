"""PyTorch eager: the reference engine. The artifact is the state dict as safetensors."""
from __future__ import annotations

from typing import Optional

from fleetbench.agent.backends._torch_common import (check_torch_job, cuda_vram, make_runner, set_threads, torch_devices,
                                           with_cuda_extras)
from fleetbench.agent.backends.base import Artifact, Availability, Engine, ExportContext
from fleetbench.shared.job import Job


class PytorchBackend:
    name = "pytorch"
    cacheable = False   # engine cache: the artifact is not only files (see agent/cache.py)

    def probe(self) -> Availability:
        try:
            return Availability(True, devices=torch_devices())
        except ImportError as e:
            return Availability(False, f"pytorch: not installed ({e})")

    def check(self, job: Job) -> Optional[str]:
        return check_torch_job(job, self.name)

    def export(self, ctx: ExportContext) -> Artifact:
        from fleetbench.agent.compress.torch_variants import save_weights, torch_variant
        variant = torch_variant(ctx.model, ctx.job.compression.method)   # fp32, fp16, bf16 or dynamic int8
        path = save_weights(variant, ctx.workdir)   # safetensors (torch.save for quantized modules)
        return Artifact([path], dtype=variant.dtype, meta={"module": variant.module, "notes": variant.notes})

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        set_threads(threads)
        model = artifact.meta["module"].to(job.device)
        engine = Engine(run=make_runner(model, job.device), dtype=artifact.dtype, threads=threads,
                        provider=f"torch-eager:{job.device}", vram=cuda_vram(job.device),
                        vram_source="torch.cuda.max_memory_allocated" if job.device.startswith("cuda") else None)
        return with_cuda_extras(engine, job.device)   # CUDA: device-resident timing, NVML VRAM note
