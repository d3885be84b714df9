"""The coordinator stores the identity of the job it sent and only checked figures from the agent's
reply (coordinator/trust.py). Ray-free: the reply is built as an agent would send it."""
import dataclasses
import math

import pytest

from fleetbench.coordinator.trust import accept
from fleetbench.shared.job import Job, Result
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec


@pytest.fixture
def job(demo_model_spec, quick_measure):
    return Job(sweep="s", model=demo_model_spec, dataset=DatasetSpec(kind="digits", limit=32),
               compression=CompressionSpec(method="none"), backend="onnxruntime", device="cpu",
               batch_size=4, measure=quick_measure, node_key="node-a", node_id="a" * 56, hostname="host-a",
               hw_kind="cpu")


def ok_reply(job, **kw):
    base = dict(status="ok", latency_p50_ms=1.5, latency_mean_ms=1.6, throughput_ips=2000.0, accuracy=0.9,
                iterations=100, threads=2, dtype="fp32", cache_hit=False, ram_delta_mb=-0.5,
                started_at="2026-01-01T00:00:00.000+00:00", finished_at="2026-01-01T00:00:01.000+00:00")
    base.update(kw)
    return Result.for_job(job, **base)


def test_a_valid_reply_is_stored_as_measured(job):
    row = accept(job, ok_reply(job))
    assert row == dataclasses.replace(ok_reply(job))


def test_a_valid_reply_with_its_windows_and_samples_is_stored_as_measured(job):
    reply = ok_reply(job, samples_ms=[1.4, 1.5, 1.6], window_p50s_ms=[1.5], window_iters=[3], repeats=1,
                     valid=False, validity="cv 12% (> 10)", window_start="2026-01-01T00:00:00.100+00:00",
                     window_end="2026-01-01T00:00:00.900+00:00", energy_j_per_item=0.01)
    assert accept(job, reply) == reply


def test_host_and_scenario_come_from_the_job(job):
    forged = dataclasses.replace(ok_reply(job), host_id="another-machine", scenario="throughput")
    row = accept(job, forged)
    assert (row.host_id, row.scenario) == (job.host_id, job.scenario) == ("", "latency")


def test_identity_fields_come_from_the_job_not_the_reply(job):
    forged = dataclasses.replace(ok_reply(job), job_id="other-job", node_id="b" * 56, hostname="host-b",
                                 model="other", compression="int8", backend="tensorrt", device="cuda:0",
                                 batch_size=64, sweep="other", hw_kind="nvidia", run_id="someone-elses-run")
    row = accept(job, forged)
    assert row.status == "ok" and row.latency_p50_ms == 1.5
    assert (row.job_id, row.node_id, row.hostname, row.model, row.compression, row.backend, row.device,
            row.batch_size, row.sweep, row.hw_kind, row.run_id) == (
        job.job_id, "a" * 56, "host-a", job.model.name, "none", "onnxruntime", "cpu", 4, "s", "cpu", None)


@pytest.mark.parametrize("field, value, why", [
    ("latency_p50_ms", math.nan, "latency_p50_ms=nan is not a finite number"),
    ("latency_p50_ms", -1.0, "latency_p50_ms=-1.0 is negative"),
    ("latency_mean_ms", math.inf, "latency_mean_ms=inf is not a finite number"),
    ("throughput_ips", "fast", "throughput_ips='fast' is not a finite number"),
    ("throughput_ips", True, "throughput_ips=True is not a finite number"),
    ("accuracy", 1.5, "accuracy=1.5 is not between 0 and 1"),
    ("top1_agreement", -0.1, "top1_agreement=-0.1 is not between 0 and 1"),
    ("iterations", -3, "iterations=-3 is not a whole number >= 0"),
    ("iterations", 2.5, "iterations=2.5 is not a whole number >= 0"),
    ("cache_hit", "yes", "cache_hit='yes' is not true or false"),
    ("started_at", "yesterday", "started_at='yesterday' is not an ISO timestamp"),
    ("notes", "x" * 5000, "notes is not a text of at most 4000 characters"),
    ("status", "great", "status 'great' is not one of ok, failed, unsupported"),
    ("stage", "lunch", "stage 'lunch' is not one of load, compress, export, build, measure, evaluate"),
    ("latency_p50_ms", None, "an ok row without latency_p50_ms"),
    ("samples_ms", [1.0, math.nan], "samples_ms[1]=nan is not a finite number"),
    ("samples_ms", "1.0, 2.0", "samples_ms is not a list of at most 10000000 figures"),
    ("window_iters", [100, -1], "window_iters[1]=-1 is not a whole number >= 0"),
    ("valid", "yes", "valid='yes' is not true or false"),
    ("window_start", "soon", "window_start='soon' is not an ISO timestamp"),
])
def test_a_bad_figure_makes_a_failed_row_without_figures(job, field, value, why):
    row = accept(job, ok_reply(job, **{field: value}))
    assert row.status == "failed" and row.error == f"agent reply refused: {why}"
    assert row.stage == "measure"
    assert row.latency_p50_ms is None and row.accuracy is None and row.job_id == job.job_id


@pytest.mark.parametrize("reply", [None, {"status": "ok"}, "ok", 42])
def test_a_reply_that_is_not_a_result_is_a_failed_row(job, reply):
    row = accept(job, reply)
    assert row.status == "failed" and row.stage == "measure"
    assert row.error == f"agent reply refused: agent replied with a {type(reply).__name__}, not a result"


def test_a_failed_reply_keeps_its_stage_and_reason(job):
    row = accept(job, Result.for_job(job, status="failed", stage="export", error="ValueError: boom"))
    assert (row.status, row.stage, row.error) == ("failed", "export", "ValueError: boom")
