"""TFLite (LiteRT): litert-torch conversion and the LiteRT interpreter on the digits demo model.

fp32 through run_job must match the PyTorch reference (F1 within 0.01); fp16 / int8-dynamic / int8-static
come from ai-edge-quantizer on one shared fp32 conversion; layout and int8 I/O adaptation are unit-tested."""
import importlib.util
import sys

import numpy as np
import pytest

from fleetbench.agent.backends import tflite
from fleetbench.agent.backends.base import Artifact, ExportContext
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, ModelSpec

HAVE_LITERT = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert"))
needs_litert = pytest.mark.skipif(not HAVE_LITERT, reason="litert-torch / ai-edge-litert not installed")


def make_job(spec, measure, method="none", bs=8, device="cpu", limit=64):   # = the contract job (cached)
    return Job(sweep="t", model=spec, dataset=DatasetSpec(kind="digits", limit=limit),
               compression=CompressionSpec.parse(method), backend="tflite", device=device, batch_size=bs,
               measure=measure)


# ---------------------------------------------------------------- real conversion


@needs_litert
def test_tflite_fp32_matches_the_pytorch_reference(demo_model_spec, quick_measure):
    from fleetbench.agent.runner import run_job
    had_converter = "litert_torch" in sys.modules
    r = run_job(make_job(demo_model_spec, quick_measure))
    assert r.status == "ok", r.error
    assert had_converter or "litert_torch" not in sys.modules   # converted in a child: RAM is the engine's
    ref = run_job(Job(**{**make_job(demo_model_spec, quick_measure).__dict__, "backend": "pytorch"}))
    assert ref.status == "ok", ref.error
    assert r.dtype == "fp32" and r.threads >= 1 and r.provider.startswith("litert-")
    assert abs(r.f1_macro - ref.f1_macro) <= 0.01 and r.top1_agreement >= 0.99
    assert 1.0 < r.size_mb < 2.0 and r.latency_p50_ms > 0 and r.first_ms > 0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One fp32 conversion of the demo model at batch 8, and the data to judge variants on."""
    if not HAVE_LITERT:
        pytest.skip("litert-torch / ai-edge-litert not installed")
    import torch

    from fleetbench.agent.data import load_dataset
    from fleetbench.agent.models import load_model
    from tests.conftest import DEMO_CHECKPOINT
    spec = ModelSpec(name="d", source="timm:test_resnet", checkpoint=str(DEMO_CHECKPOINT), num_classes=10,
                     input_size=(3, 32, 32))
    model, _ = load_model(spec, None)
    data = load_dataset(DatasetSpec(kind="digits", limit=96), (3, 32, 32))
    out = tmp_path_factory.mktemp("tflite")
    job = Job(sweep="t", model=spec, dataset=DatasetSpec(kind="digits"), compression=CompressionSpec.parse("fp16"),
              backend="tflite", device="cpu", batch_size=8, measure=None)
    ctx = ExportContext(job=job, model=model, example=data.eval_x[:8], workdir=out, calib_x=data.calib_x)
    had_converter = "litert_torch" in sys.modules
    fp16 = tflite.TFLiteBackend().export(ctx)     # conversion + fp16 weights, in a converter process
    assert had_converter or "litert_torch" not in sys.modules     # JAX/MLIR stayed out of this process
    assert [p.name for p in fp16.files] == ["model_fp16.tflite"] and "weights stored fp16" in fp16.notes[0]
    fp32 = out / "tflite" / "model_fp32.tflite"   # the intermediate: on disk, not counted in the artifact
    with torch.no_grad():
        ref = model(torch.from_numpy(data.eval_x)).numpy().argmax(1)
    return spec, fp32, data, ref, out


def _predict(path, spec, data, method="none"):
    job = Job(sweep="t", model=spec, dataset=DatasetSpec(kind="digits"), compression=CompressionSpec.parse(method),
              backend="tflite", device="cpu", batch_size=8, measure=None)
    dtype = tflite.PRECISION.get(method, "fp32")
    engine = tflite.TFLiteBackend().load(Artifact([path], dtype=dtype), job, threads=1)
    return np.concatenate([engine.run(data.eval_x[i:i + 8]).argmax(1) for i in range(0, len(data.eval_x), 8)]), engine


@needs_litert
@pytest.mark.parametrize("method, dtype, max_ratio", [("fp16", "fp32", 0.6), ("int8-dynamic", "int8", 0.35),
                                                      ("int8-static", "int8", 0.35)])
def test_tflite_quantized_variants_shrink_and_agree(converted, method, dtype, max_ratio):
    spec, fp32, data, ref, out = converted
    path = (out / "tflite" / "model_fp16.tflite" if method == "fp16"
            else tflite.quantize(fp32, method, data.calib_x, 8, out / f"model_{method}.tflite"))
    assert path.stat().st_size < max_ratio * fp32.stat().st_size
    pred, engine = _predict(path, spec, data, method)
    assert engine.dtype == tflite.PRECISION[method] == dtype
    assert np.mean(pred == ref) >= 0.95
    assert method in tflite.NOTES[method]          # what export writes into the row's notes for this method


def test_tflite_converter_process_failure_is_one_readable_line(tmp_path, monkeypatch):
    import subprocess
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "Traceback (most recent call last):\n  ...\nValueError: unsupported op aten::foo\n"))
    with pytest.raises(RuntimeError, match="exited 1: ValueError: unsupported op aten::foo"):
        tflite.build_in_child(torch_linear(), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32),
                              "none", tmp_path)


def torch_linear():
    import torch
    return torch.nn.Linear(4, 2)


# ---------------------------------------------------------------- layout and int8 I/O, with a fake interpreter


class FakeInterpreter:
    """FAKE LiteRT interpreter: NHWC int8 input, int8 output; records what it was given."""

    def __init__(self, in_shape, in_dtype=np.int8, q_in=(0.5, 3), q_out=(0.25, -2)):
        self.inp = {"index": 0, "shape": np.array(in_shape), "dtype": in_dtype, "quantization": q_in}
        self.out = {"index": 9, "shape": np.array([in_shape[0], 2]), "dtype": np.int8, "quantization": q_out}
        self.given = None

    def get_input_details(self):
        return [self.inp]

    def get_output_details(self):
        return [self.out]

    def set_tensor(self, index, value):
        assert index == 0 and value.dtype == self.inp["dtype"] and value.flags.c_contiguous
        self.given = value

    def invoke(self):
        pass

    def get_tensor(self, index):
        return np.array([[10, -2]] * self.given.shape[0], dtype=np.int8)


def test_make_runner_fake_interpreter_transposes_to_nhwc_and_quantizes_int8_io():
    fake = FakeInterpreter((2, 4, 4, 3))
    run = tflite.make_runner(fake, (2, 3, 4, 4))
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[:, 1] = 1.0           # channel 1 set: must land in the last axis
    x[0, 2, 0, 0] = 1000.0  # saturates at int8 max
    y = run(x)
    assert fake.given.shape == (2, 4, 4, 3)
    assert fake.given[0, 0, 0, 1] == 1 / 0.5 + 3 and fake.given[0, 1, 1, 0] == 3 and fake.given[0, 0, 0, 2] == 127
    np.testing.assert_allclose(y, [[(10 + 2) * 0.25, 0.0]] * 2)
    assert y.dtype == np.float32


def test_make_runner_fake_interpreter_refuses_an_unexpected_shape():
    with pytest.raises(RuntimeError, match="expects input"):
        tflite.make_runner(FakeInterpreter((1, 5, 5, 3)), (1, 3, 4, 4))


# ---------------------------------------------------------------- probe and check


def test_probe_without_the_packages_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    a = tflite.TFLiteBackend().probe()
    assert not a.available and "litert-torch and ai-edge-litert not installed" in a.reason
    assert "fleetbench[tflite]" in a.reason


@pytest.mark.parametrize("source, device, method, words", [
    ("onnx:/x.onnx", "cpu", "none", "onnx: model"),
    ("timm:test_resnet", "cuda", "none", "no device 'cuda'"),
    ("timm:test_resnet", "cpu", "bf16", "no bf16"),
])
def test_check_refuses_what_litert_cannot_do(source, device, method, words):
    from fleetbench.agent import compress
    spec = ModelSpec(name="m", source=source, num_classes=10, input_size=(3, 32, 32))
    job, backend = make_job(spec, None, method=method, device=device), tflite.TFLiteBackend()
    assert words in (backend.check(job) or compress.check(job, backend))   # bf16: declared in `precisions`
