"""`--repeat-interleaved`: a node's jobs run in rounds (A B C A B C ...), one timed window each, and
each job's windows are merged into its one row, so slow drift of a machine hits every configuration
alike.

A round is the job itself with `repeats: 1` and no p99 rule of its own (the merged row applies it to
all its samples); its rows never reach the database, only the merged one under the job's own id.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from fleetbench.shared.job import Job, Result
from fleetbench.shared.stats import p50_with_ci


def round_job(job: Job) -> Job:
    return dataclasses.replace(job, measure=job.measure.model_copy(
        update={"repeats": 1, "repeat_mode": "same", "p99_min_samples": 0}))


def rounds(jobs: list[Job]) -> tuple[list[Job], dict[str, Job]]:
    """Every job's rounds in the order A B C A B C ... (the dispatcher keeps this order per node), and
    round job id -> the job it belongs to."""
    one = [round_job(j) for j in jobs]
    owner = {r.job_id: j for r, j in zip(one, jobs)}
    n = max((j.measure.repeats for j in jobs), default=1)
    order = [r for k in range(n) for r, j in zip(one, jobs) if k < j.measure.repeats]
    return order, owner


def merge(job: Job, parts: list[Result]) -> Result:
    """One row from a job's rounds (in order): a failed round makes the row failed with its reason."""
    bad: Optional[Result] = next((p for p in parts if p.status != "ok"), None)
    base = dataclasses.replace(bad or parts[0], job_id=job.job_id)
    if bad is not None:
        return base
    samples = np.concatenate([np.asarray(p.samples_ms or [], dtype=np.float64) for p in parts])
    p50s = [v for p in parts for v in (p.window_p50s_ms or [])]
    base.samples_ms, base.window_p50s_ms = samples.tolist(), p50s
    base.window_iters = [v for p in parts for v in (p.window_iters or [])]
    base.latency_p50_ms, base.latency_p50_ci_low_ms, base.latency_p50_ci_high_ms = p50_with_ci(p50s, base.samples_ms)
    base.latency_mean_ms = float(samples.mean())
    base.latency_p90_ms, base.latency_p99_ms = (float(v) for v in np.percentile(samples, [90, 99]))
    base.latency_std_ms = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    base.latency_min_ms = float(samples.min())
    base.iterations, base.repeats = int(samples.size), len(parts)
    base.measure_s = float(sum(p.measure_s or 0.0 for p in parts))
    base.throughput_ips = job.batch_size * base.iterations / base.measure_s if base.measure_s else None
    base.cv_pct = _max(p.cv_pct for p in parts)
    base.other_cpu_cores = _max(p.other_cpu_cores for p in parts)
    base.cpu_steal_pct = _max(p.cpu_steal_pct for p in parts)
    reasons = [f"round {i + 1}: {p.validity}" for i, p in enumerate(parts) if p.validity]
    if samples.size < job.measure.p99_min_samples:
        reasons.append(f"p99 from {samples.size} samples (needs {job.measure.p99_min_samples})")
    base.valid, base.validity = not reasons, "; ".join(reasons) or None
    energy = [p.energy_j_per_item * (p.iterations or 0) for p in parts if p.energy_j_per_item is not None]
    base.energy_j_per_item = sum(energy) / base.iterations if len(energy) == len(parts) and base.iterations else None
    base.window_start, base.window_end = parts[0].window_start, parts[-1].window_end
    base.started_at, base.finished_at = parts[0].started_at, parts[-1].finished_at
    base.wall_s = float(sum(p.wall_s or 0.0 for p in parts))
    return base


def _max(values) -> Optional[float]:
    seen = [v for v in values if v is not None]
    return max(seen) if seen else None


class Collector:
    """Takes round rows as they arrive; `add` returns the merged row once a job's last round is in."""

    def __init__(self, owner: dict[str, Job]):
        self.owner = owner
        self.parts: dict[str, list[Result]] = {}

    def add(self, r: Result) -> Optional[Result]:
        job = self.owner.get(r.job_id)
        if job is None:              # not a round (an unsupported row decided before dispatch)
            return r
        got = self.parts.setdefault(job.job_id, [])
        got.append(r)
        return merge(job, got) if len(got) == job.measure.repeats else None

    def pending(self, job_id: str) -> Optional[Result]:
        """The latest round row of a job not yet merged, found by the round's job id."""
        job = self.owner.get(job_id)
        if job is None:
            return None
        parts = self.parts.get(job.job_id)
        return parts[-1] if parts and len(parts) < job.measure.repeats else None
