"""The throughput scenario: concurrent calls keep the engine busy; items/s over wall time."""
import threading
import time

import pytest

from fleetbench.agent import measure
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


def test_throughput_row_for_onnxruntime_and_unsupported_elsewhere(demo_model_spec):
    spec = MeasureSpec(warmup_iters=2, min_iters=50, min_duration_s=0.5, max_duration_s=10, threads=2, streams=2)
    r = run_job(make_job(demo_model_spec, spec, backend="onnxruntime", batch_size=4, scenario="throughput"))
    assert r.status == "ok", r.error
    assert (r.scenario, r.streams, r.threads) == ("throughput", 2, 1)   # 2 threads shared by 2 streams
    assert r.iterations >= 50 and r.measure_s >= 0.5
    assert r.throughput_ips == pytest.approx(4 * r.iterations / r.measure_s)
    assert r.latency_p50_ms > 0 and r.valid is not None
    lat = run_job(make_job(demo_model_spec, spec, backend="onnxruntime", batch_size=4))
    assert lat.scenario == "latency" and lat.streams is None and lat.job_id != r.job_id
    ov = run_job(make_job(demo_model_spec, spec, backend="openvino", scenario="throughput"))
    assert ov.status == "unsupported" and "throughput scenario" in ov.error
