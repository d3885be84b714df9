"""The throughput scenario: concurrent calls keep the engine busy; items/s over wall time."""
import os
import re
import threading
import time

import pytest

from fleetbench.agent import limits, measure, peak
from fleetbench.agent.runner import run_job
from fleetbench.shared.sweep import MeasureSpec
from tests.agent.test_runner import make_job


def test_concurrent_loop_keeps_several_calls_in_flight():
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def call():
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1
    spec = MeasureSpec(warmup_iters=0, min_iters=40, min_duration_s=0.2, max_duration_s=30)
    samples, wall = measure.concurrent_loop(call, spec, streams=4)
    assert most[0] == 4 and len(samples) >= 40 and wall >= 0.2
    assert all(s >= 0.009 for s in samples)

    def boom():
        raise RuntimeError("engine failed")
    with pytest.raises(RuntimeError, match="engine failed"):
        measure.concurrent_loop(boom, spec, streams=2)


def test_throughput_row_for_onnxruntime_and_unsupported_elsewhere(demo_model_spec, monkeypatch):
    spec = MeasureSpec(warmup_iters=2, min_iters=50, min_duration_s=0.5, max_duration_s=10, threads=2, streams=2)
    probed = []
    node_peak = peak.node_peak
    monkeypatch.setattr(peak, "node_peak", lambda dtype, threads, *a: probed.append(threads) or node_peak(dtype, threads, *a))
    r = run_job(make_job(demo_model_spec, spec, backend="onnxruntime", batch_size=4, scenario="throughput"))
    assert r.status == "ok", r.error
    assert (r.scenario, r.streams, r.threads) == ("throughput", 2, 1)   # 2 threads shared by 2 streams
    # the achieved rate is every stream's: the peak beside it is measured on all their threads, not one stream's
    assert probed == [2] and r.efficiency_pct == pytest.approx(100 * r.achieved_gflops_s / r.peak_gflops_s)
    # the CPUs the engine's (measuring) process could use are recorded beside its threads
    assert (r.cpus_allowed, r.cpu_quota) == (limits.cpu_list(os.sched_getaffinity(0)), limits.cgroup_quota())
    assert r.iterations >= 50 and r.measure_s >= 0.5
    assert r.throughput_ips == pytest.approx(4 * r.iterations / r.measure_s)
    assert r.latency_p50_ms > 0 and r.valid is not None
    lat = run_job(make_job(demo_model_spec, spec, backend="onnxruntime", batch_size=4))
    assert lat.scenario == "latency" and lat.streams is None and lat.job_id != r.job_id
    null = run_job(make_job(demo_model_spec, spec, backend="null", scenario="throughput"))
    assert null.status == "unsupported" and "throughput scenario cannot drive" in null.error


def test_openvino_throughput_row_uses_async_requests_and_all_threads(demo_model_spec):
    """The real OpenVINO runtime: THROUGHPUT hint, OPTIMAL_NUMBER_OF_INFER_REQUESTS async requests, engine
    built with every thread (not shared out as for concurrent calls)."""
    import openvino as ov
    spec = MeasureSpec(warmup_iters=2, min_iters=40, min_duration_s=0.3, max_duration_s=10, threads=2)
    r = run_job(make_job(demo_model_spec, spec, backend="openvino", batch_size=4, scenario="throughput"))
    assert r.status == "ok", r.error
    assert r.threads == 2 and r.dtype == "fp32" and r.top1_agreement >= 0.99
    assert "PERFORMANCE_HINT THROUGHPUT" in r.notes and "(OPTIMAL_NUMBER_OF_INFER_REQUESTS)" in r.notes
    compiled = ov.Core().compile_model(_tiny_ir(), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": "2"})
    assert r.streams == int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) >= 1
    assert r.iterations >= 40 and r.measure_s >= 0.3
    assert r.throughput_ips == pytest.approx(4 * r.iterations / r.measure_s)
    assert 0 < r.latency_min_ms <= r.latency_p50_ms <= r.latency_p99_ms
    pinned = run_job(make_job(demo_model_spec, spec.model_copy(update={"streams": 3}), backend="openvino",
                              batch_size=4, scenario="throughput"))
    assert pinned.status == "ok", pinned.error
    # 3 requests in flight; the plugin's streams as it reports them (it caps them at the threads it has)
    assert pinned.streams == 3 and re.search(r"NUM_STREAMS [123], 3 async infer requests \(measure.streams\)",
                                             pinned.notes), pinned.notes


def _tiny_ir():
    """A one-op model, compiled only to ask the plugin how many requests its THROUGHPUT hint wants."""
    import openvino as ov
    import openvino.opset13 as ops
    x = ops.parameter([4, 3, 32, 32], ov.Type.f32)
    return ov.Model([ops.relu(x)], [x])


def test_openvino_async_driver_counts_every_request_with_its_latency():
    import numpy as np
    import openvino as ov

    from fleetbench.agent.backends.openvino.throughput import AsyncDriver
    compiled = ov.Core().compile_model(_tiny_ir(), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2"})
    driver = AsyncDriver(ov, compiled, requests=3)
    assert driver.streams == 2 and len(driver.requests) == 3
    window = driver.window(np.ones((4, 3, 32, 32), np.float32), MeasureSpec(warmup_iters=1, min_iters=200,
                                                                             min_duration_s=0.2, max_duration_s=10))
    assert len(window.samples_s) >= 200 and window.duration_s >= 0.2
    assert all(0 < s < window.duration_s for s in window.samples_s)
    assert window.cpu is None or window.cpu.other_cpu_cores >= 0
