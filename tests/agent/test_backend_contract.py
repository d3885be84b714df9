"""The backend contract: every registered backend goes through the same checks via run_job on the demo model.

Available here -> an `ok` fp32 row with every figure filled in and quality equal to the reference.
Not available here (tensorrt without an NVIDIA GPU, ...) -> an `unsupported` row that says why.
`null` is a test-only engine without a model (it measures the coordinator's own overhead): not a contract member.
"""
import pytest

from fleetbench.agent import backends
from fleetbench.agent.runner import run_job
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec
from fleetbench.shared.vocab import METHODS

CONTRACT = [b for b in backends.names() if b != "null"]


def test_every_engine_of_the_course_is_registered():
    assert {"pytorch", "torchscript", "onnxruntime", "openvino", "tensorrt", "tflite"} <= set(CONTRACT)


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(KeyError, match="valid: .*tflite"):
        backends.get("tensorrtt")


@pytest.mark.parametrize("name", CONTRACT)
def test_probe_never_raises_and_explains_itself(name):
    a = backends.get(name).probe()
    assert isinstance(a.available, bool)
    assert a.devices if a.available else (a.reason and a.reason.startswith(f"{name}:"))


@pytest.mark.parametrize("name", CONTRACT)
def test_backend_contract_on_the_demo_model(name, demo_model_spec, quick_measure):
    avail = backends.get(name).probe()
    device = ("cpu" if "cpu" in avail.devices else avail.devices[0]) if avail.available else "cpu"
    job = Job(sweep="contract", model=demo_model_spec, dataset=DatasetSpec(kind="digits", limit=64),
              compression=CompressionSpec(method="none"), backend=name, device=device, batch_size=8,
              measure=quick_measure)
    r = run_job(job)
    if not avail.available:
        assert r.status == "unsupported" and r.error == avail.reason
        return
    assert r.status == "ok", f"{name}:{device} {r.stage}: {r.error}"
    assert r.dtype == "fp32" and r.provider
    for f in ("latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_min_ms",
              "first_ms", "throughput_ips", "size_mb", "size_compressed_mb", "ram_peak_mb"):
        assert getattr(r, f) is not None and getattr(r, f) > 0, f
    # the loop stops at min_iters, or earlier at max_duration_s (a loaded machine): never without a sample
    assert r.iterations >= 1
    assert r.iterations >= quick_measure.min_iters or r.measure_s >= 0.9 * quick_measure.max_duration_s
    assert r.build_s >= 0 and r.export_s >= 0
    assert None not in (r.accuracy, r.precision_macro, r.recall_macro, r.f1_macro)
    assert r.eval_samples == 64 and r.top1_agreement >= 0.99
    if device != "cpu":
        assert r.vram_source and r.vram_peak_mb is not None   # every GPU row says how VRAM was measured
    else:
        assert r.vram_peak_mb is None


# ---- every (precision method x backend): ok in the declared dtype, or unsupported with a reason ----------

PRECISION = [m for m, info in METHODS.items() if info.level == "precision"]


@pytest.mark.parametrize("method", PRECISION)
@pytest.mark.parametrize("name", CONTRACT)
def test_every_method_on_every_backend_is_ok_or_unsupported_never_a_silent_fallback(
        name, method, demo_model_spec, quick_measure):
    backend = backends.get(name)
    declared = backend.precisions[method]
    avail = backend.probe()
    device = ("cpu" if "cpu" in avail.devices else avail.devices[0]) if avail.available else "cpu"
    job = Job(sweep="contract", model=demo_model_spec, dataset=DatasetSpec(kind="digits", limit=32),
              compression=CompressionSpec(method=method), backend=name, device=device, batch_size=8,
              measure=quick_measure)
    r = run_job(job)
    assert r.status in ("ok", "unsupported"), f"{name}/{method} {r.stage}: {r.error}"
    if isinstance(declared, Unsupported):
        assert (r.status, r.error) == ("unsupported", str(declared)) or not avail.available
        return
    if r.status == "unsupported":   # not on this node or device: the row says why, in the backend's name
        assert r.error and r.error.startswith(f"{name}:") or r.error == avail.reason, r.error
        return
    # ok: it computes in the declared precision, or the export says in a note what it really ran
    assert r.dtype == declared or (r.notes and method in r.notes), (r.dtype, declared, r.notes)
    assert r.top1_agreement is not None and r.latency_p50_ms > 0
