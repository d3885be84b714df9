"""The ONNX graph a job's compression calls for: ONNX Runtime's variants (TensorRT builds from the same graphs).

- none / prune* / cluster: the fp32 export (`ctx.onnx()`); the weights were changed at torch level.
- fp16: the fp32 graph converted to float16, inputs and outputs kept float32.
- int8-static: QDQ graph from ORT `quantize_static`, calibrated on `ctx.calib_x`, in the form the engine
  needs (`int8_form`):
  * `ort-cpu` (ONNX Runtime CPU, and its CUDA EP): unsigned asymmetric activations (uint8, the full range
    after ReLU), signed symmetric per-channel weights limited to 7 bits. x86 int8 kernels without VNNI
    (AVX2, AVX-512F/BW) multiply uint8 x int8 pairs with VPMADDUBSW, which saturates at int16; with
    |w| <= 64 a pair sums to at most 2 * 255 * 64 = 32640, so no CPU saturates and every x86 CPU
    computes the same integers as a VNNI one.
  * `tensorrt` (native TensorRT and ORT's TensorRT EP): symmetric int8 activations and per-channel
    weights, biases left float (`QuantizeBias: False`), the explicit-quantization form TensorRT parses.
- int8-dynamic: ORT `quantize_dynamic` (ConvInteger/MatMulInteger with run-time activation scales).
- bf16: not an ONNX variant (raises Unsupported).

Each variant is written once per job under ctx.workdir/onnx-<method>/, with a variant.json beside it.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetbench.agent.backends.precision import calibration_batches, describe, majority_dtype
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.vocab import METHODS

if TYPE_CHECKING:
    from fleetbench.agent.backends.base import ExportContext

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1 << 30    # write weights beside the graph above this (protobuf's limit is 2 GB)
ONNX_METHODS = ("fp16", "int8-static", "int8-dynamic")   # precision methods with an ONNX graph of their own

# Compute layers in an ORT graph (after its optimizer), by how their precision is known.
_INT8_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM"}
_FLOAT_OPS = {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NhwcFusedConv"}
_ONNX_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8", 2: "int8"}


@dataclass
class OnnxVariant:
    path: Path
    dtype: str                       # what the graph asks the engine to compute in
    files: list[Path]                # every file of the variant (graph and external data)
    notes: list[str] = field(default_factory=list)


def onnx_files(path: Path) -> list[Path]:
    """The ONNX file and its external-data file(s) beside it."""
    return [path] + sorted(p for p in path.parent.glob(path.name + ".data*") if p.is_file())


def onnx_variant(ctx: "ExportContext") -> OnnxVariant:
    """The ONNX graph this job's compression calls for, with its files and notes; made once per job
    (cached under ctx.workdir). Methods without a precision level (none, prune*, cluster) get the fp32
    export: their weights were changed at torch level. bf16 raises Unsupported: not an ONNX variant."""
    method = ctx.job.compression.method
    if METHODS[method].level != "precision":
        base = ctx.onnx()
        return OnnxVariant(base, "fp32", onnx_files(base))
    if method not in ONNX_METHODS:
        why = " (the ONNX Conv operator does not take bfloat16 tensors, opset 18)" if method == "bf16" else ""
        raise Unsupported(f"{method}: not an ONNX variant{why}")
    suffix = f"-{int8_form(ctx.job)}" if method == "int8-static" else ""
    out = ctx.workdir / f"onnx-{method}{suffix}" / "model.onnx"
    meta = out.parent / "variant.json"
    if out.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        return OnnxVariant(out, info["dtype"], onnx_files(out), info["notes"])
    out.parent.mkdir(parents=True, exist_ok=True)
    base = ctx.onnx()
    make = {"fp16": _fp16, "int8-static": _int8_static, "int8-dynamic": _int8_dynamic}[method]
    dtype, notes = make(base, out, ctx)
    meta.write_text(json.dumps({"dtype": dtype, "notes": notes}))
    for n in notes:
        log.info("%s: %s", method, n)
    return OnnxVariant(out, dtype, onnx_files(out), notes)


def _big(path: Path) -> bool:
    return sum(f.stat().st_size for f in onnx_files(path)) > EXTERNAL_DATA_BYTES


def _save(model, out: Path, external: bool) -> None:
    import onnx
    if external:
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out.name + ".data")
    else:
        onnx.save_model(model, str(out))


# ---- the variants ---------------------------------------------------------------------------------

def _fp16(base: Path, out: Path, ctx) -> tuple[str, list[str]]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True, disable_shape_infer=False)
    _save(model, out, _big(base))
    n16 = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return "fp16", [f"fp16 graph: {n16} float16 initializers, input/output kept float32"]


# int8-static QDQ forms: quantize_static arguments per engine (see the module docstring).
CALIBRATION = "MinMax"     # chosen by measuring MinMax / Entropy / Percentile on the digits demo (docs/engines.md)
INT8_FORMS: dict[str, dict[str, Any]] = {
    "ort-cpu": {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True,
                "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}},
    "tensorrt": {"activation_type": "QInt8", "weight_type": "QInt8", "reduce_range": False,
                 "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": True, "QuantizeBias": False}},
}
_FORM_TEXT = {"ort-cpu": "uint8 asymmetric activations, int8 symmetric per-channel 7-bit weights (no VPMADDUBSW "
                         "saturation on any x86 CPU)",
              "tensorrt": "int8 symmetric activations and per-channel weights, float biases (TensorRT explicit "
                          "quantization)"}


def int8_form(job) -> str:
    """Which int8-static QDQ form a job's engine needs: 'tensorrt' for native TensorRT and ORT's TensorRT EP,
    'ort-cpu' for the others."""
    return "tensorrt" if job.backend == "tensorrt" or job.device == "tensorrt-ep" else "ort-cpu"


def _int8_static(base: Path, out: Path, ctx) -> tuple[str, list[str]]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    form = int8_form(ctx.job)
    args = INT8_FORMS[form]
    name, batches = _calibration(base, ctx)
    quantize_static(str(base), str(out), _Reader(name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=getattr(QuantType, args["activation_type"]),
                    weight_type=getattr(QuantType, args["weight_type"]), reduce_range=args["reduce_range"],
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION), use_external_data_format=_big(base),
                    extra_options=dict(args["extra_options"]))
    ops, int8_weights = _census(out)
    note = (f"int8-static QDQ, form {form} ({_FORM_TEXT[form]}; ORT quantize_static, {CALIBRATION} on "
            f"{len(ctx.calib_x)} calibration images): "
            f"{ops.get('QuantizeLinear', 0)} QuantizeLinear, {ops.get('DequantizeLinear', 0)} DequantizeLinear, "
            f"{int8_weights} int8 initializers")
    return ("int8" if ops.get("QuantizeLinear") else "fp32"), [note]


def _int8_dynamic(base: Path, out: Path, ctx) -> tuple[str, list[str]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8, use_external_data_format=_big(base))
    ops, _ = _census(out)
    quantized = {k: v for k, v in ops.items() if k in _INT8_OPS}
    floats = {k: v for k, v in ops.items() if k in _FLOAT_OPS}
    note = (f"int8-dynamic (ORT quantize_dynamic): "
            f"{', '.join(f'{v} {k}' for k, v in quantized.items()) or 'nothing quantized'}"
            f"{'; still float: ' + ', '.join(f'{v} {k}' for k, v in floats.items()) if floats else ''}")
    return ("int8" if quantized else "fp32"), [note]


def _census(path: Path) -> tuple[Counter, int]:
    """Op counts of a graph and how many of its initializers are int8/uint8."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return ops, int8


def _calibration(base: Path, ctx) -> tuple[str, list[np.ndarray]]:
    """The graph's input name and calibration batches at the graph's (static) batch size."""
    import onnx
    model = onnx.load(str(base), load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in init)
    dim0 = inp.type.tensor_type.shape.dim[0]
    bs = dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else len(ctx.example)
    return inp.name, calibration_batches(ctx.calib_x, bs)


class _Reader:
    """An onnxruntime.quantization CalibrationDataReader over prepared batches."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches, self.i = name, batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


# ---- what ORT really runs ------------------------------------------------------------------------

def ort_layer_precisions(path: Path, providers: list[str]) -> Counter:
    """Conv/Gemm/MatMul layers per compute precision in the graph ORT really runs (after its optimizer).

    ORT's CPU provider, for example, has no fp16 convolution on x86: it inserts casts and runs the
    float16 graph in fp32; and it fuses only some QDQ convolutions into QLinearConv."""
    import tempfile

    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="ort-opt-", dir=path.parent) as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        if _big(path):
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        graph = onnx.load(opts.optimized_model_filepath).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    counts: Counter = Counter()
    for node in graph.node:
        if node.op_type in _INT8_OPS:
            counts["int8"] += 1
        elif node.op_type in _FLOAT_OPS and len(node.input) > 1:
            counts[_tensor_dtype(node.input[1], inits, producers)] += 1
    return counts


def _tensor_dtype(name: str, inits: dict, producers: dict) -> str:
    if name in inits:
        return _ONNX_DTYPES.get(inits[name], "fp32")
    node = producers.get(name)
    if node is not None and node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 1)
        return _ONNX_DTYPES.get(to, "fp32")
    if node is not None and node.op_type in ("Transpose", "Reshape", "Identity") and node.input:
        return _tensor_dtype(node.input[0], inits, producers)
    if node is not None and node.op_type == "DequantizeLinear" and len(node.input) > 1:
        return _tensor_dtype(node.input[1], inits, producers)   # output type is the scale's type
    return "fp32"


def ort_runtime_dtype(variant: OnnxVariant, providers: list[str]) -> tuple[str, list[str]]:
    """(dtype ORT really computes in, notes) for a variant on these providers.

    Raises Unsupported when a reduced-precision graph would in fact run in fp32 (fp16 on a CPU
    without fp16 kernels): an fp16 row must compute in fp16."""
    if variant.dtype == "fp32":
        return "fp32", []
    counts = ort_layer_precisions(variant.path, providers)
    real = majority_dtype(counts)
    where = providers[0].removesuffix("ExecutionProvider")
    note = f"{where} runs conv/gemm layers as: {describe(counts) or 'none found'}"
    if variant.dtype in ("fp16", "bf16") and counts.get(variant.dtype, 0) == 0:
        raise Unsupported(f"onnxruntime: {where} has no {variant.dtype} kernels for this graph "
                          f"(it inserts casts; its conv/gemm layers would run as {describe(counts)})")
    return real, [note]
