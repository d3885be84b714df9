"""OpenVINO: ONNX converted to OpenVINO IR (xml + bin), compiled for a device with its precision pinned."""
from __future__ import annotations

from typing import Optional

import numpy as np

from agent.backends.base import Artifact, Availability, Engine, ExportContext
from shared.job import Job

# What an OpenVINO inference precision hint means in our dtype words, and back.
OV_PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8"}


class OpenVinoBackend:
    name = "openvino"

    def probe(self) -> Availability:
        try:
            import openvino as ov
            devices = ov.Core().available_devices
        except ImportError as e:
            return Availability(False, f"openvino: not installed ({e}); pip install 'fleetbench[intel]'")
        except Exception as e:  # a broken plugin must not break the probe
            return Availability(False, f"openvino: runtime failed to start ({type(e).__name__}: {e})")
        return Availability(True, devices=tuple(d.lower() for d in devices))

    def check(self, job: Job) -> Optional[str]:
        return None

    def export(self, ctx: ExportContext) -> Artifact:
        import openvino as ov
        xml = ctx.workdir / "openvino" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        model = ov.convert_model(str(ctx.onnx()))
        # save_model compresses weights to fp16 by default: an fp32 artifact must stay fp32.
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return Artifact([xml, xml.with_suffix(".bin")], dtype="fp32")

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import openvino as ov
        core = ov.Core()
        device = job.device.upper()
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_PRECISION_HINT": _hint(artifact.dtype)}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = core.compile_model(str(artifact.main), device, config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        real = OV_PRECISION.get(hint.get_type_name(), hint.get_type_name())
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

        return Engine(run=run, dtype=artifact.meta.get("compute_dtype", real), threads=threads if device == "CPU" else None,
                      provider=f"openvino:{device}")


def _hint(dtype: str) -> str:
    """The precision hint for an artifact's dtype: fp32 must mean f32 (bf16 is the default on AVX-512 BF16)."""
    return {"fp16": "f16", "bf16": "bf16"}.get(dtype, "f32")
