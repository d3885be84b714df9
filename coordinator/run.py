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
from fleetbench.coordinator.plan import checkpoint_path, plan, resolve_local
from fleetbench.coordinator.report import fleet_table
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
              resume: bool = False, progress: bool = True, out=sys.stdout) -> Optional[Counter]:
    """Run a sweep and return the count of rows by status. Bad input raises SweepError before any write."""
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
            names = {p.node_id: p.node_key for p in the_plan.nodes}
            counts = _dispatch(store, run_id, the_plan.unsupported, jobs, payloads, progress, names)
            counts["ok (resumed)"] = len(done) if resume else 0
            store.finish_run(run_id, "done")
        _report(db, run_id, out)
    finally:
        cluster.disconnect()
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=out)
    return counts


class Progress:
    """A bar on a terminal; in a CI log (not a terminal) one line per finished job. Names the node, counts statuses."""

    def __init__(self, total: int, names: dict[str, str], enabled: bool, stream=None):
        from tqdm import tqdm
        self.stream = stream or sys.stderr
        self.names, self.total, self.done = names, total, 0
        self.counts: Counter = Counter()
        self.lines = enabled and not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.bar = tqdm(total=total, disable=not enabled or self.lines, unit="job", file=self.stream,
                        dynamic_ncols=True)

    def _tally(self) -> str:
        return f"ok {self.counts['ok']}, failed {self.counts['failed']}, unsupported {self.counts['unsupported']}"

    def result(self, r: Result) -> None:
        self.done += 1
        self.counts[r.status] += 1
        node = self.names.get(r.node_id) or r.hostname or r.node_id[:12]
        what = f"{r.model}/{r.compression}/{r.backend}:{r.device}/bs{r.batch_size}"
        if self.lines:
            figure = f" p50 {r.latency_p50_ms:.3f} ms" if r.latency_p50_ms is not None else ""
            why = f" ({r.stage or ''}: {r.error or ''})"[:120] if r.status != "ok" else ""
            print(f"[{self.done}/{self.total}] {node}: {what} {r.status}{figure}{why} | {self._tally()}",
                  file=self.stream, flush=True)
            return
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self._tally()} | last {node}: {what} {r.status}", refresh=False)

    def stage(self, job, name: str) -> None:
        if not self.lines:
            self.bar.set_description_str(f"{job.node_key}: {job.backend}:{job.device} bs{job.batch_size} {name}",
                                         refresh=True)

    def close(self) -> None:
        self.bar.close()


def _dispatch(store, run_id: str, unsupported: list[Result], jobs, payloads: dict[str, bytes], progress: bool,
              names: dict[str, str]) -> Counter:
    import ray
    from fleetbench.coordinator.dispatch import Dispatcher

    bar = Progress(len(unsupported) + len(jobs), names, progress)

    def put(result: Result) -> None:
        result.run_id = run_id
        store.put_result(result)
        bar.result(result)

    for row in unsupported:       # known before anything runs: stored in one opening of the file
        row.run_id = run_id
    store.put_results(unsupported)
    for row in unsupported:
        bar.result(row)
    weights = {name: ray.put(data) for name, data in payloads.items()
               if any(j.model.name == name for j in jobs)}
    dispatcher = Dispatcher(put, bar.stage)
    try:
        dispatcher.submit(jobs, weights)
        dispatcher.drain()
    finally:
        bar.close()
    return bar.counts


def _report(db: str, run_id: str, out) -> None:
    """The run's tables, read back from the database (the same rendering as `coordinator report`)."""
    from fleetbench.coordinator.report.write import report
    from fleetbench.shared.errors import SweepError
    try:
        report(db, run_id=run_id, out=out)
    except SweepError as e:    # e.g. a run without one ok row: say so, the rows are stored
        print(f"\n{e}", file=out)
    print(f"\nresults in {db} (run {run_id}); again: coordinator report --db {db} --html report.html; "
          f"or SQL: coordinator query \"SELECT * FROM course\" --db {db}", file=out)
