"""What an int8-static QDQ graph computes on an x86 CPU without VNNI (AVX2, AVX-512F/BW), emulated.

ONNX Runtime's x86 int8 kernels there multiply uint8 activations by int8 weights with VPMADDUBSW, which adds
two neighbouring products into an int16 and saturates it; VNNI CPUs (VPDPBUSD) accumulate in int32 and do not.
This evaluates the digits demo's QDQ graph per form (agent.compress.onnx_variants.INT8_FORMS) with every
quantized Conv/Gemm computed both ways — exact int32, and with pairs of products along K saturated to int16
(int8 activations are shifted to uint8 first, as ORT does on x86) — and prints F1 and top-1 agreement with fp32
on the 540 held-out images, plus the share of saturated pairs. numpy and onnx.reference only: no AVX2 CPU needed.

    python bench/int8_avx2_emulation.py [--forms ort-cpu tensorrt] [--limit 540]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATS = {"pairs": 0, "saturated": 0}


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple, pads: tuple, fill: int) -> tuple[np.ndarray, int, int]:
    """x (C, H, W) -> (C*kh*kw, L) columns (K ordered channel, row, column), padded with `fill`."""
    c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    oh = (h + pads[0] + pads[2] - kh) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - kw) // stride[1] + 1
    cols = np.empty((c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
    return cols.reshape(c * kh * kw, oh * ow), oh, ow


def int_matmul(a_u8: np.ndarray, w_s8: np.ndarray, saturate: bool) -> np.ndarray:
    """sum_k a[k, l] * w[o, k] as int32, (O, L); with `saturate`, neighbouring products (k even, k+1) are
    first added and clipped to int16, as VPMADDUBSW does."""
    a = a_u8.astype(np.int32)
    w = w_s8.astype(np.int32)
    if not saturate:
        return w @ a
    k = a.shape[0]
    if k % 2:
        a = np.concatenate([a, np.zeros((1, a.shape[1]), np.int32)])
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int32)], axis=1)
    pair = w[:, 0::2, None] * a[None, 0::2, :] + w[:, 1::2, None] * a[None, 1::2, :]     # (O, K/2, L)
    clipped = np.clip(pair, -32768, 32767)
    STATS["pairs"] += pair.size
    STATS["saturated"] += int(np.count_nonzero(clipped != pair))
    return clipped.sum(axis=1, dtype=np.int64).astype(np.int32)


def to_u8(q: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 activations become uint8 (+128, zero point too), as ORT's x86 QDQ transform does."""
    if q.dtype == np.int8:
        return (q.astype(np.int16) + 128).astype(np.uint8), zp.astype(np.int32) + 128
    return q, zp.astype(np.int32)


def make_ops(saturate: bool):
    from onnx.reference.op_run import OpRun

    class QConv(OpRun):
        op_domain = "emu"

        def _run(self, xq, xs, xzp, wq, ws, wzp, b=None, strides=None, pads=None, group=None):
            assert group == 1
            xq, xzp = to_u8(xq, xzp)
            o, c, kh, kw = wq.shape
            wmat = wq.reshape(o, -1)
            wsum = wmat.astype(np.int32).sum(axis=1)
            out = []
            for img in xq:
                cols, oh, ow = im2col(img, kh, kw, tuple(strides), tuple(pads), int(xzp))
                acc = int_matmul(cols, wmat, saturate) - int(xzp) * wsum[:, None]
                y = acc.astype(np.float32) * (float(xs) * ws.astype(np.float32).reshape(-1, 1))
                if b is not None:
                    y += b.reshape(-1, 1)
                out.append(y.reshape(o, oh, ow))
            return (np.stack(out).astype(np.float32),)

    class QGemm(OpRun):
        op_domain = "emu"

        def _run(self, xq, xs, xzp, wq, ws, wzp, b=None):
            xq, xzp = to_u8(xq, xzp)
            wsum = wq.astype(np.int32).sum(axis=1)
            acc = int_matmul(xq.T, wq, saturate).T - int(xzp) * wsum[None, :]
            y = acc.astype(np.float32) * (float(xs) * ws.astype(np.float32).reshape(1, -1))
            return ((y + b.reshape(1, -1)) if b is not None else y,)

    return [QConv, QGemm]


def rewrite(model):
    """Conv/Gemm fed by DequantizeLinear(x) and DequantizeLinear(w) -> emu.QConv/QGemm on the integers."""
    from onnx import helper, numpy_helper
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for n in g.node:
        dq_x, dq_w = producer.get(n.input[0]), producer.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type in ("Conv", "Gemm") and dq_x is not None and dq_w is not None \
                and dq_x.op_type == dq_w.op_type == "DequantizeLinear":
            bias = list(n.input[2:3])
            if bias and producer.get(bias[0]) is not None and producer[bias[0]].op_type == "DequantizeLinear":
                dqb = producer[bias[0]]   # int32 bias: dequantize it here once
                q = numpy_helper.to_array(inits[dqb.input[0]]).astype(np.float32)
                s = numpy_helper.to_array(inits[dqb.input[1]]).astype(np.float32)
                name = bias[0] + "_float"
                g.initializer.append(numpy_helper.from_array(q * s, name))
                bias = [name]
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Gemm":
                assert attrs.get("transB", 0) == 1 and not attrs.get("transA", 0)
                kw = {}
            else:
                kw = {"strides": attrs.get("strides", [1, 1]), "pads": attrs.get("pads", [0, 0, 0, 0]),
                      "group": attrs.get("group", 1)}
            op = "QConv" if n.op_type == "Conv" else "QGemm"
            nodes.append(helper.make_node(op, [*dq_x.input[:3], *dq_w.input[:3], *bias], list(n.output),
                                          domain="emu", **kw))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("emu", 1))
    for o in model.opset_import:   # onnx.reference implements DequantizeLinear from opset 19
        if o.domain in ("", "ai.onnx") and o.version < 19:
            o.version = 19
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forms", nargs="+", default=["ort-cpu", "tensorrt"])
    ap.add_argument("--limit", type=int, default=540)
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from fleetbench.agent.compress.onnx_variants import CALIBRATION, INT8_FORMS, _Reader, calibration_batches
    from fleetbench.agent.data import load_dataset
    from fleetbench.agent.models import load_model
    from fleetbench.agent.onnx_export import export_onnx
    from fleetbench.agent.quality import quality
    from fleetbench.shared.sweep import DatasetSpec, ModelSpec

    spec = ModelSpec(name="digits", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32),
                     checkpoint=str(ROOT / "examples/digits/model.safetensors"))
    model, _ = load_model(spec, None)
    data = load_dataset(DatasetSpec(kind="digits", limit=args.limit), (3, 32, 32))
    tmp = Path(tempfile.mkdtemp(prefix="int8-emu-"))
    base = export_onnx(model, data.eval_x[:1], tmp / "fp32" / "model.onnx")
    name = onnx.load(str(base)).graph.input[0].name
    sess = ort.InferenceSession(str(base), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {name: x[None]})[0].argmax(1) for x in data.eval_x])
    print(f"fp32 (ORT): F1 {quality(ref, data.eval_y, ref)['f1_macro']:.4f} on {len(ref)} images")
    print(f"{'form':9s} {'kernel':24s} {'F1':>7s} {'agree':>7s} {'saturated pairs':>16s}")
    for form in args.forms:
        f = INT8_FORMS[form]
        out = tmp / form / "model.onnx"
        out.parent.mkdir()
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(base), str(out), _Reader(name, calibration_batches(data.calib_x, 1)),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=f["reduce_range"],
                            activation_type=getattr(QuantType, f["activation_type"]),
                            weight_type=getattr(QuantType, f["weight_type"]),
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION),
                            extra_options=dict(f["extra_options"]))
        for saturate, label in ((False, "exact int32 (VNNI)"), (True, "int16 pairs (AVX2, no VNNI)")):
            STATS.update(pairs=0, saturated=0)
            ev = ReferenceEvaluator(rewrite(onnx.load(str(out))), new_ops=make_ops(saturate))
            pred = np.concatenate([ev.run(None, {name: data.eval_x[i:i + 1]})[0].argmax(1)   # exported at batch 1
                                   for i in range(len(data.eval_x))])
            q = quality(pred, data.eval_y, ref)
            share = STATS["saturated"] / max(STATS["pairs"], 1)
            print(f"{form:9s} {label:24s} {q['f1_macro']:7.4f} {q['top1_agreement']:7.4f} {share:16.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
