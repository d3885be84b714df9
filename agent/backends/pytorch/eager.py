"""PyTorch eager: the reference engine. The artifact is the state dict as safetensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetbench.agent.backends.base import Artifact, Availability, Engine, ExportContext
from fleetbench.agent.backends.pytorch.common import TorchBackend, set_threads, torch_devices, torch_engine, torch_precisions
from fleetbench.shared.job import Job


@dataclass
class ModuleArtifact(Artifact):
    module: Any = None   # the module itself: the eager engine runs it (so the artifact is not cacheable)


class PytorchBackend(TorchBackend):
    name = "pytorch"
    precisions = torch_precisions("pytorch")
    cacheable = False   # engine cache: the artifact is not only files (see agent/cache.py)

    def probe(self) -> Availability:
        try:
            return Availability(True, devices=torch_devices())
        except ImportError as e:
            return Availability(False, f"pytorch: not installed ({e})")

    def export(self, ctx: ExportContext) -> Artifact:
        from fleetbench.agent.backends.pytorch.variants import save_weights, torch_variant
        variant = torch_variant(ctx.model, ctx.job.compression.method)   # fp32, fp16, bf16 or dynamic int8
        path = save_weights(variant, ctx.workdir)   # safetensors (torch.save for quantized modules)
        return ModuleArtifact([path], dtype=variant.dtype, notes=list(variant.notes), module=variant.module)

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        assert isinstance(artifact, ModuleArtifact), "the eager engine runs the exported module itself"
        set_threads(threads)
        return torch_engine(artifact.module.to(job.device), artifact, job, threads, "torch-eager")
