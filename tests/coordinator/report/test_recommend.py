"""Recommendation and Pareto on hand-made `course` rows whose answer is known."""
from __future__ import annotations

import pytest

from fleetbench.coordinator.report.recommend import best, pareto


def row(job, node="a", compression="none", backend="pytorch", p50=10.0, quality=0.90, drop=0.0,
        size=10.0, zsize=9.0, bs=1, status="ok", **kw):
    base = dict(job_id=job, node=node, model="m", compression=compression, backend=backend, device="cpu",
                batch_size=bs, status=status, valid=True, latency_p50_ms=p50, latency_p99_ms=p50 * 1.5 if p50 else None,
                throughput_ips=bs * 1000.0 / p50 if p50 else None, quality=quality,
                quality_metric="f1", quality_drop=drop, size_mb=size, size_compressed_mb=zsize)
    base.update(kw)
    return base


def test_fastest_within_the_bound_wins_and_a_bigger_drop_is_left_out():
    rows = [row("ref", p50=10), row("fp16", compression="fp16", p50=6, drop=0.005),
            row("int8", compression="int8-static", p50=4, drop=0.05)]
    (pick,) = best(rows, max_drop=0.01)
    assert pick.row["job_id"] == "fp16"
    (pick,) = best(rows, max_drop=0.1)
    assert pick.row["job_id"] == "int8"


def test_tie_on_latency_goes_to_the_smaller_compressed_file():
    rows = [row("big", compression="prune-50", p50=5, zsize=8), row("small", compression="cluster-32", p50=5, zsize=2),
            row("ref", p50=7)]
    assert best(rows)[0].row["job_id"] == "small"
    assert best(list(reversed(rows)))[0].row["job_id"] == "small"   # row order does not matter


def test_failed_and_missing_quality_rows_are_never_picked():
    rows = [row("ref", p50=10), row("crash", compression="fp16", p50=None, quality=None, drop=None, status="failed"),
            row("noq", backend="onnxruntime", p50=1, quality=None, drop=None),
            row("bad", compression="int8-dynamic", p50=2, valid=False)]
    (pick,) = best(rows)
    assert pick.row["job_id"] == "ref"
    assert "noq" not in pareto(rows) and "crash" not in pareto(rows) and "bad" not in pareto(rows)


def test_no_quality_at_all_says_why():
    (pick,) = best([row("x", quality=None, drop=None)])
    assert pick.row is None and "quality" in pick.why


def test_only_failed_rows_give_no_pick():
    (pick,) = best([row("x", status="failed", p50=None)])
    assert pick.row is None


def test_a_compression_that_wins_on_one_node_and_loses_on_another():
    rows = [row("a-ref", node="a", p50=10), row("a-int8", node="a", compression="int8-static", p50=4, drop=0.002),
            row("b-ref", node="b", p50=3), row("b-int8", node="b", compression="int8-static", p50=9, drop=0.002)]
    picks = {p.node: p.row["job_id"] for p in best(rows)}
    assert picks == {"a": "a-int8", "b": "b-ref"}
    assert pareto(rows) == {"a-int8", "b-ref"}


def test_size_bound_and_latency_compares_the_smallest_batch_size():
    rows = [row("ref", p50=10, size=40), row("fp16", compression="fp16", p50=6, size=20),
            row("prune", compression="prune-50", p50=8, size=5), row("ref8", p50=30, bs=8, size=40)]
    assert best(rows, max_size_mb=10)[0].row["job_id"] == "prune"
    assert best(rows, max_size_mb=1)[0].row is None
    assert best(rows)[0].batch_size == 1
    assert best(rows, by="throughput")[0].row["job_id"] == "ref8"   # 8 / 30 ms beats 1 / 6 ms


def test_pareto_keeps_tradeoffs_and_identical_points():
    rows = [row("fast", p50=2, quality=0.80, size=10), row("good", p50=9, quality=0.95, size=10),
            row("small", p50=9, quality=0.80, size=1), row("worse", p50=9, quality=0.80, size=10),
            row("twin", p50=2, quality=0.80, size=10)]
    assert pareto(rows) == {"fast", "twin", "good", "small"}


def test_pareto_and_best_see_a_difference_inside_the_p50_interval_as_a_tie():
    rows = [row("a", p50=5.0, latency_p50_ci_low_ms=4.8, latency_p50_ci_high_ms=5.3),
            row("b", backend="onnxruntime", p50=5.1, latency_p50_ci_low_ms=4.9, latency_p50_ci_high_ms=5.4),
            row("c", backend="openvino", p50=7.0, latency_p50_ci_low_ms=6.8, latency_p50_ci_high_ms=7.2)]
    assert pareto(rows) == {"a", "b"}                 # b is slower only inside the noise; c beyond it
    (pick,) = best(rows)
    assert pick.row["job_id"] == "a" and pick.why.endswith("tied within the p50 interval: onnxruntime none")


def test_unknown_by_is_refused():
    with pytest.raises(ValueError, match="p50"):
        best([], by="fastest")
