"""GPU paths of the CPU-testable backends, against FAKES: ONNX Runtime's CUDA / TensorRT EPs (I/O binding,
fallback detection, node placement), the torch CUDA extras (NVML note), OpenVINO devices (CPU/GPU/NPU)."""
import os
import sys
import types

import numpy as np
import pytest

from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.backends.onnxruntime import cuda as _ort_gpu
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
from tests.fixtures.fake_gpu import MB, ORT_OPTIONS, FakeGpu, FakeProc, fake_pynvml

SPEC = ModelSpec(name="m", source="timm:test_resnet", num_classes=10, input_size=(3, 8, 8))


def job(backend, device):
    return Job(sweep="t", model=SPEC, dataset=DatasetSpec(kind="synthetic", limit=8),
               compression=CompressionSpec(method="none"), backend=backend, device=device, batch_size=2,
               measure=MeasureSpec(warmup_iters=0, min_iters=1, min_duration_s=0, max_duration_s=1))


@pytest.fixture
def nvml(monkeypatch):
    fake = fake_pynvml([FakeGpu(procs=[FakeProc(os.getpid(), 700 * MB)])])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


# ---------------------------------------------------------------- fake ONNX Runtime


class FakeNode:
    def __init__(self, op):
        self.op_type, self.name = op, f"{op}_0"


class FakeSubgraph:
    def __init__(self, ep, ops):
        self.ep_name, self._nodes = ep, [FakeNode(o) for o in ops]

    def get_nodes(self):
        return self._nodes


class FakeIOBinding:
    def __init__(self, log):
        self.log, self.out = log, None

    def bind_cpu_input(self, name, arr):
        self.log.append(("bind_cpu_input", name, arr.dtype))
        self.x = arr

    def bind_output(self, name, device, device_id):
        self.log.append(("bind_output", name, device, device_id))

    def bind_ortvalue_input(self, name, v):
        self.log.append(("bind_ortvalue_input", name))
        self.x = v.array

    def bind_ortvalue_output(self, name, v):
        self.log.append(("bind_ortvalue_output", name))

    def get_outputs(self):
        return [types.SimpleNamespace(array=self.out)]

    def synchronize_outputs(self):
        self.log.append(("synchronize_outputs",))

    def copy_outputs_to_cpu(self):
        self.log.append(("copy_outputs_to_cpu",))
        return [self.out]


class FakeSession:
    """FAKE onnxruntime.InferenceSession: logits = 2 * per-sample sum; ORT-style provider fallback."""

    def __init__(self, path, sess_options=None, providers=None, in_type="tensor(float)", fallback_to=None,
                 placement=(("CUDAExecutionProvider", ["Conv"] * 20), ("CPUExecutionProvider", ["Shape", "Gather", "Shape"]))):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        for p in providers:   # as strict as ORT: an option name it does not parse fails session creation
            if isinstance(p, tuple):
                unknown = set(p[1]) - ORT_OPTIONS[p[0]]
                if unknown:
                    raise RuntimeError(f"fake onnxruntime: {p[0]} has no option(s) {sorted(unknown)}")
        self.providers_asked = providers
        self.providers = [fallback_to, "CPUExecutionProvider"] if fallback_to else names
        self.in_type, self.placement, self.log = in_type, placement, []

    def get_providers(self):
        return self.providers

    def get_inputs(self):
        return [types.SimpleNamespace(name="input", type=self.in_type)]

    def get_outputs(self):
        return [types.SimpleNamespace(name="logits", type="tensor(float)")]

    def io_binding(self):
        return FakeIOBinding(self.log)

    def run_with_iobinding(self, io):
        self.log.append(("run",))
        io.out = (2 * io.x.reshape(io.x.shape[0], -1).astype(np.float32).sum(1, keepdims=True)).repeat(3, 1)

    def get_provider_graph_assignment_info(self):
        if self.placement is None:
            raise RuntimeError("not recorded")
        return [FakeSubgraph(ep, ops) for ep, ops in self.placement]


def fake_ort(**session_kw):
    m = types.ModuleType("onnxruntime")
    m.sessions = []

    def session(*a, **kw):
        s = FakeSession(*a, **{**kw, **session_kw})
        m.sessions.append(s)
        return s

    class SessionOptions:
        def __init__(self):
            self.entries = {}

        def add_session_config_entry(self, k, v):
            self.entries[k] = v

        def add_free_dimension_override_by_name(self, name, value):   # the real one takes (str, int)
            if not isinstance(name, str) or not isinstance(value, int):
                raise TypeError("add_free_dimension_override_by_name(str, int)")
            self.entries[f"free_dim:{name}"] = value

    m.InferenceSession, m.SessionOptions = session, SessionOptions
    m.ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL=0)
    m.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)
    def ortvalue_from_numpy(a, device="cpu", device_id=0):
        if device not in ("cpu", "cuda", "cuda_pinned", "dml", "cann", "webgpu"):   # OrtDevice names ORT accepts
            raise RuntimeError(f"fake onnxruntime: unsupported device {device!r}")
        return types.SimpleNamespace(array=a, device=device)

    m.OrtValue = types.SimpleNamespace(ortvalue_from_numpy=ortvalue_from_numpy)
    m.get_available_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return m


def test_placement_note_fake_session_names_cpu_fallback_ops():
    s = FakeSession("m", providers=["CUDAExecutionProvider"])
    assert _ort_gpu.placement_note(s) == ("ORT node placement: CUDAExecutionProvider 20, CPUExecutionProvider 3 "
                                          "(on CPU: Shape x2, Gather x1)")
    s.placement = (("TensorrtExecutionProvider", ["Conv"] * 7),)
    assert _ort_gpu.placement_note(s) == "ORT node placement: all 7 nodes on TensorrtExecutionProvider"
    s.placement = None
    assert _ort_gpu.placement_note(s) is None


def test_provider_chain_tensorrt_ep_caches_engines_and_falls_back_to_cuda(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    chain = _ort_gpu.provider_chain(_ort_gpu.TRT)
    assert [p[0] if isinstance(p, tuple) else p for p in chain] == [_ort_gpu.TRT, _ort_gpu.CUDA, _ort_gpu.CPU]
    assert chain[0][1]["trt_engine_cache_enable"] and chain[0][1]["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt")
    assert [p[0] if isinstance(p, tuple) else p for p in _ort_gpu.provider_chain(_ort_gpu.CUDA)] == [_ort_gpu.CUDA, _ort_gpu.CPU]


def _artifact(path, data: bytes, dtype="fp32"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Artifact([path], dtype=dtype)


def test_provider_chain_tensorrt_ep_engine_cache_prefix_is_per_artifact(monkeypatch, tmp_path):
    """ORT keys its TensorRT EP engine cache by file name and tensor names: every fleetbench graph is
    model.onnx, so two jobs' graphs must get different prefixes (and the same graph the same one)."""
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    a = _artifact(tmp_path / "job-a" / "model.onnx", b"graph with pruned weights")
    b = _artifact(tmp_path / "job-b" / "model.onnx", b"graph with clustered weights")
    a2 = _artifact(tmp_path / "job-c" / "model.onnx", b"graph with pruned weights")
    prefix = {k: _ort_gpu.provider_chain(_ort_gpu.TRT, 0, art)[0][1]["trt_engine_cache_prefix"]
              for k, art in (("a", a), ("b", b), ("a2", a2))}
    assert prefix["a"] != prefix["b"] and prefix["a"] == prefix["a2"]
    ext = tmp_path / "job-a" / "model.onnx.data"                      # external weights count too
    ext.write_bytes(b"w1")
    assert _ort_gpu.provider_chain(_ort_gpu.TRT, 0, Artifact([a.main, ext]))[0][1]["trt_engine_cache_prefix"] \
        != prefix["a"]


def test_fake_ort_refuses_provider_options_ort_does_not_parse(tmp_path):
    with pytest.raises(RuntimeError, match="no option"):
        FakeSession("m", providers=[(_ort_gpu.TRT, {"trt_fp32_enable": True}), _ort_gpu.CPU])
    chain = _ort_gpu.provider_chain(_ort_gpu.TRT, 0, _artifact(tmp_path / "model.onnx", b"g", "fp16"))
    FakeSession("m", providers=chain)                                # every option fleetbench sets is ORT's


@pytest.mark.parametrize("dtype, fp16, int8", [("fp32", False, False), ("fp16", True, False), ("int8", False, True)])
def test_provider_chain_tensorrt_ep_precision_flags_follow_the_graph(monkeypatch, tmp_path, dtype, fp16, int8):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    opts = _ort_gpu.provider_chain(_ort_gpu.TRT, 0, _artifact(tmp_path / "model.onnx", b"g", dtype))[0][1]
    assert (opts["trt_fp16_enable"], opts["trt_int8_enable"]) == (fp16, int8)


@pytest.mark.parametrize("dtype, cc, expect", [("fp32", "9.0", "tf32"), ("fp32", "8.0", "tf32"), ("fp32", "7.5", "fp32"),
                                               ("fp16", "9.0", "fp16"), ("int8", "9.0", "int8"), ("fp32", None, "fp32")])
def test_trt_ep_fp32_on_ampere_or_later_is_labelled_tf32(dtype, cc, expect):
    got, how = _ort_gpu.trt_ep_dtype(dtype, cc)
    assert got == expect and "precision flags" in how


def test_onnxruntime_cuda_fake_ort_uses_io_binding_and_reports_vram_and_placement(monkeypatch, nvml, tmp_path):
    ort = fake_ort(in_type="tensor(float16)")
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    from fleetbench.agent.backends.onnxruntime.backend import OnnxRuntimeBackend
    engine = OnnxRuntimeBackend().load(Artifact([tmp_path / "m.onnx"]), job("onnxruntime", "cuda"), threads=2)
    sess = ort.sessions[-1]
    assert [p[0] if isinstance(p, tuple) else p for p in sess.providers_asked] == [_ort_gpu.CUDA, _ort_gpu.CPU]
    x = np.ones((2, 3, 8, 8), np.float32)
    y = engine.run(x)
    np.testing.assert_allclose(y, np.full((2, 3), 2 * 192.0))
    assert sess.log == [("bind_cpu_input", "input", np.float16), ("bind_output", "logits", "cuda", 0), ("run",),
                        ("copy_outputs_to_cpu",)]
    assert engine.provider == _ort_gpu.CUDA
    assert engine.vram() == pytest.approx(700) and engine.vram_source == "nvml-process"
    assert engine.notes() == ["ORT node placement: CUDAExecutionProvider 20, CPUExecutionProvider 3 "
                              "(on CPU: Shape x2, Gather x1)", "dtype fp32: TF32 off (CUDA EP use_tf32=0)"]
    assert sess.providers_asked[0][1]["use_tf32"] == 0                 # fp32 rows compute in IEEE fp32
    sess.log.clear()
    device_run = engine.prepare_device_run(x)
    sess.log.clear()
    device_run()
    assert sess.log == [("run",), ("synchronize_outputs",)]        # no host copies in the device-resident loop
    engine.close()
    assert nvml.calls["init"] == nvml.calls["shutdown"]


def test_onnxruntime_tensorrt_ep_fake_ort_silent_fallback_is_unsupported(monkeypatch, nvml, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort(fallback_to="CUDAExecutionProvider"))
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    from fleetbench.agent.backends.onnxruntime.backend import OnnxRuntimeBackend
    with pytest.raises(Unsupported, match="TensorrtExecutionProvider could not be created.*fell back to CUDA"):
        OnnxRuntimeBackend().load(_artifact(tmp_path / "m.onnx", b"g"), job("onnxruntime", "tensorrt-ep"), threads=1)
    assert nvml.calls["init"] == nvml.calls["shutdown"]


def test_onnxruntime_gpu_devices_need_both_the_provider_and_a_gpu(monkeypatch):
    from fleetbench.agent.backends.onnxruntime import backend as ort_backend
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort())
    monkeypatch.setattr(ort_backend, "_has_nvidia_gpu", lambda: True)
    assert ort_backend.OnnxRuntimeBackend().probe().devices == ("cpu", "cuda", "tensorrt-ep")
    monkeypatch.setattr(ort_backend, "_has_nvidia_gpu", lambda: False)
    assert ort_backend.OnnxRuntimeBackend().probe().devices == ("cpu",)


# ---------------------------------------------------------------- torch CUDA extras


def test_torch_cpu_engine_has_no_device_resident_mode():
    import torch

    from fleetbench.agent.backends.pytorch.common import torch_engine
    engine = torch_engine(torch.nn.Linear(4, 2), Artifact([], dtype="fp32"), job("pytorch", "cpu"), 1, "torch-eager")
    assert engine.run(np.ones((3, 4), np.float32)).shape == (3, 2)
    assert engine.notes() == [] and engine.prepare_device_run is None   # a CPU engine gets no CUDA extras
    assert engine.vram is None and engine.provider == "torch-eager:cpu"


def test_torch_cuda_rows_pin_ieee_fp32(nvml, monkeypatch):
    import torch

    from fleetbench.agent.backends.pytorch import common
    monkeypatch.setattr(common, "make_runner", lambda fn, device: (fn, lambda x: (lambda: None)))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True   # TF32 allowed
        common.torch_engine(lambda x: x, Artifact([], dtype="fp32"), job("pytorch", "cuda"), 1, "torch-eager").close()
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_torch_cuda_engine_fake_nvml_note_and_close(nvml, monkeypatch):
    from fleetbench.agent.backends.pytorch import common
    monkeypatch.setattr(common, "make_runner", lambda fn, device: (fn, lambda x: (lambda: None)))
    engine = common.torch_engine(lambda x: x, Artifact([], dtype="fp32"), job("pytorch", "cuda:0"), 1, "torchscript")
    assert engine.prepare_device_run is not None and engine.vram_source == "torch.cuda.max_memory_allocated"
    assert engine.notes()[0] == "NVML process VRAM peak 700.0 MB (vram_peak_mb is torch.cuda.max_memory_allocated)"
    assert "TF32 off" in engine.notes()[1]
    engine.close()
    assert nvml.calls["init"] == nvml.calls["shutdown"]


@pytest.mark.parametrize("device, ok", [("cuda", True), ("cuda:1", True), ("cuda:x", False), ("gpu", False)])
def test_torch_device_names(device, ok):
    from fleetbench.agent.backends.pytorch.eager import PytorchBackend
    assert (PytorchBackend().check(job("pytorch", device)) is None) == ok


# ---------------------------------------------------------------- OpenVINO devices


def fake_openvino(devices, props):  # noqa: C901 (one fake module, one closure per API call)
    m = types.ModuleType("openvino")
    m.compiled = []

    class Hint:
        def __init__(self, name):
            self.name = name

        def get_type_name(self):
            return self.name

    class Compiled:
        def __init__(self, device, config):
            self.device, self.config = device, config

        def get_property(self, key):
            if key not in props.get(self.device.split(".")[0], ()):
                raise RuntimeError(f"{self.device} has no property {key}")
            return Hint(self.config.get("INFERENCE_PRECISION_HINT", "f16"))

        def create_infer_request(self):
            out = types.SimpleNamespace(data=np.zeros((2, 10), np.float32))
            inp = types.SimpleNamespace(data=np.zeros((2, 3, 8, 8), np.float32))
            return types.SimpleNamespace(infer=lambda inputs=None: None, get_output_tensor=lambda i: out,
                                         get_input_tensor=lambda i: inp)

    class Port:    # ov.Output: hashable, a key of reshape's dict
        def get_partial_shape(self):
            return types.SimpleNamespace(is_dynamic=True)

    class Model:   # an IR with a dynamic batch axis, as agent/prepare.py shares it between batch sizes
        def __init__(self, path):
            self.path, self.shape = str(path), None
            self.inputs = [Port()]

        def reshape(self, shapes):
            assert list(shapes) == [self.inputs[0]], "reshape takes {input: shape}"
            (self.shape,) = shapes.values()

    class Core:
        available_devices = devices

        def get_property(self, device, key):
            assert key == "SUPPORTED_PROPERTIES"
            return props.get(device.split(".")[0], ())

        def read_model(self, path):
            if not isinstance(path, str):
                raise TypeError("read_model(model: str, ...)")
            return Model(path)

        def compile_model(self, path, device, config):
            c = Compiled(device, dict(config))
            m.compiled.append(c)
            return c

    m.Core = Core
    return m


FULL = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")


def test_openvino_fake_every_device_is_its_own_lowercase_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", fake_openvino(["CPU", "GPU.0", "GPU.1", "NPU"], {}))
    from fleetbench.agent.backends.openvino.backend import OpenVinoBackend
    assert OpenVinoBackend().probe().devices == ("cpu", "gpu.0", "gpu.1", "npu")


@pytest.mark.parametrize("device, threads, dtype, hint", [
    ("cpu", "3", "fp32", "f32"),            # fp32 pinned to f32; threads only on the CPU
    ("gpu.1", None, "fp32", "f32"),         # the GPU plugin's default would be f16
    ("npu", None, "fp16", None),            # the NPU takes no precision hint and computes fp16
])
def test_openvino_fake_device_config(monkeypatch, device, threads, dtype, hint):
    ov = fake_openvino(["CPU", "GPU.1", "NPU"], {"CPU": FULL, "GPU": FULL[:3], "NPU": ("PERFORMANCE_HINT",)})
    monkeypatch.setitem(sys.modules, "openvino", ov)
    from fleetbench.agent.backends.openvino.backend import OpenVinoBackend
    engine = OpenVinoBackend().load(Artifact([__file__], dtype="fp32"), job("openvino", device), threads=3)
    cfg = ov.compiled[-1].config
    assert ov.compiled[-1].device == device.upper()
    assert cfg.get("INFERENCE_NUM_THREADS") == threads and cfg.get("INFERENCE_PRECISION_HINT") == hint
    assert engine.dtype == dtype and engine.threads == (3 if device == "cpu" else None)
    assert engine.run(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 10)


# ---------------------------------------------------------------- device time


@pytest.mark.parametrize("device_s, expect_note", [(0.000250, "CUDA events"), (None, "host clock")])
def test_device_resident_time_fake_engine_uses_cuda_events_where_given(device_s, expect_note):
    from fleetbench.agent.backends.base import Engine
    from fleetbench.agent.measuring import _measure_device_resident
    calls = []

    def prepare(x):
        def device_run():
            calls.append(1)
            return device_s
        return device_run

    engine = Engine(run=lambda x: x, dtype="fp32", prepare_device_run=prepare)
    j = job("onnxruntime", "cuda")
    p50, notes = _measure_device_resident(engine, np.zeros((2, 3, 8, 8), np.float32), j)
    assert len(calls) >= j.measure.min_iters
    assert expect_note in notes[0]
    if device_s is not None:
        assert p50 == pytest.approx(0.25)           # the events' time, not the host's
    else:
        assert p50 is not None and p50 >= 0
