"""`coordinator run --dry-run`: the plan, per node, without preparing or measuring anything.

Each node is asked (one light task pinned to it, no benchmark slot) which of the preparations its jobs
need are already in its cache (agent/prepare.py `plan_job`: keys from the inputs only, no work done).
"""
from __future__ import annotations

import hashlib
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

import ray

from fleetbench.agent.cache import KINDS
from fleetbench.coordinator import cluster
from fleetbench.coordinator.plan import dataset_folder, plan
from fleetbench.coordinator.run import SweepLike
from fleetbench.shared.errors import printable
from fleetbench.shared.job import Job


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _plan_on_node(jobs: list[Job]) -> list[list[tuple[str, str, bool]]]:
    from fleetbench.agent.backends import get
    from fleetbench.agent.prepare import plan_job
    out = []
    for job in jobs:
        try:
            out.append(plan_job(job, get(job.backend)))
        except Exception as e:  # noqa: BLE001 - a backend this node cannot load: the run makes it a row
            out.append([("error", f"{type(e).__name__}: {e}", False)])
    return out


def dry_run(sweep_path: SweepLike, address: Optional[str] = None, out=None) -> dict:
    """Print the plan per node: measurements, and preparations needed (distinct) and already cached.

    `sweep_path`: a sweep file, a dict or a Sweep (coordinator.run.read_sweep)."""
    out = out or sys.stdout
    from fleetbench.coordinator.run import _payload, check_inputs, read_sweep
    source = read_sweep(sweep_path)
    sweep = source.sweep
    files = check_inputs(sweep, Path(source.origin), source.base)
    hashes = {name: hashlib.sha256(_payload(path)).hexdigest() for name, path in files.items()}
    if sweep.dataset.kind == "imagefolder":
        path = str(dataset_folder(sweep.dataset, source.base))
        sweep = sweep.model_copy(update={"dataset": sweep.dataset.model_copy(update={"path": path})})
    where = cluster.connect(address)
    try:
        profiles = cluster.discover()
        the_plan = plan(sweep, profiles, hashes)
        by_node: dict[str, list[Job]] = defaultdict(list)
        for job in the_plan.jobs:
            by_node[job.node_id].append(job)
        unsupported = Counter(r.node_id for r in the_plan.unsupported)
        refs = {node_id: _plan_on_node.options(scheduling_strategy=cluster.NodeAffinitySchedulingStrategy(
            node_id, soft=False)).remote(jobs) for node_id, jobs in by_node.items()}
        answers = {node_id: ray.get(ref) for node_id, ref in refs.items()}
    finally:
        cluster.disconnect()
    print(f"plan for sweep {sweep.name!r} on {where} (dry run: nothing is prepared or measured)", file=out)
    summary = {}
    for node in the_plan.nodes:
        jobs, steps = by_node.get(node.node_id, []), answers.get(node.node_id, [])
        distinct: dict[tuple[str, str], bool] = {}
        errors = []
        for job_steps in steps:
            for kind, key, cached in job_steps:
                if kind == "error":
                    errors.append(key)
                else:
                    distinct[(kind, key)] = cached
        print("\n" + printable(f"node {node.node_key} [{'+'.join(node.kinds)}]: {len(jobs)} measurement(s), "
                               f"{unsupported.get(node.node_id, 0)} unsupported here"), file=out)
        made = sum(not c for c in distinct.values())
        print(f"  preparations: {len(distinct)} distinct, {len(distinct) - made} already cached, {made} to make "
              f"(once each, before the measurements that need them)", file=out)
        counts = {k: (sum(1 for (kind, _), c in distinct.items() if kind == k),
                      sum(1 for (kind, _), c in distinct.items() if kind == k and c)) for k in KINDS}
        for kind, (n, cached) in counts.items():
            if n:
                print(f"    {kind:<11} {n:4d}  ({cached} cached)", file=out)
        for e in sorted(set(errors)):
            print(printable(f"  cannot plan: {e}"), file=out)
        summary[node.node_key] = {"measurements": len(jobs), "preparations": counts}
    return summary
