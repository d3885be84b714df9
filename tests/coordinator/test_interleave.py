"""--repeat-interleaved: round order and the merge of a job's rounds into one row."""
import numpy as np
import pytest

from fleetbench.coordinator.interleave import Collector, merge, rounds
from fleetbench.shared.job import Job, Result
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec


def job(backend, repeats=3, p99=10):
    model = ModelSpec(name="m", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32))
    return Job(sweep="s", model=model, dataset=DatasetSpec(), compression=CompressionSpec(method="none"),
               backend=backend, device="cpu", batch_size=2, measure=MeasureSpec(repeats=repeats, p99_min_samples=p99))


def part(j, samples, validity=None, start="2026-01-01T00:00:00+00:00", end="2026-01-01T00:00:01+00:00"):
    r = Result.for_job(j, samples_ms=list(samples), window_p50s_ms=[float(np.median(samples))],
                       window_iters=[len(samples)], measure_s=sum(samples) / 1e3, valid=validity is None,
                       validity=validity, other_cpu_cores=0.1, cv_pct=5.0, cpu_steal_pct=0.0,
                       window_start=start, window_end=end, repeats=1)
    return r


def test_rounds_go_a_b_c_a_b_c_with_one_window_each():
    a, b, c = job("pytorch"), job("onnxruntime"), job("openvino", repeats=2)
    order, owner = rounds([a, b, c])
    assert [owner[r.job_id].backend for r in order] == ["pytorch", "onnxruntime", "openvino"] * 2 + [
        "pytorch", "onnxruntime"]
    assert all(r.measure.repeats == 1 and r.measure.p99_min_samples == 0 for r in order)
    assert len({owner[r.job_id].job_id for r in order}) == 3
    assert all(r.job_id not in (a.job_id, b.job_id) for r in order)


def test_merge_of_rounds():
    a = job("pytorch", repeats=3, p99=10)
    order, owner = rounds([a])
    rj = order[0]
    parts = [part(rj, [10.0, 11.0, 12.0]), part(rj, [20.0, 21.0, 22.0], validity="cv 31% > 10%",
                                                 end="2026-01-01T00:00:05+00:00"),
             part(rj, [12.0, 13.0, 14.0], end="2026-01-01T00:00:09+00:00")]
    c = Collector(owner)
    assert c.add(parts[0]) is None and c.add(parts[1]) is None
    assert c.pending(rj.job_id) is parts[1]
    row = c.add(parts[2])
    assert row.job_id == a.job_id and row.repeats == 3 and row.iterations == 9
    assert row.window_p50s_ms == [11.0, 21.0, 13.0] and row.latency_p50_ms == 13.0
    assert (row.latency_p50_ci_low_ms, row.latency_p50_ci_high_ms) == (11.0, 21.0)
    assert row.samples_ms == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0, 12.0, 13.0, 14.0]
    assert row.latency_mean_ms == pytest.approx(np.mean(row.samples_ms))
    assert row.validity == "round 2: cv 31% > 10%; p99 from 9 samples (needs 10)" and row.valid is False
    assert row.window_end == "2026-01-01T00:00:09+00:00"
    assert row.throughput_ips == pytest.approx(2 * 9 / (sum(row.samples_ms) / 1e3))
    failed = Result.for_job(rj, status="failed", stage="measure", error="boom")
    row = merge(a, [parts[0], failed, parts[2]])
    assert (row.status, row.error, row.job_id) == ("failed", "boom", a.job_id)
