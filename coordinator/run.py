"""One sweep, end to end: validate, discover, plan, dispatch, stream rows into DuckDB, report."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fleetbench.coordinator.formats import render
from fleetbench.coordinator.plan import checkpoint_path, plan, resolve_local
from fleetbench.coordinator.report import fleet_table
from fleetbench.shared.errors import Interrupted, StoreError, SweepError
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
    if ds.kind == "imagefolder":
        folder = resolve_local(ds.path, sweep_path.parent)
        if not folder.is_dir():
            raise SweepError(f"{sweep_path}: dataset.path: {ds.path}: no such directory")
        classes = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for i, m in enumerate(sweep.models):
            if len(classes) > m.num_classes:
                raise SweepError(f"{sweep_path}: dataset.path: {ds.path}: {len(classes)} class folders but "
                                 f"models[{i}].num_classes is {m.num_classes} (labels {m.num_classes}.."
                                 f"{len(classes) - 1} would be outside the model's classes)")
    return files


def check_cache() -> None:
    """$FLEETBENCH_CACHE, when set, must be a folder this user can write (or one it can create)."""
    value = os.environ.get("FLEETBENCH_CACHE")
    if not value:
        return
    path = Path(value).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SweepError(f"FLEETBENCH_CACHE={value}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SweepError(f"FLEETBENCH_CACHE={value}: {probe} is not writable by this user")


@dataclass
class Checked:
    """A sweep and everything about it that was checked before the fleet starts."""
    sweep: Sweep
    files: dict[str, Path] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


MIN_FILE_SIZE_LIMIT = 1 << 30   # Ray's logs and object spilling, engine caches and the results file


def check_file_size_limit() -> None:
    """A small `ulimit -f` makes Ray's start time out after a long wait: refuse it up front."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < MIN_FILE_SIZE_LIMIT:
        raise SweepError(f"the file-size limit (ulimit -f) is {soft // 1024} KiB: Ray, the engine caches and the "
                         f"results database need files of at least {MIN_FILE_SIZE_LIMIT >> 20} MiB; raise it "
                         "(ulimit -f unlimited)")


def preflight(sweep_path: str, db: Optional[str] = None, resume: bool = False) -> Checked:
    """Every check that needs no fleet, in the order a user would fix them; raises SweepError.

    `run` and `validate` both call this, so `validate` passes exactly what `run` accepts up to the
    fleet (a target matching no node is found when the fleet is known: `validate --address`).
    """
    sweep = load_sweep(sweep_path)
    files = check_inputs(sweep, Path(sweep_path))
    fields = {m.name: f"{sweep_path}: models[{i}].{'checkpoint' if m.checkpoint else 'source'}"
              for i, m in enumerate(sweep.models)}
    payloads = {name: _payload(path, fields[name]) for name, path in files.items()}   # before Ray starts
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    check_cache()
    check_file_size_limit()
    if db is not None:
        check_db(db, sweep.name if resume else None)
    return Checked(sweep, files, payloads, hashes)


def check_db(db: str, resume_sweep: Optional[str] = None) -> None:
    """The results database can be written (new, empty, this version or an older one to migrate)."""
    from fleetbench.coordinator import store
    try:
        version = store.inspect(db, for_write=True)
        if resume_sweep is None:
            return
        if version == 0:
            raise SweepError(f"--resume: {db} has no earlier run of sweep {resume_sweep!r}; "
                             "nothing to resume (run without --resume to start one)")
        con = store._connect(Path(db), read_only=True)
        try:
            found = con.execute("SELECT count(*) FROM sweeps WHERE sweep = ?", [resume_sweep]).fetchone()[0]
        finally:
            con.close()
        if not found:
            raise SweepError(f"--resume: {db} has no earlier run of sweep {resume_sweep!r}; "
                             "nothing to resume (run without --resume to start one)")
    except StoreError as e:
        raise SweepError(f"--db {e}") from None


def _payload(path: Path, where: str = "") -> bytes:
    """The bytes shipped to agents: the file itself, or for ONNX the model with its external data inlined
    (ONNX refuses external data outside the model's folder)."""
    from fleetbench.shared.errors import one_line
    where = f"{where}: " if where else ""
    try:
        if path.suffix != ".onnx":
            return path.read_bytes()
        import onnx
        return onnx.load(str(path)).SerializeToString()
    except Exception as e:
        raise SweepError(f"{where}{path}: cannot read {'ONNX model' if path.suffix == '.onnx' else 'file'} "
                         f"({one_line(e)})") from None


def run_sweep(sweep_path: str, db: str = "results.duckdb", address: Optional[str] = None,
              resume: bool = False, progress: bool = True, out=sys.stdout) -> Optional[Counter]:
    """Run a sweep and return the count of rows by status. Bad input raises SweepError before any write.

    SIGINT or SIGTERM cancels the in-flight jobs, marks the run `interrupted`, stops the embedded Ray
    and raises Interrupted (finished rows are kept; --resume runs the rest)."""
    checked = preflight(sweep_path, db=db, resume=resume)   # everything checkable, before Ray starts
    from fleetbench.coordinator import cluster  # imports Ray: only for a sweep that will run
    sweep, payloads, hashes = checked.sweep, checked.payloads, checked.hashes
    if sweep.dataset.kind == "imagefolder":  # agents get an absolute path (the folder must exist on each node)
        path = str(resolve_local(sweep.dataset.path, Path(sweep_path).parent))
        sweep = sweep.model_copy(update={"dataset": sweep.dataset.model_copy(update={"path": path})})
    with interruptible() as signals:
        try:
            where = cluster.connect(address)
            signals.arm()   # again: ray.init installs a SIGTERM handler of its own
            return _run_connected(sweep, sweep_path, db, where, resume, progress, out, hashes, payloads, signals)
        except KeyboardInterrupt as e:
            stop = signals.interrupted(e)
            stop.hint = (f"rows stored so far are kept in {db}; run the missing jobs with: "
                         f"coordinator run {sweep_path} --db {db} --resume")
            raise stop from None
        finally:
            cluster.disconnect()   # stops the embedded Ray this process started


class _Signals:
    """SIGINT and SIGTERM raise Interrupted (once); a second one exits at once with 128 + signal."""

    def __init__(self):
        self.seen: list[int] = []

    def handler(self, signum, frame):
        if self.seen:
            os.write(2, f"coordinator: {signal.Signals(signum).name} again: exiting now\n".encode())
            os._exit(128 + self.seen[0])
        self.seen.append(signum)
        raise Interrupted(signum)

    def arm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handler)

    def interrupted(self, exc: KeyboardInterrupt) -> Interrupted:
        """`exc` as Interrupted: Ray re-raises a signal handler's exception as a plain KeyboardInterrupt."""
        if isinstance(exc, Interrupted):
            return exc
        return Interrupted(self.seen[0] if self.seen else signal.SIGINT)


@contextlib.contextmanager
def interruptible():
    """Signal handling for a run; yields the _Signals (arm() installs the handlers again)."""
    signals = _Signals()
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    signals.arm()
    try:
        yield signals
    finally:
        for sig, h in old.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


def _run_connected(sweep, sweep_path, db, where, resume, progress, out, hashes, payloads, signals) -> Counter:
    from fleetbench.coordinator import cluster
    from fleetbench.coordinator.store import Store
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
        try:
            counts = _dispatch(store, run_id, the_plan.unsupported, jobs, payloads, progress)
        except KeyboardInterrupt as e:
            stop = signals.interrupted(e)
            store.finish_run(run_id, "interrupted")
            print(f"\nrun {run_id}: interrupted by {stop.signal_name}; in-flight jobs cancelled", file=out)
            raise stop from None
        counts["ok (resumed)"] = len(done) if resume else 0
        store.finish_run(run_id, "done")
        _report(db, store, run_id, out)
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=out)
    return counts


def _dispatch(store, run_id: str, unsupported: list[Result], jobs, payloads: dict[str, bytes], progress: bool) -> Counter:
    import ray
    from tqdm import tqdm

    from fleetbench.coordinator.dispatch import Dispatcher

    counts: Counter = Counter()
    bar = tqdm(total=len(unsupported) + len(jobs), disable=not progress, unit="job", file=sys.stderr,
               dynamic_ncols=True)

    def put(result: Result) -> None:
        result.run_id = run_id
        store.put_result(result)
        counts[result.status] += 1
        bar.update(1)
        bar.set_postfix_str(f"{result.model}/{result.compression}/{result.backend}/bs{result.batch_size}: "
                            f"{result.status}", refresh=False)

    def stage(job, name: str) -> None:
        bar.set_description_str(f"{job.backend}:{job.device} bs{job.batch_size} {name}", refresh=True)

    for row in unsupported:
        put(row)
    weights = {name: ray.put(data) for name, data in payloads.items()
               if any(j.model.name == name for j in jobs)}
    def keep_log(row: Result, log: dict) -> None:
        store.put_log(run_id, row.job_id, row.stage, log.get("reason") or row.error, log.get("traceback"),
                      log.get("output"))

    dispatcher = Dispatcher(put, stage, on_log=keep_log)
    try:
        dispatcher.submit(jobs, weights)
        dispatcher.drain()
    except BaseException:   # interrupted: nothing of this run keeps running on the nodes
        dispatcher.cancel_all()
        raise
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
