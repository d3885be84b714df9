"""OpenVINO: ONNX converted to OpenVINO IR (xml + bin), compiled for a device with its precision pinned."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext
from fleetbench.agent.backends.openvino.variants import INT8_DYNAMIC
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import HwKind

# What an OpenVINO inference precision hint means in our dtype words, and back.
OV_PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8"}


class OpenVinoBackend(Backend):
    name = "openvino"
    # fp16 and bf16 also need the device to list them in OPTIMIZATION_CAPABILITIES (check_compression)
    precisions = {"fp16": "fp16", "bf16": "bf16", "int8-dynamic": Unsupported(INT8_DYNAMIC), "int8-static": "int8"}
    throughput_driver = "engine"   # async infer requests with the THROUGHPUT hint (openvino/throughput.py)
    takes_onnx = True

    def shares_batch(self, job: Job) -> bool:
        return True   # the IR keeps a dynamic batch axis; load() reshapes it to the job's batch size

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

    def check_compression(self, job: Job) -> Optional[str]:
        from fleetbench.agent.backends.openvino.variants import check
        return check(job.compression.method, job.device)

    def hw_kind(self, device: str, node_kinds: Sequence[str]) -> str:
        return HwKind.INTEL if HwKind.INTEL in node_kinds else super().hw_kind(device, node_kinds)

    def export(self, ctx: ExportContext) -> Artifact:
        import openvino as ov
        xml = ctx.workdir / "openvino" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        from fleetbench.agent.backends.openvino.variants import openvino_variant
        variant = openvino_variant(ctx)   # fp32 IR, fp16 weights, or NNCF int8, as the job's compression calls for
        # save_model compresses weights to fp16 by default: an fp32 artifact must stay fp32.
        ov.save_model(variant.model, str(xml), compress_to_fp16=variant.compress_to_fp16)
        # int8-static: int8 layers, the f32 hint pins the rest; the census already said what it computes in
        compute = variant.dtype if ctx.job.compression.method == "int8-static" else None
        return Artifact([xml, xml.with_suffix(".bin")], dtype=variant.dtype, notes=list(variant.notes),
                        compute_dtype=compute)

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import openvino as ov

        from fleetbench.agent.backends.openvino.throughput import AsyncDriver, hint_config
        core = ov.Core()
        device = job.device.upper()
        supported = _supported_properties(core, device)
        config = {k: v for k, v in {**hint_config(job), "INFERENCE_PRECISION_HINT": _hint(artifact.dtype)}.items()
                  if supported is None or k in supported}   # an NPU plugin may not take every property
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(threads)
        model = core.read_model(str(artifact.main))
        if model.inputs[0].get_partial_shape().is_dynamic:   # a shared IR: compile it static, at this batch size
            model.reshape({model.inputs[0]: [job.batch_size, *job.model.input_size]})
        compiled = core.compile_model(model, device, config)
        real = _compiled_precision(compiled, device, artifact.dtype)
        request = compiled.create_infer_request()
        inp = request.get_input_tensor(0)

        def run(x: np.ndarray) -> np.ndarray:
            # Copy into the request's own input tensor and infer without arguments: infer({0: x}) adds
            # ~25 us per call in Python (a wrapping tensor and a dict of copied outputs).
            inp.data[...] = x
            request.infer()
            return request.get_output_tensor(0).data.copy()

        driver = None
        if job.scenario == "throughput":
            requests = job.measure.streams or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            driver = AsyncDriver(ov, compiled, requests)
        notes = [driver.note(pinned=bool(job.measure.streams))] if driver is not None else []
        return Engine(run=run, dtype=artifact.compute_dtype or real, threads=threads if device == "CPU" else None,
                      provider=f"openvino:{device}", notes=lambda: notes,
                      throughput=driver.window if driver is not None else None,
                      streams=len(driver.requests) if driver is not None else None)


def _supported_properties(core, device: str):
    """The property names a device takes, or None when the plugin cannot say."""
    try:
        return set(map(str, core.get_property(device, "SUPPORTED_PROPERTIES")))
    except Exception:
        return None


def _compiled_precision(compiled, device: str, fallback: str) -> str:
    """The precision the compiled model really runs in (an NPU that does not report it computes fp16)."""
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return OV_PRECISION.get(hint.get_type_name(), hint.get_type_name())
    except Exception:
        return "fp16" if device.startswith("NPU") else fallback


def _hint(dtype: str) -> str:
    """The precision hint for an artifact's dtype: fp32 must mean f32 (bf16 is the default on AVX-512 BF16)."""
    return {"fp16": "f16", "bf16": "bf16"}.get(dtype, "f32")
