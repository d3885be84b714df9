"""Extending fleetbench as a contributor would: a new backend is one module and one registry line; a new
model-level compression method is one module and one method-table entry. Each is done here, then run."""
import pytest

from fleetbench.agent import backends
from fleetbench.agent.backends.base import Artifact, Backend
from fleetbench.agent.runner import run_job
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, ModelSpec, parse_sweep
from fleetbench.shared.vocab import METHODS, BackendName, MethodInfo

LINEAR = ModelSpec(name="linear", source="python:tests.fixtures.numpy_backend:linear_classifier", num_classes=10,
                   input_size=(3, 16, 16))


def job(backend, method="none", spec=LINEAR, quick=None):
    return Job(sweep="t", model=spec, dataset=DatasetSpec(kind="digits", limit=48),
               compression=CompressionSpec.parse(method), backend=backend, device="cpu", batch_size=4,
               measure=quick)


@pytest.fixture
def numpy_backend():
    backends.register("numpy", "tests.fixtures.numpy_backend:NumpyBackend")   # the one registry line
    yield
    backends.unregister("numpy")


def test_a_new_backend_is_one_module_and_one_registry_line(numpy_backend, quick_measure):
    sweep = parse_sweep({"name": "s", "models": [LINEAR.model_dump()], "backends": ["numpy", "onnxruntime"]})
    assert sweep.backends == ["numpy", "onnxruntime"]                 # sweep files may name it at once
    r = run_job(job("numpy", quick=quick_measure))
    assert r.status == "ok", (r.stage, r.error)
    assert r.dtype == "fp32" and r.provider.startswith("numpy-")
    assert r.notes.split("; ")[0] == "numpy fp32 weights"   # then an energy note where no counter is readable
    assert r.top1_agreement >= 0.98 and r.latency_p50_ms > 0 and r.size_mb > 0   # agrees with torch eager
    half = run_job(job("numpy", "fp16", quick=quick_measure))
    assert half.status == "ok" and half.dtype == "fp16" and half.size_mb < 0.6 * r.size_mb
    no = run_job(job("numpy", "int8-static", quick=quick_measure))
    assert (no.status, no.error) == ("unsupported", "numpy: no int8 kernels")


def test_a_new_model_level_method_is_one_module_and_one_table_entry(monkeypatch, demo_model_spec, quick_measure):
    monkeypatch.setitem(METHODS, "zero-bias", MethodInfo(None, "model", "tests.fixtures.zero_bias:apply_zero_bias"))
    sweep = parse_sweep({"name": "s", "models": [demo_model_spec.model_dump()], "backends": ["onnxruntime"],
                         "compression": ["zero-bias"]})
    assert sweep.compression[0].name == "zero-bias"
    r = run_job(job("onnxruntime", "zero-bias", spec=demo_model_spec, quick=quick_measure))
    assert r.status == "ok", (r.stage, r.error)
    assert "zero-bias: " in r.notes and r.dtype == "fp32" and r.top1_agreement is not None


def test_the_sweep_schema_names_exactly_the_registered_backends():
    from fleetbench.shared.errors import SweepError
    assert set(backends.names()) == set(BackendName)                  # every shipped engine has its typed name
    for name in backends.names():
        parse_sweep({"name": "s", "models": [LINEAR.model_dump()], "backends": [name]})
    with pytest.raises(SweepError, match=r"unknown backend 'numpy' \(valid: pytorch, torchscript, onnxruntime, "
                                         r"openvino, tensorrt, tflite\)"):
        parse_sweep({"name": "s", "models": [LINEAR.model_dump()], "backends": ["numpy"]})


def test_a_backend_that_forgets_a_required_method_fails_at_registration():
    class Half(Backend):
        name = "half"
        precisions = {m: "fp32" for m in ("fp16", "bf16", "int8-dynamic", "int8-static")}

        def probe(self):
            raise NotImplementedError

        def check(self, job):
            return None
    with pytest.raises(TypeError, match="backend Half: missing required method.*export, load"):
        backends.register("half", Half)
    assert "half" not in backends.names()


def test_a_backend_that_leaves_a_precision_method_undeclared_fails_at_registration():
    class Silent(Backend):
        name = "silent"
        precisions = {"fp16": "fp16"}   # bf16 and the int8 methods would otherwise fall back to fp32 unseen

        def probe(self):
            raise NotImplementedError

        def check(self, job):
            return None

        def export(self, ctx):
            return Artifact([])

        def load(self, artifact, job, threads):
            raise NotImplementedError
    with pytest.raises(TypeError, match="backend silent: precision method.*bf16, int8-dynamic, int8-static"):
        backends.register("silent", Silent)


def test_every_registered_backend_passes_registration():
    for name in backends.names():
        assert backends.backend_class(name).name == name
