"""`search: {strategy: race}`: a sequence of plans over a sweep's jobs, decided from what is stored
(docs/search.md).

Per node and per (model, batch size, scenario) the configurations race: round 1 is a quality step per
configuration (a timing block, then quality sequentially in a seeded order: agent/sequential.py); a
configuration certain to be outside the quality bound leaves there. Each further round times one block
of every configuration still in, in a random order; from `min_rounds` on, the paired test of
shared/race_stats.py eliminates the ones slower than the incumbent, unless they are on the
(latency, quality, size) Pareto front of what is left. The race ends at one survivor, at `max_rounds`
or when no one left can be eliminated; the survivors (the final) run as full jobs with the sweep's
`measure:`. The nodes' races run at once, each at its own pace.

Every block is a row of `race_blocks` (its samples too); an eliminated configuration is a `results` row
with status `eliminated`, the stage it left at (quality or speed) and its evidence in one line. What runs
next is computed from those tables alone, so `--resume` continues a race where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Callable, Optional

import numpy as np

from fleetbench.shared import race_stats
from fleetbench.shared.job import Job, Result
from fleetbench.shared.sweep import MeasureSpec, SearchSpec
from fleetbench.shared.vocab import Status

log = logging.getLogger(__name__)

BLOCKS_DDL = """
CREATE TABLE IF NOT EXISTS race_blocks (
    run_id VARCHAR, config_id VARCHAR, round INTEGER, phase VARCHAR, job_id VARCHAR, node_id VARCHAR,
    status VARCHAR, error VARCHAR, p50_ms DOUBLE, samples_ms DOUBLE[], wall_s DOUBLE, size_mb DOUBLE,
    evidence JSON, finished_at VARCHAR, PRIMARY KEY (run_id, config_id, round))"""
# phase: quality (round 1: a block, then quality sequentially) | speed (a timing block) | final (the
# decision that the configuration runs in full; no samples)
DONE = (Status.OK, Status.ELIMINATED, Status.UNSUPPORTED)


def block_measure(measure: MeasureSpec, search: SearchSpec) -> MeasureSpec:
    """One timing block: a short window with the sweep's threads and streams, no p99 rule."""
    return measure.model_copy(update={
        "warmup_iters": min(measure.warmup_iters, 5), "min_iters": 5, "min_duration_s": search.block_s,
        "max_duration_s": max(search.block_s * 4, search.block_s + 1), "repeats": 1, "repeat_mode": "same",
        "p99_min_samples": 0})


def step(job: Job, phase: str) -> Job:
    """The race's job for `job` (a full job of the plan) at `phase` (quality or speed)."""
    return dataclasses.replace(job, phase="quality" if phase == "quality" else "block",
                               measure=block_measure(job.measure, job.search or SearchSpec()))


def group_key(job: Job) -> tuple:
    return (job.node_id, job.model.name, job.batch_size, job.scenario)


def label(job_or_row: Any) -> str:
    """How evidence names a configuration: `onnxruntime int8-static` (device when not cpu)."""
    device = getattr(job_or_row, "device", "cpu")
    return f"{job_or_row.backend} {job_or_row.compression.name if isinstance(job_or_row, Job) else job_or_row.compression}" \
        + ("" if device == "cpu" else f" on {device}")


# -- what is stored ----------------------------------------------------------------------------

def put_block(store, run_id: str, config: Job, round_no: int, phase: str, row: Optional[Result]) -> None:
    """One block's row (row None: a `final` decision)."""
    values = [run_id, config.job_id, round_no, phase, row.job_id if row else None, config.node_id,
              row.status if row else None, row.error if row else None, row.latency_p50_ms if row else None,
              list(row.samples_ms) if row and row.samples_ms else None, row.wall_s if row else None,
              row.size_mb if row else None, row.race if row else None, row.finished_at if row else None]
    store._execute(f"INSERT OR REPLACE INTO race_blocks VALUES ({', '.join('?' for _ in values)})", values)


def stored(store, run_id: str) -> tuple[dict[str, dict[int, dict]], dict[str, str]]:
    """(config id -> round -> block, config id -> status of its `results` row) of a run."""
    names, rows = store._fetch("SELECT config_id, round, phase, status, p50_ms, wall_s, size_mb, evidence, error "
                               "FROM race_blocks WHERE run_id = ?", [run_id])
    blocks: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        d = dict(zip(names, r))
        blocks[d["config_id"]][d["round"]] = d
    _, rows = store._fetch("SELECT job_id, status FROM results WHERE run_id = ?", [run_id])
    return blocks, {j: s for j, s in rows}


# -- one race: what runs next -------------------------------------------------------------------

@dataclasses.dataclass
class Decision:
    jobs: list[tuple[Job, int, str]] = dataclasses.field(default_factory=list)   # (job, round, phase)
    rows: list[Result] = dataclasses.field(default_factory=list)                  # eliminated / failed rows
    finals: list[Job] = dataclasses.field(default_factory=list)


def _quality_row(config: Job, block: dict) -> Optional[Result]:
    """The row of a configuration whose quality step ended it (failed, unsupported, outside), else None."""
    if block["status"] != Status.OK:
        return Result.for_job(config, status=block["status"], stage=None if block["status"] == Status.UNSUPPORTED
                              else "measure", error=block["error"])
    counts = json.loads(block["evidence"]) if block["evidence"] else None
    if counts is None:   # no model to judge (or predictions reused): nothing to decide on quality
        return None
    v = race_stats.verdict_of(counts)
    if v.decision != race_stats.OUTSIDE:
        return None
    return Result.for_job(config, status=Status.ELIMINATED, stage="quality", error=v.evidence(counts["bound"]),
                          race=block["evidence"], eval_samples=counts["n"])


def decide(configs: list[Job], blocks: dict[str, dict[int, dict]], status: dict[str, str],
           search: SearchSpec) -> Decision:
    """What one race (one node, model, batch size, scenario) does next, from its stored blocks and rows."""
    out = Decision()
    alive = [c for c in configs if status.get(c.job_id) not in DONE and status.get(c.job_id) != Status.FAILED]
    for c in alive:
        if 1 not in blocks.get(c.job_id, {}):
            out.jobs.append((step(c, "quality"), 1, "quality"))
    if out.jobs:
        return out
    racing = []
    for c in alive:
        row = _quality_row(c, blocks[c.job_id][1])
        if row is not None:
            out.rows.append(row)
        elif any(b["phase"] == "final" for b in blocks[c.job_id].values()):
            out.finals.append(c)
        else:
            racing.append(c)
    failed = [(c, r, b) for c in racing for r, b in blocks[c.job_id].items() if b["status"] not in (None, "ok")]
    for c, r, b in failed:
        out.rows.append(Result.for_job(c, status=Status.FAILED, stage="measure", error=f"race round {r}: {b['error']}"))
    racing = [c for c in racing if c not in {f[0] for f in failed}]
    if not racing:
        return out
    top = max(max(blocks[c.job_id]) for c in racing)
    missing = [c for c in racing if top not in blocks[c.job_id]]
    if missing:   # a round begun and not finished (a resumed race)
        out.jobs = [(step(c, "speed"), top, "speed") for c in missing]
        return out
    return _speed(racing, blocks, top, search, out)


def _speed(racing: list[Job], blocks, done_round: int, search: SearchSpec, out: Decision) -> Decision:
    """After a complete round: eliminate the ones shown slower (unless on the Pareto front), then the
    next round or the final."""
    medians = {c.job_id: [blocks[c.job_id].get(r, {}).get("p50_ms") for r in range(1, done_round + 1)] for c in racing}
    verdict = race_stats.race_step(medians, search.alpha, search.min_rounds, search.max_rounds)
    keep = _pareto(racing, blocks, medians, search)
    by_id = {c.job_id: c for c in racing}
    incumbent = by_id[verdict.incumbent]
    for cid in verdict.eliminated:
        if cid in keep:
            continue
        comp = verdict.comparisons[cid]
        out.rows.append(Result.for_job(by_id[cid], status=Status.ELIMINATED, stage="speed",
                                       error=comp.evidence(label(incumbent)),
                                       race=json.dumps({"phase": "speed", "incumbent": incumbent.job_id,
                                                        **{k: v for k, v in dataclasses.asdict(comp).items()
                                                           if k != "name"}})))
    left = [c for c in racing if c.job_id not in verdict.eliminated or c.job_id in keep]
    can_go = [c for c in left if c.job_id != verdict.incumbent and c.job_id not in keep]
    if len(left) <= 1 or done_round >= search.max_rounds or (done_round >= search.min_rounds and not can_go):
        out.finals.extend(left)
        return out
    out.jobs = [(step(c, "speed"), done_round + 1, "speed") for c in left]
    return out


def _pareto(racing: list[Job], blocks, medians, search: SearchSpec) -> set[str]:
    """Configurations on the (latency, quality drop, size) front of those racing."""
    points = {}
    for c in racing:
        logs = [math.log(v) for v in medians[c.job_id] if v]
        q = blocks[c.job_id][1].get("evidence")
        drop = json.loads(q).get("drop", 0.0) if q else 0.0
        size = blocks[c.job_id][1].get("size_mb") or 0.0
        points[c.job_id] = (statistics.fmean(logs) if logs else math.inf, drop, size)
    return race_stats.pareto_keep(points, quality_tol=search.quality_bound / 2)


def shuffled(items: list, search: SearchSpec, key: str, round_no: int) -> list:
    """The round's random order (seeded by the sweep's seed, the race and the round)."""
    salt = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    order = np.random.default_rng([search.seed, salt, round_no]).permutation(len(items))
    return [items[i] for i in order]


# -- driving the races on the fleet ----------------------------------------------------------------

def racing(jobs: list[Job]) -> bool:
    return bool(jobs) and jobs[0].search is not None and jobs[0].search.strategy == "race"


def with_search(jobs: list[Job], search: SearchSpec) -> list[Job]:
    """The plan's jobs carrying the sweep's search rules (a full job's id does not change)."""
    return [dataclasses.replace(j, search=search) for j in jobs]


class Race:
    """Every race of a run: submits each race's next plan as soon as its previous one is in."""

    def __init__(self, store, run_id: str, jobs: list[Job], put_row: Callable[[Result], None]):
        self.store, self.run_id, self.put_row = store, run_id, put_row
        self.groups: dict[tuple, list[Job]] = defaultdict(list)
        for j in jobs:
            self.groups[group_key(j)].append(j)
        self.waiting: Counter = Counter()          # group -> jobs of its current plan not yet back
        self.owner: dict[str, tuple] = {}          # job id in flight -> (group, config, round, phase)
        self.search = (jobs[0].search or SearchSpec()) if jobs else SearchSpec()
        self.submit: Callable[[list[Job]], None] = lambda jobs: None

    def start(self, submit: Callable[[list[Job]], None]) -> None:
        self.submit = submit
        for g in list(self.groups):
            self._next(g)

    def _next(self, g: tuple) -> None:
        """Store what the race decided and submit its next plan (shuffled), until it has one or ends."""
        while True:
            blocks, status = stored(self.store, self.run_id)
            d = decide(self.groups[g], blocks, status, self.search)
            for row in d.rows:
                self.put_row(row)
            for c in d.finals:
                mine = blocks.get(c.job_id, {})
                if not any(b["phase"] == "final" for b in mine.values()):
                    put_block(self.store, self.run_id, c, max(mine, default=0) + 1, "final", None)
            configs = {step(c, p).job_id: c for c in self.groups[g] for p in ("quality", "speed")}
            todo = [(j, configs[j.job_id], r, p) for j, r, p in d.jobs]
            if todo:
                todo = shuffled(todo, self.search, "/".join(map(str, g)), todo[0][2])
            todo += [(c, c, 0, "final") for c in d.finals]
            if not todo:
                if d.rows:
                    continue   # rows written: decide again with them
                return
            for j, c, r, p in todo:
                self.owner[j.job_id] = (g, c, r, p)
            self.waiting[g] = len(todo)
            self.submit([t[0] for t in todo])
            return

    def arrived(self, row: Result) -> None:
        """A job of a plan is back (its accepted row, under the id of the job sent)."""
        g, config, round_no, phase = self.owner.pop(row.job_id)
        if phase == "final":
            self.put_row(row)
        else:
            put_block(self.store, self.run_id, config, round_no, phase, row)
        self.waiting[g] -= 1
        if self.waiting[g] == 0:
            self._next(g)


def summary(fetch: Callable[[str, list], list], run_id: str) -> list[dict[str, Any]]:
    """Per node: configurations raced, eliminated at quality and at speed, measured in full, the node
    time the race used (every block and final) and an estimate of what the exhaustive sweep would have
    used (every configuration at the mean cost of the node's finals). `fetch(sql, params)` gives rows."""
    spent = dict(fetch("SELECT node_id, sum(wall_s) FROM race_blocks WHERE run_id = ? GROUP BY node_id", [run_id]))
    rows = fetch("SELECT node_id, status, stage, wall_s FROM results WHERE run_id = ? AND job_id IN "
                 "(SELECT config_id FROM race_blocks WHERE run_id = ?)", [run_id, run_id])
    out = []
    for node in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == node]
        finals = [r[3] for r in mine if r[1] == Status.OK and r[3] is not None]
        out.append({"node_id": node, "raced": len(mine),
                    "eliminated_quality": sum(r[1] == Status.ELIMINATED and r[2] == "quality" for r in mine),
                    "eliminated_speed": sum(r[1] == Status.ELIMINATED and r[2] == "speed" for r in mine),
                    "measured_in_full": len(finals), "race_s": (spent.get(node) or 0.0) + sum(finals),
                    "exhaustive_estimate_s": statistics.fmean(finals) * len(mine) if finals else None})
    return out


def answers(fetch: Callable[[str, list], list], run_id: str, search: SearchSpec) -> list[dict[str, Any]]:
    """Per race (node, model, batch size, scenario) of the finalists within the quality bound: the winner
    (fastest over the stored blocks), the configurations statistically tied with it and each one's
    probability of being the fastest (bootstrap over the rounds)."""
    rows = fetch("""SELECT r.node_id, r.hostname, r.model, r.batch_size, r.scenario, r.backend, r.compression,
                           r.device, r.job_id, b.round, b.p50_ms, b.evidence
                    FROM results r JOIN race_blocks b ON b.config_id = r.job_id AND b.run_id = r.run_id
                    WHERE r.run_id = ? AND r.status = 'ok' AND b.phase IN ('quality', 'speed')
                    ORDER BY b.round""", [run_id])
    groups: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    names, outside = {}, set()
    for node, host, model, bs, scen, backend, comp, device, jid, rnd, p50, ev in rows:
        groups[(node, host, model, bs, scen)][jid][rnd] = p50
        names[jid] = f"{backend} {comp}" + ("" if device == "cpu" else f" on {device}")
        if ev and race_stats.verdict_of(json.loads(ev)).decision == race_stats.OUTSIDE:
            outside.add(jid)
    out = []
    for (node, host, model, bs, scen), per in sorted(groups.items()):
        per = {j: r for j, r in per.items() if j not in outside}
        if not per:
            continue
        width = max(max(r) for r in per.values())
        medians = {j: [r.get(i) for i in range(1, width + 1)] for j, r in per.items()}
        verdict = race_stats.race_step(medians, search.alpha, min_rounds=2, max_rounds=2)
        tied = verdict.tied
        prob = race_stats.prob_fastest({j: medians[j] for j in tied}, seed=search.seed)
        out.append({"node_id": node, "hostname": host, "model": model, "batch_size": bs, "scenario": scen,
                    "winner": names[verdict.incumbent],
                    "tied": [(names[j], prob.get(j, 0.0)) for j in sorted(tied, key=lambda j: -prob.get(j, 0.0))]})
    return out
