"""TorchScript: a traced, frozen module saved to .pt and loaded back with torch.jit.load."""
from __future__ import annotations

import warnings

from fleetbench.agent.backends.base import Artifact, Availability, Engine, ExportContext
from fleetbench.agent.backends.pytorch.common import TorchBackend, set_threads, torch_devices, torch_engine, torch_precisions
from fleetbench.shared.job import Job


class TorchScriptBackend(TorchBackend):
    name = "torchscript"
    precisions = torch_precisions("torchscript")

    def probe(self) -> Availability:
        try:
            import torch
            if not hasattr(torch.jit, "trace"):
                return Availability(False, "torchscript: this PyTorch has no torch.jit.trace")
            return Availability(True, devices=torch_devices())
        except ImportError as e:
            return Availability(False, f"torchscript: pytorch not installed ({e})")

    def export(self, ctx: ExportContext) -> Artifact:
        import torch
        path = ctx.workdir / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        from fleetbench.agent.backends.pytorch.variants import cast_io, torch_variant
        variant = torch_variant(ctx.model, ctx.job.compression.method)   # fp32, fp16, bf16 or dynamic int8
        module = variant.module if variant.param_dtype is None else cast_io(variant.module, variant.param_dtype)
        example = torch.from_numpy(ctx.example)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # TorchScript is deprecated, still measured
            traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
        return Artifact([path], dtype=variant.dtype, notes=list(variant.notes))

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import torch
        set_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.freeze(torch.jit.load(str(artifact.main), map_location=job.device).eval())
        return torch_engine(module, artifact, job, threads, "torchscript")
