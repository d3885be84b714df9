"""The race planner (coordinator/race.py `decide`): what runs next, from stored blocks and rows only."""
import json

import pytest

from fleetbench.coordinator import race
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, SearchSpec

SEARCH = SearchSpec(strategy="race", min_rounds=2, max_rounds=4)


@pytest.fixture
def configs(demo_model_spec):
    return [Job(sweep="s", model=demo_model_spec, dataset=DatasetSpec(kind="synthetic", limit=1000),
                compression=CompressionSpec(method=m), backend=b, device="cpu", batch_size=1,
                measure=MeasureSpec(), node_id="n1", search=SEARCH)
            for b, m in (("onnxruntime", "none"), ("openvino", "none"), ("onnxruntime", "int8-static"))]


def quality(disagree: int, n: int = 200, p50: float = 1.0, size: float = 1.0) -> dict:
    counts = {"n": n, "total": 1000, "disagree": disagree, "bound": 0.01, "alpha": 0.03, "chunk": 200}
    return {"phase": "quality", "status": "ok", "p50_ms": p50, "size_mb": size, "evidence": json.dumps(counts),
            "error": None}


def speed(p50: float) -> dict:
    return {"phase": "speed", "status": "ok", "p50_ms": p50, "size_mb": None, "evidence": None, "error": None}


def test_first_every_configuration_gets_its_quality_step(configs):
    d = race.decide(configs, {}, {}, SEARCH)
    assert [(j.phase, r) for j, r, _ in d.jobs] == [("quality", 1)] * 3
    assert d.jobs[0][0].measure.min_duration_s == SEARCH.block_s and d.jobs[0][0].job_id != configs[0].job_id


def test_quality_outside_is_eliminated_with_evidence_and_the_rest_race_on(configs):
    a, b, c = configs
    blocks = {a.job_id: {1: quality(0, 600)}, b.job_id: {1: quality(0, 600, p50=1.1)}, c.job_id: {1: quality(40)}}
    d = race.decide(configs, blocks, {}, SEARCH)
    assert [(r.job_id, r.status, r.stage) for r in d.rows] == [(c.job_id, "eliminated", "quality")]
    assert d.rows[0].error.startswith("quality outside the bound 0.01: drop 0.2000")
    assert sorted((j.phase, r) for j, r, _ in d.jobs) == [("block", 2), ("block", 2)]


def test_a_round_begun_is_finished_first_and_a_slower_one_is_eliminated_after_min_rounds(configs):
    a, b, _ = configs
    blocks = {a.job_id: {1: quality(0, 600), 2: speed(1.0)}, b.job_id: {1: quality(0, 600, p50=3.0)}}
    d = race.decide(configs[:2], blocks, {}, SEARCH)                       # resumed mid-round 2
    assert [(j.backend, r) for j, r, _ in d.jobs] == [("openvino", 2)]
    blocks[b.job_id][2] = speed(3.1)
    blocks[a.job_id][1]["p50_ms"], blocks[a.job_id][2]["p50_ms"] = 1.0, 1.02
    d = race.decide(configs[:2], blocks, {}, SEARCH)
    assert [(r.backend, r.status, r.stage) for r in d.rows] == [("openvino", "eliminated", "speed")]
    assert d.rows[0].error.startswith("slower than onnxruntime none: ratio 3.0") and "after 2 rounds" in d.rows[0].error
    assert d.finals == [a] and not d.jobs


def test_a_smaller_slower_one_stays_on_the_pareto_front_to_the_final(configs):
    a, b, _ = configs
    blocks = {a.job_id: {1: quality(0, 600, size=4.0), 2: speed(1.0)},
              b.job_id: {1: quality(0, 600, p50=3.0, size=1.0), 2: speed(3.05)}}
    d = race.decide(configs[:2], blocks, {}, SEARCH)
    assert not d.rows and sorted(c.backend for c in d.finals) == ["onnxruntime", "openvino"]


def test_finals_decided_and_rows_stored_are_not_decided_again(configs):
    a, b, c = configs
    blocks = {a.job_id: {1: quality(0, 600), 2: {"phase": "final", "status": None}},
              b.job_id: {1: quality(0, 600)}, c.job_id: {1: quality(40)}}
    d = race.decide(configs, blocks, {b.job_id: "eliminated", c.job_id: "eliminated"}, SEARCH)
    assert d.finals == [a] and not d.rows and not d.jobs
    assert race.decide(configs, blocks, {x.job_id: "ok" for x in configs}, SEARCH).finals == []
