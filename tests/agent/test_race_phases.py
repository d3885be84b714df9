"""A race's steps in the agent (agent/sequential.py, agent/runner.py): a timing block is timed only; a
quality step stops its sequential check at the first answer and keeps its counts as evidence."""
import dataclasses
import json

import numpy as np

from fleetbench.agent import sequential
from fleetbench.agent.runner import run_job
from fleetbench.shared import race_stats
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, SearchSpec


def _job(model, measure, backend, phase, method="none"):
    return Job(sweep="t", model=model, dataset=DatasetSpec(kind="digits", limit=400),
               compression=CompressionSpec(method=method), backend=backend, device="cpu", batch_size=1,
               measure=measure, phase=phase, search=SearchSpec(strategy="race", chunk=100, quality_bound=0.02))


def test_quality_step_stops_at_the_first_answer_and_a_block_is_timed_only(demo_model_spec, quick_measure):
    backend = "onnxruntime"   # in the measuring process (the race's end-to-end test runs pytorch in the job's)
    row = run_job(_job(demo_model_spec, quick_measure, backend, "quality"))
    assert row.status == "ok", row.error
    counts = json.loads(row.race)
    # fp32 against its own reference: no disagreement; certain within 2% after 300 images at alpha 0.03/4
    assert counts["decision"] == "within" and counts["disagree"] == 0
    assert row.eval_samples == counts["n"] == 300 < counts["total"] == 400
    assert row.top1_agreement == 1.0 and row.samples_ms
    assert row.quality_from.startswith("sequential: 300 of 400")
    block = run_job(_job(demo_model_spec, quick_measure, backend, "block"))
    assert block.status == "ok" and block.samples_ms and block.latency_p50_ms > 0
    assert block.eval_samples is None and block.top1_agreement is None and block.race is None
    # the node's cached predictions of the whole set (a full job made them): their counts are the evidence
    assert run_job(_job(demo_model_spec, quick_measure, backend, "full")).eval_samples == 400
    again = json.loads(run_job(_job(demo_model_spec, quick_measure, backend, "quality")).race)
    assert again["n"] == again["total"] == 400 and again["decision"] == "within"


def test_race_steps_have_ids_of_their_own_and_a_full_job_keeps_its_exhaustive_id(demo_model_spec, quick_measure):
    full = _job(demo_model_spec, quick_measure, "onnxruntime", "full")
    plain = dataclasses.replace(full, search=None)
    assert full.job_id == plain.job_id
    assert len({full.job_id, dataclasses.replace(full, phase="quality").job_id,
                dataclasses.replace(full, phase="block").job_id}) == 3


def test_sequential_check_on_a_known_disagreement_rate():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 10, 2000)
    pred = ref.copy()
    pred[rng.random(2000) < 0.2] += 1      # 20% disagree: outside 1% after the first chunk
    seq = sequential.Sequential(race_stats.seeded_order(2000, 0), ref, None, 0.01, 0.03, 200)
    got, counts = sequential.predict_sequential(lambda b: np.eye(11)[pred[b[:, 0, 0, 0].astype(int)]],
                                                np.arange(2000, dtype=np.float32).reshape(2000, 1, 1, 1), 1, seq)
    assert counts["n"] == 200 and sequential.verdict(counts).decision == race_stats.OUTSIDE
    assert np.array_equal(got, pred[seq.order[:200]])
