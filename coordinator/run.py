"""One sweep, end to end: validate, discover, plan, dispatch, stream rows into DuckDB, report."""
from __future__ import annotations

import hashlib
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from fleetbench.coordinator import cluster
from fleetbench.coordinator.formats import render
from fleetbench.coordinator.report import fleet_table
from fleetbench.coordinator.plan import checkpoint_path, plan, resolve_local
from fleetbench.shared.errors import SweepError
from fleetbench.shared.job import Result
from fleetbench.shared.sweep import Sweep, load_sweep

log = logging.getLogger(__name__)


def check_inputs(sweep: Sweep, sweep_path: Path) -> dict[str, Path]:
    """Local files the sweep names must exist before anything starts; returns model name -> file to ship."""
    files = {}
    for i, m in enumerate(sweep.models):
        path = checkpoint_path(m.checkpoint, m.source, sweep_path.parent)
        if path is None:
            continue
        field = "checkpoint" if m.checkpoint else "source"
        if not path.is_file():
            raise SweepError(f"{sweep_path}: models[{i}].{field}: {path}: no such file")
        files[m.name] = path
    ds = sweep.dataset
    if ds.kind == "imagefolder" and not resolve_local(ds.path, sweep_path.parent).is_dir():
        raise SweepError(f"{sweep_path}: dataset.path: {ds.path}: no such directory")
    return files


def _payload(path: Path) -> bytes:
    """The bytes shipped to agents: the file itself, or for ONNX the model with its external data inlined."""
    if path.suffix != ".onnx":
        return path.read_bytes()
    import onnx
    try:
        return onnx.load(str(path)).SerializeToString()
    except Exception as e:
        raise SweepError(f"{path}: cannot read ONNX model ({type(e).__name__}: {e})") from None


def run_sweep(sweep_path: str, db: str = "results.duckdb", address: Optional[str] = None,
              resume: bool = False, progress: bool = True, out=sys.stdout,
              interleaved: bool = False) -> Optional[Counter]:
    """Run a sweep and return the count of rows by status. Bad input raises SweepError before any write.

    `interleaved`: with `measure.repeats` N > 1, each node runs its jobs in N rounds (A B C A B C ...),
    one window per round, merged into one row per job (coordinator.interleave).
    """
    from fleetbench.coordinator.store import Store
    sweep = load_sweep(sweep_path)
    files = check_inputs(sweep, Path(sweep_path))
    payloads = {name: _payload(path) for name, path in files.items()}   # a bad file fails before Ray starts
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    if sweep.dataset.kind == "imagefolder":  # agents get an absolute path (the folder must exist on each node)
        path = str(resolve_local(sweep.dataset.path, Path(sweep_path).parent))
        sweep = sweep.model_copy(update={"dataset": sweep.dataset.model_copy(update={"path": path})})
    where = cluster.connect(address)
    try:
        profiles = cluster.discover()
        print(f"fleet ({where}): {len(profiles)} node(s)", file=out)
        print(render(*fleet_table(profiles), "table"), file=out)
        the_plan = plan(sweep, profiles, hashes)
        with Store(db) as store:
            run_id = store.latest_run(sweep.name) if resume else None
            run_id = run_id or store.start_run(sweep.name, sweep.model_dump_json(), where)
            done = store.done_job_ids(run_id) if resume else set()
            store.put_nodes(run_id, the_plan.nodes)
            jobs = [j for j in the_plan.jobs if j.job_id not in done]
            print(f"run {run_id}: {the_plan.total} planned, {len(the_plan.unsupported)} unsupported here, "
                  f"{len(done)} already ok, {len(jobs)} to run", file=out)
            counts = _dispatch(store, run_id, the_plan.unsupported, jobs, payloads, progress, interleaved)
            counts["ok (resumed)"] = len(done) if resume else 0
            store.finish_run(run_id, "done")
            _report(db, store, run_id, out)
    finally:
        cluster.disconnect()
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=out)
    return counts


def _dispatch(store, run_id: str, unsupported: list[Result], jobs, payloads: dict[str, bytes], progress: bool,
              interleaved: bool = False) -> Counter:
    import ray
    from tqdm import tqdm

    from fleetbench.coordinator.dispatch import Dispatcher
    from fleetbench.coordinator.hosts import HostWindows
    from fleetbench.coordinator.interleave import Collector, rounds

    counts: Counter = Counter()
    windows = HostWindows()
    collector = None
    if interleaved and any(j.measure.repeats > 1 for j in jobs):
        jobs, owner = rounds(jobs)
        collector = Collector(owner)
    bar = tqdm(total=len(unsupported) + len(jobs), disable=not progress, unit="job", file=sys.stderr,
               dynamic_ncols=True)

    def put(result: Result) -> None:
        result.run_id = run_id
        for job_id, reason in windows.check(result):   # rows that measured each other on one machine
            waiting = collector.pending(job_id) if collector else None
            if waiting is not None:
                waiting.valid = False
                waiting.validity = f"{waiting.validity}; {reason}" if waiting.validity else reason
            else:
                store.mark_invalid(run_id, collector.owner[job_id].job_id if collector and job_id in collector.owner
                                   else job_id, reason)
        bar.update(1)
        if collector is not None:
            result = collector.add(result)
            if result is None:      # more rounds of this job to come
                return
        store.put_result(result)
        counts[result.status] += 1
        bar.set_postfix_str(f"{result.model}/{result.compression}/{result.backend}/bs{result.batch_size}: "
                            f"{result.status}", refresh=False)

    def stage(job, name: str) -> None:
        bar.set_description_str(f"{job.backend}:{job.device} bs{job.batch_size} {name}", refresh=True)

    for row in unsupported:
        put(row)
    weights = {name: ray.put(data) for name, data in payloads.items()
               if any(j.model.name == name for j in jobs)}
    dispatcher = Dispatcher(put, stage)
    try:
        dispatcher.submit(jobs, weights)
        dispatcher.drain()
    finally:
        bar.close()
    return counts


def _report(db: str, store, run_id: str, out) -> None:
    from fleetbench.coordinator.report import results_tables
    for title, table in results_tables(store.rows(run_id)):
        print(f"\n{title}", file=out)
        print(table, file=out)
    print(f"\nresults in {db} (run {run_id}); try: coordinator query \"SELECT * FROM comparison\" --db {db}",
          file=out)
