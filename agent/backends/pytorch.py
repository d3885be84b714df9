"""PyTorch eager: the reference engine. The artifact is the state dict as safetensors."""
from __future__ import annotations

from typing import Optional

from agent.backends._torch_common import check_torch_job, cuda_vram, make_runner, set_threads, torch_devices
from agent.backends.base import Artifact, Availability, Engine, ExportContext
from shared.job import Job


class PytorchBackend:
    name = "pytorch"

    def probe(self) -> Availability:
        try:
            return Availability(True, devices=torch_devices())
        except ImportError as e:
            return Availability(False, f"pytorch: not installed ({e})")

    def check(self, job: Job) -> Optional[str]:
        return check_torch_job(job, self.name)

    def export(self, ctx: ExportContext) -> Artifact:
        from safetensors.torch import save_model
        path = ctx.workdir / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(ctx.model, str(path))
        return Artifact([path], dtype="fp32", meta={"module": ctx.model})

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        set_threads(threads)
        model = artifact.meta["module"].to(job.device)
        return Engine(run=make_runner(model, job.device), dtype=artifact.dtype, threads=threads,
                      provider=f"torch-eager:{job.device}", vram=cuda_vram(job.device),
                      vram_source="torch.cuda.max_memory_allocated" if job.device.startswith("cuda") else None)
