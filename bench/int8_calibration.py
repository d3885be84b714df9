"""int8-static on ONNX Runtime CPU: F1 on the digits demo per QDQ form, calibration method and number of
calibration images, against the fp32 graph, all on the full held-out set (540 images), in one run.

    python bench/int8_calibration.py [--forms ort-cpu tensorrt] [--methods MinMax Entropy Percentile] [--n 64 256]

Forms are fleetbench's own (`agent.compress.onnx_variants.INT8_FORMS`); the calibration method fleetbench
uses is `CALIBRATION` there. The table names the CPU it ran on: int8 kernels differ between x86 ISAs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forms", nargs="+", default=["ort-cpu", "tensorrt"])
    ap.add_argument("--methods", nargs="+", default=["MinMax", "Entropy", "Percentile"])
    ap.add_argument("--n", nargs="+", type=int, default=[64, 256])
    args = ap.parse_args()
    logging.disable(logging.WARNING)   # quantize_static's pre-processing advice

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from fleetbench.agent.compress.onnx_variants import INT8_FORMS, _Reader, calibration_batches
    from fleetbench.agent.data import load_dataset
    from fleetbench.agent.models import load_model
    from fleetbench.agent.onnx_export import export_onnx
    from fleetbench.agent.probe import cpu_info
    from fleetbench.agent.quality import predict, quality
    from fleetbench.shared.sweep import DatasetSpec, ModelSpec

    spec = ModelSpec(name="digits", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32),
                     checkpoint=str(ROOT / "examples/digits/model.safetensors"))
    model, _ = load_model(spec, None)
    data = load_dataset(DatasetSpec(kind="digits", calibration=max(args.n)), (3, 32, 32))
    tmp = Path(tempfile.mkdtemp(prefix="int8-calib-"))
    base = export_onnx(model, data.eval_x[:1], tmp / "fp32" / "model.onnx")
    name = onnx.load(str(base)).graph.input[0].name

    def predictions(path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = 1, 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return predict(lambda b: sess.run(None, {name: b})[0], data.eval_x, 1)

    ref = predictions(base)
    f1_ref = quality(ref, data.eval_y, ref)["f1_macro"]
    model_name, flags = cpu_info()
    print(f"CPU: {model_name}; ISA: {' '.join(f for f in flags if f.startswith(('avx', 'amx')))}")
    print(f"onnxruntime {ort.__version__}; fp32 F1 {f1_ref:.4f} on {len(ref)} images")
    print(f"{'form':9s} {'method':10s} {'images':>6s} {'F1':>7s} {'drop':>7s} {'agree':>7s}")
    for form, method, n in itertools.product(args.forms, args.methods, args.n):
        f = INT8_FORMS[form]
        out = tmp / f"{form}-{method}-{n}" / "model.onnx"
        out.parent.mkdir()
        with contextlib.redirect_stdout(io.StringIO()):   # the histogram calibrators print progress
            quantize_static(str(base), str(out), _Reader(name, calibration_batches(data.calib_x[:n], 1)),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=f["reduce_range"],
                            activation_type=getattr(QuantType, f["activation_type"]),
                            weight_type=getattr(QuantType, f["weight_type"]),
                            calibrate_method=getattr(CalibrationMethod, method),
                            extra_options=dict(f["extra_options"]))
        q = quality(predictions(out), data.eval_y, ref)
        print(f"{form:9s} {method:10s} {n:6d} {q['f1_macro']:7.4f} {f1_ref - q['f1_macro']:7.4f} "
              f"{q['top1_agreement']:7.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
