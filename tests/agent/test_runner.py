"""run_job without Ray: real engines on the real demo model."""
import pytest

from fleetbench.agent.runner import run_job
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, ModelSpec

CPU_BACKENDS = ["pytorch", "torchscript", "onnxruntime", "openvino"]


def make_job(model, measure, backend="pytorch", batch_size=1, device="cpu", limit=48, **kw):
    return Job(sweep="t", model=model, dataset=DatasetSpec(kind="digits", limit=limit),
               compression=kw.pop("compression", CompressionSpec(method="none")), backend=backend, device=device,
               batch_size=batch_size, measure=measure, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_engine_row_is_complete_and_honest(backend, demo_model_spec, quick_measure):
    r = run_job(make_job(demo_model_spec, quick_measure, backend=backend, batch_size=8, limit=60))
    assert r.status == "ok", r.error
    assert r.dtype == "fp32" and r.threads >= 1 and r.provider
    assert r.iterations >= 3 and 0 < r.latency_min_ms <= r.latency_p50_ms <= r.latency_p90_ms <= r.latency_p99_ms
    assert r.throughput_ips == pytest.approx(8 * r.iterations / r.measure_s)
    assert r.first_ms > 0 and r.build_s >= 0 and r.export_s >= 0
    assert 1.0 < r.size_mb < 2.0           # 373k fp32 parameters, every file counted
    assert 0 < r.size_compressed_mb < r.size_mb
    assert r.ram_peak_mb > 0 and r.ram_delta_mb is not None
    assert r.eval_samples == 60             # 7 full batches and a padded one, padding dropped
    assert r.top1_agreement >= 0.99 and r.accuracy >= 0.95 and r.f1_macro >= 0.9
    assert r.vram_peak_mb is None           # no GPU row


def test_synthetic_dataset_leaves_quality_empty_but_measures_agreement(demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure, backend="onnxruntime")
    job = Job(**{**job.__dict__, "dataset": DatasetSpec(kind="synthetic", limit=16)})
    r = run_job(job)
    assert r.status == "ok", r.error
    assert r.accuracy is None and r.f1_macro is None
    assert r.top1_agreement == 1.0


def test_timm_model_without_weights_is_reinitialised_and_says_so(quick_measure):
    spec = ModelSpec(name="r", source="timm:resnet10t", num_classes=10, input_size=(3, 32, 32))
    r = run_job(make_job(spec, quick_measure, limit=8))
    assert r.status == "ok", r.error
    assert "re-initialised" in r.notes


def test_runtime_error_becomes_failed_row_with_stage(quick_measure, tmp_path, monkeypatch):
    # a cache of its own: an ONNX export of this model made at another batch size (an end-to-end test's)
    # has no Python check left in it, and the batch-8 export must be made here
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    trap = ModelSpec(name="trap", source="python:tests.fixtures.bad_models:batch_trap", num_classes=10,
                     input_size=(3, 16, 16))
    ok = run_job(make_job(trap, quick_measure, batch_size=1, limit=16))
    assert ok.status == "ok", ok.error
    eager = run_job(make_job(trap, quick_measure, batch_size=8, limit=16))
    assert (eager.status, eager.stage) == ("failed", "measure")
    assert "BatchTrap refuses a batch of 8" in eager.error and "\n" not in eager.error
    exported = run_job(make_job(trap, quick_measure, backend="onnxruntime", batch_size=8, limit=16))
    assert (exported.status, exported.stage) == ("failed", "export")


def test_load_failures_are_rows(quick_measure, tmp_path):
    missing = ModelSpec(name="m", source="timm:test_resnet", checkpoint=str(tmp_path / "nope.safetensors"),
                        num_classes=10, input_size=(3, 32, 32))
    r = run_job(make_job(missing, quick_measure))
    assert (r.status, r.stage) == ("failed", "load") and "checkpoint not found" in r.error
    wrong = ModelSpec(name="m", source="timm:resnet10t", checkpoint="examples/digits/model.safetensors",
                      num_classes=10, input_size=(3, 32, 32))
    r = run_job(make_job(wrong, quick_measure))
    assert (r.status, r.stage) == ("failed", "load") and "does not fit" in r.error


def test_unavailable_device_and_unknown_backend_are_unsupported(demo_model_spec, quick_measure):
    r = run_job(make_job(demo_model_spec, quick_measure, backend="openvino", device="npu"))
    assert r.status == "unsupported" and "no device 'npu'" in r.error
    r = run_job(make_job(demo_model_spec, quick_measure, backend="pytorch", device="cuda:63"))   # no node has it
    assert r.status == "unsupported" and "cuda:63" in r.error
