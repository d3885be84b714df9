"""One sweep, end to end: validate, discover, plan, dispatch, stream rows into DuckDB, report."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from fleetbench.coordinator.formats import render
from fleetbench.coordinator.plan import checkpoint_path, dataset_folder, plan
from fleetbench.coordinator.report import fleet_table
from fleetbench.shared.errors import ClusterError, FleetError, Interrupted, StoreError, SweepError, printable
from fleetbench.shared.job import Result
from fleetbench.shared.sweep import Sweep, load_sweep, parse_sweep

log = logging.getLogger(__name__)


SweepLike = Union[str, os.PathLike, dict, Sweep]


@dataclass(frozen=True)
class Source:
    """A sweep as given: validated, the name its errors carry, and the folder its relative paths start from."""
    sweep: Sweep
    origin: str                 # the file, else "sweep" (a dict or a Sweep object)
    base: Path                  # relative checkpoint, source and dataset paths start here
    path: Optional[Path] = None  # the file it was read from, if any


def read_sweep(sweep: SweepLike, origin: str = "sweep") -> Source:
    """A path (read and validated), a dict (validated) or a Sweep; relative paths of a dict or Sweep
    start at the working directory. Raises SweepError listing every problem."""
    if isinstance(sweep, Sweep):
        return Source(sweep, origin, Path.cwd())
    if isinstance(sweep, dict):
        return Source(parse_sweep(sweep, origin), origin, Path.cwd())
    if isinstance(sweep, (str, os.PathLike)):
        return Source(load_sweep(os.fspath(sweep)), os.fspath(sweep), Path(sweep).parent, Path(sweep))
    raise SweepError(f"{origin}: expected a path to a sweep file, a dict or a Sweep, got {type(sweep).__name__}")


def check_inputs(sweep: Sweep, sweep_path: Path, base: Optional[Path] = None) -> dict[str, Path]:
    """Local files the sweep names must exist before anything starts; returns model name -> file to ship.

    Errors start with `sweep_path`; relative paths start at `base` (default: the sweep file's folder)."""
    base = sweep_path.parent if base is None else base
    files = {}
    for i, m in enumerate(sweep.models):
        path = checkpoint_path(m.checkpoint, m.source, base)
        if path is None:
            continue
        field = "checkpoint" if m.checkpoint else "source"
        if not path.is_file():
            raise SweepError(f"{sweep_path}: models[{i}].{field}: {path}: no such file")
        files[m.name] = path
    ds = sweep.dataset
    if ds.kind == "imagefolder":
        folder = dataset_folder(ds, base)
        if not folder.is_dir():
            raise SweepError(f"{sweep_path}: dataset.path: {ds.path}: no such directory")
        classes = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for i, m in enumerate(sweep.models):
            if len(classes) > m.num_classes:
                raise SweepError(f"{sweep_path}: dataset.path: {ds.path}: {len(classes)} class folders but "
                                 f"models[{i}].num_classes is {m.num_classes} (labels {m.num_classes}.."
                                 f"{len(classes) - 1} would be outside the model's classes)")
    return files


def dataset_notes(sweep: Sweep, sweep_path: Path, base: Optional[Path] = None) -> list[str]:
    """What the dataset will really be, where it is not what the sweep says (a limit above its size); an
    image folder with images of fewer than two classes is refused (SweepError naming dataset.path)."""
    from fleetbench.agent.data import eval_size, limit_note
    from fleetbench.shared.errors import StageError
    ds = sweep.dataset
    if ds.kind == "imagefolder":
        ds = ds.model_copy(update={"path": str(dataset_folder(ds, sweep_path.parent if base is None else base))})
    elif ds.limit is None:
        return []
    try:
        note = limit_note(ds, eval_size(ds))
    except StageError as e:
        raise SweepError(f"{sweep_path}: dataset.path: {e}") from None
    return [note] if note else []


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
    source: Source
    files: dict[str, Path] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)      # what a person should know before it runs


MIN_FILE_SIZE_LIMIT = 1 << 30   # Ray's logs and object spilling, engine caches and the results file


def check_file_size_limit() -> None:
    """A small `ulimit -f` makes Ray's start time out after a long wait: refuse it up front."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < MIN_FILE_SIZE_LIMIT:
        raise SweepError(f"the file-size limit (ulimit -f) is {soft // 1024} KiB: Ray, the engine caches and the "
                         f"results database need files of at least {MIN_FILE_SIZE_LIMIT >> 20} MiB; raise it "
                         "(ulimit -f unlimited)")


def preflight(sweep_path: SweepLike, db: Optional[str] = None, resume: bool = False) -> Checked:
    """Every check that needs no fleet, in the order a user would fix them; raises SweepError.

    `run` and `validate` both call this, so `validate` passes exactly what `run` accepts up to the
    fleet (a target matching no node is found when the fleet is known: `validate --address`).
    `sweep_path` may also be a dict or a Sweep (see `read_sweep`).
    """
    source = read_sweep(sweep_path)
    sweep = source.sweep
    files = check_inputs(sweep, Path(source.origin), source.base)
    notes = dataset_notes(sweep, Path(source.origin), source.base)
    fields = {m.name: f"{source.origin}: models[{i}].{'checkpoint' if m.checkpoint else 'source'}"
              for i, m in enumerate(sweep.models)}
    onnx = {m.name for m in sweep.models if m.scheme == "onnx" and not m.checkpoint}
    payloads = {name: _payload(path, fields[name], name in onnx or None)   # before Ray starts
                for name, path in files.items()}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    check_cache()
    check_file_size_limit()
    if sweep.dataset.kind == "imagefolder":  # agents get an absolute path (the folder must exist on each node)
        path = str(dataset_folder(sweep.dataset, source.base))
        sweep = sweep.model_copy(update={"dataset": sweep.dataset.model_copy(update={"path": path})})
    if db is not None:
        check_db(db, (sweep, hashes, source.origin) if resume else None)
    return Checked(sweep, source, files, payloads, hashes, notes)


def check_db(db: str, resume: Optional[tuple[Sweep, dict[str, str], str]] = None) -> None:
    """The results database can be written (new, empty, this version or an older one to migrate); with
    `resume` (the sweep, its files' hashes, its path), its latest run of that sweep has the same spec."""
    from fleetbench.coordinator import store
    from fleetbench.coordinator.spec import check_same
    try:
        version = store.inspect(db, for_write=True)
        if resume is None:
            return
        sweep, hashes, sweep_path = resume
        none = SweepError(f"--resume: {db} has no earlier run of sweep {sweep.name!r}; "
                          "nothing to resume (run without --resume to start one)")
        if version == 0:
            raise none
        con = store._connect(Path(db), read_only=True)
        try:
            latest = con.execute("SELECT run_id, spec FROM sweeps WHERE sweep = ? "
                                 "ORDER BY started_at DESC, run_id DESC LIMIT 1", [sweep.name]).fetchall()
        finally:
            con.close()
        if not latest:
            raise none
        check_same(latest[0][0], latest[0][1], sweep, hashes, sweep_path)
    except StoreError as e:
        raise SweepError(f"--db {e}") from None


def _payload(path: Path, where: str = "", is_onnx: Optional[bool] = None) -> bytes:
    """The bytes shipped to agents: the file itself, or for ONNX the model with its external data inlined
    (ONNX refuses external data outside the model's folder). An ONNX file must hold a graph: protobuf reads
    an empty file, and many other files, as an empty model."""
    from fleetbench.shared.errors import one_line
    where = f"{where}: " if where else ""
    is_onnx = path.suffix == ".onnx" if is_onnx is None else is_onnx
    try:
        if not is_onnx:
            return path.read_bytes()
        import onnx
        model = onnx.load(str(path))
    except Exception as e:
        raise SweepError(f"{where}{path}: cannot read {'ONNX model' if is_onnx else 'file'} "
                         f"({one_line(e)})") from None
    if not model.graph.node or not model.graph.output:
        size = path.stat().st_size
        raise SweepError(f"{where}{path}: not an ONNX model: it holds no graph "
                         f"({'an empty file' if size == 0 else f'{size:,} bytes'})")
    return model.SerializeToString()


class RunCounts(Counter):
    """The rows of one run by status; `run_id` names the run."""
    run_id: str = ""


def run_sweep(sweep_path: SweepLike, db: str = "results.duckdb", address: Optional[str] = None,
              resume: bool = False, progress: bool = True, out=None,
              interleaved: bool = False, resume_hint: Optional[str] = None) -> RunCounts:
    """Run a sweep (a file, a dict or a Sweep) and return the count of rows by status. Bad input raises
    SweepError before any write.

    SIGINT or SIGTERM cancels the in-flight jobs, marks the run `interrupted`, stops the embedded Ray
    and raises Interrupted (finished rows are kept; --resume runs the rest).

    `interleaved`: with `measure.repeats` N > 1, each node runs its jobs in N rounds (A B C A B C ...),
    one window per round, merged into one row per job (coordinator.interleave).
    """
    out = out or sys.stdout   # looked up now: the stream of this call, not of import time
    checked = preflight(sweep_path, db=db, resume=resume)   # everything checkable, before Ray starts
    from fleetbench.coordinator import cluster  # imports Ray: only for a sweep that will run
    from fleetbench.coordinator.dispatch import HeadLost
    sweep, payloads, hashes = checked.sweep, checked.payloads, checked.hashes
    for note in checked.notes:
        print(f"{checked.source.origin}: {note}", file=out)
    again = resume_hint or resume_command([checked.source.origin], db, address)
    with interruptible() as signals, _writer_lock(db):   # a second coordinator on --db: refused before Ray
        try:
            where = cluster.connect(address, dispatch=True)
            signals.arm()   # again: ray.init installs a SIGTERM handler of its own
            return _run_connected(sweep, sweep_path, db, where, resume, progress, out, hashes, payloads, signals,
                                  interleaved)
        except KeyboardInterrupt as e:
            stop = signals.interrupted(e)
            stop.hint = f"rows stored so far are kept in {db}; run the missing jobs with: {again}"
            raise stop from None
        except HeadLost as e:       # the head stopped or restarted: what is stored stays
            raise ClusterError(f"{e}; rows stored so far are kept in {db}; when the head is back and its nodes "
                               f"have joined it, run the missing jobs with: {again}") from None
        except _StoreFailed as e:   # the database stopped taking rows (a full disk): what is stored stays
            raise FleetError(f"{e}; rows stored so far are kept; when it can be written again, run the "
                             f"missing jobs with: {again}") from None
        finally:
            cluster.disconnect()   # stops the embedded Ray this process started


def resume_command(what: list[str], db: str, address: Optional[str]) -> str:
    """The command that continues this run (`what`: the sweep file, or the flags that make the sweep),
    quoted for a POSIX shell (paths with spaces, quotes, $)."""
    args = ["coordinator", "run", *what, "--db", str(db)]
    if address:
        args += ["--address", address]
    return shlex.join([*args, "--resume"])


@contextlib.contextmanager
def _writer_lock(db: str):
    from fleetbench.coordinator.store import writer_lock
    try:
        with writer_lock(db):
            yield
    except StoreError as e:
        if "is busy" not in str(e):
            raise
        raise SweepError(f"--db {e}") from None


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


class _StoreFailed(StoreError):
    """A row of a started run could not be stored (a full disk, an I/O error)."""


def _run_connected(sweep, sweep_path, db, where, resume, progress, out, hashes, payloads, signals,
                   interleaved: bool = False) -> RunCounts:
    from fleetbench.coordinator import cluster
    from fleetbench.coordinator.spec import spec_json
    from fleetbench.coordinator.store import Store
    profiles = cluster.discover()
    print(f"fleet ({where}): {len(profiles)} node(s)", file=out)
    print(render(*fleet_table(profiles), "table"), file=out)
    the_plan = plan(sweep, profiles, hashes)
    with Store(db) as store:
        run_id = store.latest_run(sweep.name) if resume else None
        run_id = run_id or store.start_run(sweep.name, spec_json(sweep, hashes), where)
        done = store.done_job_ids(run_id) if resume else set()
        store.put_nodes(run_id, the_plan.nodes)
        jobs = [j for j in the_plan.jobs if j.job_id not in done]
        if sweep.search.strategy == "race":   # a sequence of plans over these jobs (coordinator/race.py)
            from fleetbench.coordinator.race import with_search
            jobs = with_search(jobs, sweep.search)
        print(f"run {run_id}: {the_plan.total} planned, {len(the_plan.unsupported)} unsupported here, "
              f"{len(done)} already ok, {len(jobs)} to run", file=out)
        try:
            names = {p.node_id: p.node_key for p in the_plan.nodes}
            counts = _dispatch(store, run_id, the_plan.unsupported, jobs, payloads, progress, names, interleaved)
        except KeyboardInterrupt as e:
            stop = signals.interrupted(e)
            store.finish_run(run_id, "interrupted")
            print(f"\nrun {run_id}: interrupted by {stop.signal_name}; in-flight jobs cancelled", file=out)
            raise stop from None
        except StoreError as e:
            with contextlib.suppress(StoreError):
                store.finish_run(run_id, "interrupted")
            raise _StoreFailed(str(e)) from None
        counts["ok (resumed)"] = len(done) if resume else 0
        store.finish_run(run_id, "done")
    _report(db, run_id, out)
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=out)
    result = RunCounts(counts)
    result.run_id = run_id
    return result


def in_notebook() -> bool:
    """True in a Jupyter kernel that can show a widget progress bar (ipywidgets installed)."""
    import importlib.util
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return (shell is not None and "IPKernelApp" in shell.config
            and importlib.util.find_spec("ipywidgets") is not None)


class Progress:
    """A bar on a terminal or in a notebook; in a CI log (not a terminal) one line per finished job.
    Names the node, counts statuses."""

    def __init__(self, total: int, names: dict[str, str], enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.names, self.total, self.done = names, total, 0
        self.counts: Counter = Counter()
        notebook = enabled and in_notebook()
        if notebook:
            from tqdm.notebook import tqdm as make_bar  # the widget bar in a Jupyter kernel
        else:
            from tqdm import tqdm as make_bar
        self.lines = enabled and not notebook and not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.bar = make_bar(total=total, disable=not enabled or self.lines, unit="job", file=self.stream,
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
            why = f" ({': '.join(filter(None, [r.stage, r.error]))})"[:120] if r.status != "ok" else ""
            print(printable(f"[{self.done}/{self.total}] {node}: {what} {r.status}{figure}{why} | {self._tally()}"),
                  file=self.stream, flush=True)
            return
        self.bar.update(1)
        self.bar.set_postfix_str(printable(f"{self._tally()} | last {node}: {what} {r.status}"), refresh=False)

    def stage(self, job, name: str) -> None:
        if not self.lines:
            self.bar.set_description_str(printable(f"{job.node_key}: {job.backend}:{job.device} bs{job.batch_size} "
                                                   f"{name}"), refresh=True)

    def close(self) -> None:
        self.bar.close()


def _dispatch(store, run_id: str, unsupported: list[Result], jobs, payloads: dict[str, bytes], progress: bool,
              names: dict[str, str], interleaved: bool = False) -> Counter:
    import ray

    from fleetbench.coordinator.dispatch import Dispatcher
    from fleetbench.coordinator.hosts import HostWindows
    from fleetbench.coordinator.interleave import Collector, rounds
    from fleetbench.coordinator.race import Race, racing

    total = len(unsupported) + len(jobs)   # rows to come: one per job (interleaved rounds merge into it)
    windows = HostWindows()
    collector = None
    if interleaved and not racing(jobs) and any(j.measure.repeats > 1 for j in jobs):   # a race interleaves itself
        jobs, owner = rounds(jobs)
        collector = Collector(owner)
    bar = Progress(total, names, progress)

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
        if collector is not None:
            whole = collector.add(result)
            if whole is None:      # more rounds of this job to come
                return
            result = whole
        store.put_result(result)
        bar.result(result)

    def keep_log(row: Result, log: dict) -> None:
        store.put_log(run_id, row.job_id, row.stage, log.get("reason") or row.error, log.get("traceback"),
                      log.get("output"))

    for row in unsupported:       # known before anything runs: stored in one opening of the file
        row.run_id = run_id
    store.put_results(unsupported)
    for row in unsupported:
        bar.result(row)
    weights = {name: ray.put(data) for name, data in payloads.items()
               if any(j.model.name == name for j in jobs)}
    dispatcher = Dispatcher(put, bar.stage, on_log=keep_log)
    try:
        if racing(jobs):   # the race decides what runs, plan after plan, from what is stored
            the_race = Race(store, run_id, jobs, put)
            dispatcher.on_result = the_race.arrived
            the_race.start(lambda some: dispatcher.submit(some, weights))
        else:
            dispatcher.submit(jobs, weights)
        dispatcher.drain()
    except BaseException:   # interrupted: nothing of this run keeps running on the nodes
        dispatcher.cancel_all()
        raise
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
