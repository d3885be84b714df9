"""The OpenVINO model a job's compression calls for: IR weights, compute precision, NNCF int8."""
from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from fleetbench.agent.backends.precision import calibration_batches, describe, majority_dtype
from fleetbench.shared.errors import Unsupported

log = logging.getLogger(__name__)

# Precision words -> the OPTIMIZATION_CAPABILITIES entry a device must list to compute in them.
CAPABILITY = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}
# Runtime layer types whose precision says what the network computes in.
_COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"}
_RUNTIME_DTYPES = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}


@dataclass
class OvVariant:
    model: Any                      # openvino.Model to save
    dtype: str                      # what the engine computes in (sets the precision hint)
    compress_to_fp16: bool = False  # store IR weights as fp16
    notes: list[str] = field(default_factory=list)


def device_capabilities(device: str) -> Optional[list[str]]:
    """OPTIMIZATION_CAPABILITIES of an OpenVINO device, or None if it cannot be asked."""
    try:
        import openvino as ov
        return list(ov.Core().get_property(device.upper(), "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # any failure: no such device, no plugin: the probe reports that
        return None


INT8_DYNAMIC = ("openvino: int8-dynamic has no OpenVINO counterpart for this network: OpenVINO's run-time "
                "dynamic quantization only covers FullyConnected layers of weight-compressed (LLM) models; "
                "use int8-static (NNCF)")


def check(method: str, device: str) -> Optional[str]:
    """Reason OpenVINO cannot do `method` on `device` (asked of the device), or None."""
    if method == "int8-dynamic":
        return INT8_DYNAMIC
    if method in ("fp16", "bf16"):
        caps = device_capabilities(device)
        need = CAPABILITY[method]
        if caps is not None and need not in caps:
            extra = " (an f16 precision hint there silently runs bf16)" if method == "fp16" and "BF16" in caps else ""
            return (f"openvino: {device.upper()} cannot compute in {method}: OPTIMIZATION_CAPABILITIES "
                    f"lists {', '.join(caps)}{extra}")
    if method == "int8-static":
        try:
            import nncf  # noqa: F401
        except ImportError as e:
            return f"openvino: int8-static needs NNCF ({e}); pip install 'fleetbench[intel]'"
    return None


def openvino_variant(ctx) -> OvVariant:
    """Convert the job's ONNX export to an OpenVINO model in the precision its compression calls for."""
    import openvino as ov
    method = ctx.job.compression.method
    model = ov.convert_model(str(ctx.onnx()))
    if method == "fp16":
        return OvVariant(model, "fp16", True, ["IR weights stored fp16; INFERENCE_PRECISION_HINT=f16"])
    if method == "bf16":
        return OvVariant(model, "bf16", False, ["IR weights stored fp32; INFERENCE_PRECISION_HINT=bf16"])
    if method == "int8-static":
        return _nncf_int8(model, ctx)
    if method == "int8-dynamic":
        raise Unsupported(check(method, ctx.job.device))
    return OvVariant(model, "fp32")


def _nncf_int8(model, ctx) -> OvVariant:
    import nncf
    nncf.set_log_level(logging.WARNING)
    shape = model.inputs[0].get_partial_shape()
    bs = shape[0].get_length() if shape[0].is_static else len(ctx.example)
    batches = calibration_batches(ctx.calib_x, bs)
    with contextlib.redirect_stdout(io.StringIO()):   # NNCF draws progress bars on stdout
        q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                          preset=nncf.QuantizationPreset.PERFORMANCE)
    n_fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
    note = (f"int8-static (NNCF quantize, {sum(len(b) for b in batches)} calibration images, "
            f"performance preset): {n_fq} FakeQuantize")
    counts = runtime_precisions(q, ctx.job.device)
    dtype = majority_dtype(counts) if counts else "int8"
    notes = [note] + ([f"OpenVINO {ctx.job.device.upper()} runs conv/matmul layers as: {describe(counts)}"]
                      if counts else [])
    return OvVariant(q, dtype, False, notes)


def runtime_precisions(model, device: str) -> Counter:
    """Conv/matmul layers per runtime precision once compiled for `device` with an f32 hint
    (quantized layers run int8; the hint only pins what is not quantized)."""
    import openvino as ov
    try:
        compiled = ov.Core().compile_model(model, device.upper(), {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as e:  # any failure: the engine build reports a real failure later
        log.warning("could not compile for a precision census: %s", e)
        return Counter()
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in _COMPUTE_LAYERS:
            continue
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "f32"
        counts[_RUNTIME_DTYPES.get(prec.lower(), prec.lower())] += 1
    return counts
