"""Compression methods: each transform on a small model, and an end-to-end row per engine where it applies."""
import dataclasses

import numpy as np
import pytest
import torch

from fleetbench.agent import compress
from fleetbench.agent.backends import ExportContext
from fleetbench.agent.backends import get as get_backend
from fleetbench.agent.backends.onnxruntime.variants import onnx_variant
from fleetbench.agent.backends.precision import calibration_batches, majority_dtype
from fleetbench.agent.backends.pytorch.variants import torch_variant
from fleetbench.agent.compress.cluster import cluster_model, fold_batchnorm, kmeans_1d
from fleetbench.agent.compress.prune import prune_channels, prune_unstructured, recalibrate_batchnorm, sparsity
from fleetbench.agent.runner import run_job
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, ModelSpec


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    with torch.no_grad():   # non-trivial BatchNorm statistics, so folding has something to fold
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def x_of(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32))


def job_of(method, backend="onnxruntime", spec=None, device="cpu", quick=None) -> Job:
    from fleetbench.shared.sweep import MeasureSpec
    spec = spec or ModelSpec(name="tiny", source="python:torch.nn:Identity", num_classes=4, input_size=(3, 16, 16))
    return Job(sweep="t", model=spec, dataset=DatasetSpec(kind="digits", limit=64),
               compression=CompressionSpec.parse(method), backend=backend, device=device, batch_size=1,
               measure=quick or MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=1))


# ---- prune ---------------------------------------------------------------------------------------

def test_prune_reaches_the_sparsity_and_is_permanent():
    net = tiny_net()
    got, n_layers = prune_unstructured(net, 50, "all")
    assert n_layers == 3 and got == pytest.approx(0.5, abs=0.01)
    layers = [net[0], net[3], net[8]]
    assert sparsity(layers) == pytest.approx(got)
    for m in layers:   # masks made permanent: no reparametrisation left behind
        assert not hasattr(m, "weight_orig") and not m._forward_pre_hooks
        assert isinstance(m.weight, torch.nn.Parameter)
    assert net(x_of()).shape == (4, 4)


def test_prune_layer_filter():
    net = tiny_net()
    prune_unstructured(net, 50, "linear")
    assert sparsity([net[8]]) == pytest.approx(0.5, abs=0.02)
    assert sparsity([net[0], net[3]]) == 0.0


def test_prune_channels_removes_channels_of_a_residual_net_and_keeps_the_output():
    import timm
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    x = x_of(2, 32)
    convs_before = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    params_before = sum(p.numel() for p in net.parameters())
    prune_channels(net, 50, x[:1])
    convs_after = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert sum(convs_after.values()) < 0.6 * sum(convs_before.values())
    assert sum(p.numel() for p in net.parameters()) < 0.4 * params_before
    assert net.get_classifier().out_features == 10
    assert recalibrate_batchnorm(net, x.numpy()) > 0
    assert net(x).shape == (2, 10)


# ---- cluster -------------------------------------------------------------------------------------

def test_kmeans_1d_is_deterministic_and_bounded():
    v = np.random.default_rng(0).standard_normal(5000)
    c1, i1 = kmeans_1d(v, 16)
    c2, i2 = kmeans_1d(v, 16)
    assert np.array_equal(c1, c2) and np.array_equal(i1, i2)
    assert len(c1) <= 16 and np.all(np.diff(c1) > 0)
    nearest = np.abs(v[:, None] - c1[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(c1[i1] - v), nearest)       # every value maps to its nearest centroid
    assert np.mean((c1[i1] - v) ** 2) < 0.02                        # Lloyd-Max for N(0,1), 16 levels: ~0.0095
    few = np.array([0.5, -1.0, 0.5, 2.0])
    c, i = kmeans_1d(few, 8)
    assert np.array_equal(c[i], few)


def test_batchnorm_folding_keeps_outputs_and_removes_batchnorm():
    net = tiny_net()
    x = x_of()
    before = net(x).detach()
    pairs = fold_batchnorm(net, x[:1])
    assert pairs == [("0", "1"), ("3", "4")]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net[0].bias is not None
    torch.testing.assert_close(net(x).detach(), before, rtol=1e-4, atol=1e-5)


def test_cluster_limits_unique_values_per_layer():
    net = tiny_net()
    fold_batchnorm(net, x_of(1))
    unique = cluster_model(net, 4)
    assert set(unique) == {"0", "3", "8"}
    for name in unique:
        w = net.get_submodule(name).weight
        assert len(torch.unique(w)) == unique[name] <= 4


def test_cluster_layer_filter_leaves_other_layers():
    net = tiny_net()
    lin = net[8].weight.detach().clone()
    unique = cluster_model(net, 4, "conv")
    assert set(unique) == {"0", "3"}
    assert torch.equal(net[8].weight, lin)


def test_apply_cluster_notes_and_keeps_quality():
    net = tiny_net()
    x = x_of(16)
    ref = net(x).argmax(1)
    change = compress.apply(job_of("cluster-64"), net, x.numpy())
    assert "folded 2 BatchNorm; clustered 3 conv+linear layers to <=64 values" in change.notes[0]
    assert change.sparsity is None
    assert (change.model(x).argmax(1) == ref).float().mean() >= 0.9


def test_apply_prune_reports_sparsity():
    change = compress.apply(job_of("prune-50"), tiny_net(), x_of(4).numpy())
    assert change.sparsity == pytest.approx(0.5, abs=0.01) and "sparsity 0.5" in change.notes[0]


def test_apply_leaves_precision_methods_to_the_backends():
    net = tiny_net()
    assert compress.apply(job_of("fp16"), net, x_of(4).numpy()).model is net


# ---- precision variants --------------------------------------------------------------------------

def test_majority_dtype():
    assert majority_dtype({"int8": 12, "fp32": 4}) == "int8"
    assert majority_dtype({"int8": 1, "fp32": 15}) == "fp32"
    assert majority_dtype({}) == "fp32"


def test_torch_variants():
    net = tiny_net()
    assert torch_variant(net, "none").module is net
    half = torch_variant(net, "fp16")
    assert half.dtype == "fp16" and next(half.module.parameters()).dtype == torch.float16
    assert next(net.parameters()).dtype == torch.float32   # the original is not touched
    dyn = torch_variant(net, "int8-dynamic")
    assert dyn.quantized and dyn.dtype == "fp32"            # 1 of 3 layers: convolutions stay fp32
    assert "1 of 3 conv/linear layers run int8" in dyn.notes[0]
    assert dyn.module(x_of()).shape == (4, 4)


def test_calibration_batches_wrap_to_full_batches():
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    b = calibration_batches(x, 2)
    assert len(b) == 3 and all(len(a) == 2 for a in b)
    assert np.array_equal(b[-1][1], x[0])


@pytest.fixture(scope="module")
def base_ctx(tmp_path_factory):
    x = x_of(1).numpy()
    calib = x_of(16, seed=3).numpy()
    ctx = ExportContext(job=job_of("none"), model=tiny_net(), example=x, workdir=tmp_path_factory.mktemp("variants"),
                        calib_x=calib)
    ctx.onnx()
    return ctx


def variant_ctx(base, method):
    return dataclasses.replace(base, job=job_of(method))


def _graph(path):
    import onnx
    return onnx.load(str(path))


def onnx_for(ctx):
    v = onnx_variant(ctx)
    return v.path, v.dtype


def test_onnx_variant_of_fp32_methods_is_the_shared_export(base_ctx):
    for method in ("none", "prune-50", "cluster-8"):
        path, dtype = onnx_for(variant_ctx(base_ctx, method))
        assert path == base_ctx.onnx() and dtype == "fp32"


def test_onnx_fp16_variant(base_ctx):
    import onnx
    path, dtype = onnx_for(variant_ctx(base_ctx, "fp16"))
    g = _graph(path).graph
    assert dtype == "fp16"
    floats = [t for t in g.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT   # keep_io_types
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _qdq_parts(path):
    """(activation zero points, weight arrays, bias DequantizeLinear inputs) of a QDQ graph."""
    import onnx
    from onnx import numpy_helper
    g = _graph(path).graph
    inits = {t.name: t for t in g.initializer}
    act_zps = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in g.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2]
    int32_dq = [n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and inits[n.input[0]].data_type == onnx.TensorProto.INT32]
    return act_zps, weights, int32_dq


def test_onnx_int8_static_ort_cpu_form_uint8_activations_7bit_weights_and_made_once(base_ctx):
    import onnx
    ctx = variant_ctx(base_ctx, "int8-static")
    path, dtype = onnx_for(ctx)
    ops = [n.op_type for n in _graph(path).graph.node]
    assert dtype == "int8" and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    act_zps, weights, _ = _qdq_parts(path)
    assert act_zps and all(t.data_type == onnx.TensorProto.UINT8 for t in act_zps)   # unsigned activations
    assert len(weights) == 3 and all(w.dtype == np.int8 for w in weights)              # conv, conv, linear
    # 7-bit weights: a uint8 x int8 pair sums to <= 2 * 255 * 64 < 32767, no VPMADDUBSW saturation (AVX2)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    mtime = path.stat().st_mtime_ns
    v = onnx_variant(ctx)
    assert v.path == path and path.stat().st_mtime_ns == mtime and v.files == [path]
    assert "form ort-cpu" in v.notes[0] and "MinMax on 16 calibration images" in v.notes[0]


@pytest.mark.parametrize("backend,device", [("tensorrt", "cuda"), ("onnxruntime", "tensorrt-ep")])
def test_onnx_int8_static_tensorrt_form_symmetric_int8_float_biases(base_ctx, backend, device):
    import onnx
    ctx = dataclasses.replace(base_ctx, job=job_of("int8-static", backend=backend, device=device))
    v = onnx_variant(ctx)
    assert v.dtype == "int8" and v.path.parent.name == "onnx-int8-static-tensorrt" and "form tensorrt" in v.notes[0]
    act_zps, weights, int32_dq = _qdq_parts(v.path)
    assert act_zps and all(t.data_type == onnx.TensorProto.INT8 for t in act_zps)     # signed activations...
    assert all(not np.any(onnx.numpy_helper.to_array(t)) for t in act_zps)              # ...symmetric (zero point 0)
    assert len(weights) == 3 and all(w.dtype == np.int8 and w.min() >= -127 for w in weights)
    assert int32_dq == []                      # TensorRT rejects int32 DequantizeLinear: biases stay float
    g = _graph(v.path).graph
    float_inits = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in g.node if n.op_type == "Conv" and len(n.input) > 2]
    assert convs and all(n.input[2] in float_inits for n in convs)


def test_onnx_int8_dynamic_variant(base_ctx):
    path, dtype = onnx_for(variant_ctx(base_ctx, "int8-dynamic"))
    ops = [n.op_type for n in _graph(path).graph.node]
    assert dtype == "int8" and "ConvInteger" in ops


def test_onnx_bf16_is_not_a_variant(base_ctx):
    with pytest.raises(Unsupported, match="bfloat16"):
        onnx_for(variant_ctx(base_ctx, "bf16"))


# ---- check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,backend,expect", [
    ("none", "torchscript", None),
    ("prune-50", "onnxruntime", None),
    ("cluster-32", "openvino", None),
    ("int8-dynamic", "torchscript", None),
    ("int8-dynamic", "pytorch", None),
    ("int8-static", "onnxruntime", None),
    ("int8-static", "openvino", None),
    ("bf16", "openvino", None),                                # this CPU lists BF16
    ("int8-static", "pytorch", "not implemented in fleetbench"),
    ("int8-dynamic", "openvino", "use int8-static"),
    ("bf16", "onnxruntime", "bfloat16"),
    ("fp16", "openvino", "cannot compute in fp16"),             # CPU: BF16, FP32, INT8 only
    ("fp16", "tensorrt", None),
    ("int8-dynamic", "tensorrt", "no dynamic quantization"),
    ("bf16", "tflite", "no bf16 mode"),
])
def test_check_reasons(method, backend, expect):
    if backend == "openvino" and method in ("fp16", "bf16"):
        from fleetbench.agent.backends.openvino.variants import device_capabilities
        caps = device_capabilities("cpu") or []
        if (method == "fp16" and "FP16" in caps) or (method == "bf16" and "BF16" not in caps):
            pytest.skip(f"this CPU's OpenVINO capabilities are {caps}")
    reason = compress.check(job_of(method, backend), get_backend(backend))
    if expect is None:
        assert reason is None
    else:
        assert expect in reason


def test_check_model_methods_need_a_torch_model():
    spec = ModelSpec(name="o", source="onnx:model.onnx", num_classes=4, input_size=(3, 16, 16))
    reason = compress.check(job_of("prune-50", "onnxruntime", spec=spec), get_backend("onnxruntime"))
    assert "needs a PyTorch model" in reason


def test_check_torch_dynamic_int8_is_cpu_only():
    reason = compress.check(job_of("int8-dynamic", "pytorch", device="cuda"), get_backend("pytorch"))
    assert "CPU only" in reason


def test_precision_methods_are_judged_by_the_backend_model_methods_are_not():
    class Own:
        def check_compression(self, job):
            return "mine"
    assert compress.check(job_of("fp16"), Own()) == "mine"
    assert compress.check(job_of("cluster-8"), Own()) is None


# ---- end to end: one row per engine where the method applies ---------------------------------------

E2E_OK = [
    ("fp16", "pytorch", "fp16"), ("int8-dynamic", "pytorch", "fp32"),
    ("bf16", "torchscript", "bf16"), ("int8-dynamic", "torchscript", "fp32"), ("cluster-32", "torchscript", "fp32"),
    ("int8-static", "onnxruntime", "int8"), ("int8-dynamic", "onnxruntime", "int8"),
    ("prune-channels-25", "onnxruntime", "fp32"),
    ("int8-static", "openvino", "int8"), ("cluster-32", "openvino", "fp32"), ("prune-50", "openvino", "fp32"),
]


def _row(method, backend, demo_model_spec, quick_measure):
    return run_job(job_of(method, backend, spec=demo_model_spec, quick=quick_measure))


@pytest.mark.parametrize("method,backend,dtype", E2E_OK)
def test_end_to_end_row(method, backend, dtype, demo_model_spec, quick_measure):
    r = _row(method, backend, demo_model_spec, quick_measure)
    assert r.status == "ok", (r.stage, r.error)
    assert r.compression == method and r.dtype == dtype
    assert r.size_mb > 0 and 0 < r.size_compressed_mb <= r.size_mb * 1.01
    assert r.f1_macro is not None and r.top1_agreement is not None
    if method == "prune-channels-25":
        assert r.f1_macro > 0.5          # no fine-tuning: quality drops, but BN re-estimation keeps it usable
        assert "params 373,658 -> " in r.notes
    else:
        assert r.f1_macro > 0.95 and r.top1_agreement > 0.95
    if method.startswith("prune-5"):
        assert r.sparsity == pytest.approx(0.5, abs=0.01)
        assert r.size_compressed_mb < 0.75 * r.size_mb
    if method.startswith("cluster"):
        assert "clustered 16 conv+linear layers to <=32 values" in r.notes
        assert r.size_compressed_mb < 0.35 * r.size_mb
    if method == "int8-static":
        assert r.size_mb < 0.35 * 1.49 and "calibration images" in r.notes   # fp32 ONNX/IR: ~1.49 MB
    if (method, backend) == ("int8-static", "onnxruntime"):
        # The ort-cpu form cannot saturate on any x86 CPU (7-bit weights), so AVX2 and VNNI machines compute
        # the same integers: measured agreement 1.000 with fp32 on these 64 images (F1 drop 0.000 on 540).
        assert "form ort-cpu" in r.notes and r.top1_agreement >= 62 / 64
    if method == "fp16":
        assert r.size_mb < 0.8


@pytest.mark.parametrize("method,backend,why", [
    ("int8-static", "torchscript", "not implemented in fleetbench"),
    ("int8-dynamic", "openvino", "use int8-static"),
    ("bf16", "onnxruntime", "bfloat16"),
    ("fp16", "onnxruntime", "no fp16 kernels"),       # decided from the graph ORT's CPU provider really runs
])
def test_end_to_end_unsupported(method, backend, why, demo_model_spec, quick_measure):
    r = _row(method, backend, demo_model_spec, quick_measure)
    if method == "fp16" and r.status == "ok":
        assert r.dtype == "fp16"          # a CPU whose ORT has fp16 kernels: then it must really run fp16
        return
    assert r.status == "unsupported" and why in r.error and r.stage is None
