"""The Python API: run a sweep, read its results. `import fleetbench` re-exports it, and the command
line (`coordinator run`, `query`, `report`) is a thin layer over the same functions.

    import fleetbench
    res = fleetbench.run("examples/sweep.yaml", db="results.duckdb")   # or a dict, or a Sweep
    res.table()                      # the `course` view: one row per result, named and judged (pandas)
    res.best(max_drop=0.01)          # per node and model: the fastest configuration within the bound
    res.sql("SELECT backend, median(latency_p50_ms) FROM course GROUP BY ALL")
    res.report(html="report.html")   # the report; in Jupyter it renders inline

    res = fleetbench.open("results.duckdb")    # a database written earlier

Refusals are one exception type each, the same the command line turns into its one line and exit code:
`SweepError` (input refused before anything ran, every problem listed; exit 2), `ClusterError` (the
fleet cannot be used; exit 1), `StoreError` (the database is busy or unreadable; exit 1) and
`Interrupted` (Ctrl-C or SIGTERM, also a kernel interrupt in Jupyter: finished rows are kept, the run
is marked interrupted and the embedded cluster stopped; a KeyboardInterrupt; exit 130 or 143).
A job that fails is not an exception: it is a `failed` row, and the sweep goes on.

Importing this module is cheap: Ray, DuckDB, pandas and the engines are imported when used.
"""
from __future__ import annotations

import io
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TextIO, Union

from fleetbench.shared.errors import StoreError, SweepError, printable

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from fleetbench.coordinator.report.compose import Report as ComposedReport
    from fleetbench.coordinator.report.recommend import Pick
    from fleetbench.coordinator.run import RunCounts, SweepLike

PathLike = Union[str, os.PathLike]
DEFAULT_DB = "results.duckdb"
_ORDER = "run_id, node, model, batch_size, backend, device, compression <> 'none', compression, job_id"


def run(sweep: SweepLike, db: PathLike = DEFAULT_DB, address: Optional[str] = None, resume: bool = False, *,
        progress: bool = True, out: Optional[TextIO] = None, interleaved: bool = False,
        resume_hint: Optional[str] = None) -> Results:
    """Run a sweep on the fleet and store its rows in `db`; returns the handle of the new run.

    `sweep` is a sweep file's path, a dict of the same shape, or a `Sweep`; a dict's relative paths
    start at the working directory. `address` joins a Ray cluster (default: $RAY_ADDRESS, else an
    embedded one-node cluster on 127.0.0.1, stopped at the end). `resume` continues the sweep's
    latest run in `db`, skipping jobs already ok. `progress` shows a bar (a widget in Jupyter);
    `out` receives the text the command line prints (fleet table, report), by default nothing.
    `interleaved`: with `measure.repeats` N > 1, each node runs its jobs in N rounds (A B C A B C ...).
    `resume_hint`: how the interruption message says to continue (default: with resume=True).

    >>> res = fleetbench.run({"name": "demo", "models": [{"name": "digits", "source": "timm:test_resnet",
    ...     "checkpoint": "examples/digits/model.safetensors", "num_classes": 10, "input_size": [3, 32, 32]}],
    ...     "backends": ["pytorch", "onnxruntime"], "dataset": {"kind": "digits", "limit": 64}})
    >>> res.counts
    RunCounts({'ok': 2, ...})
    """
    from fleetbench.coordinator.run import run_sweep
    hint = resume_hint or f"fleetbench.run({_arg(sweep)}, db={os.fspath(db)!r}, resume=True)"
    counts = run_sweep(sweep, db=str(db), address=address, resume=resume, progress=progress,
                       out=out if out is not None else io.StringIO(), interleaved=interleaved, resume_hint=hint)
    return Results(db, run=counts.run_id, counts=counts)


def open(db: PathLike = DEFAULT_DB, run: Optional[str] = None) -> Results:  # noqa: A001 - fleetbench.open
    """A handle on a results database written earlier (`run`: one run id, else every run / the latest).

    Raises SweepError when the file is missing or not a fleetbench database, or `run` is not in it.
    """
    from fleetbench.coordinator.report import data
    con = data.connect(Path(db))
    try:
        if run is not None:
            data.resolve_run(con, Path(db), run)
    finally:
        con.close()
    return Results(db, run=run)


def read_query(db: PathLike, sql: str, arrow: bool = False) -> Any:
    """One read-only statement (`coordinator query` and `Results.sql`): (columns, rows), or a pyarrow
    Table with `arrow`. A refused statement is a SweepError; a busy file stays a StoreError."""
    from fleetbench.coordinator import store
    if not sql.strip():
        raise SweepError("query: empty SQL statement")
    try:
        return store.query_arrow(Path(db), sql) if arrow else store.query(Path(db), sql)
    except StoreError as e:
        if "is busy" in str(e):
            raise
        raise SweepError(str(e)) from None


class Results:
    """A results database, and the run a handle was made for (`run_id`, None: every run).

    Each method reads the file anew on a read-only connection (the coordinator is its only writer),
    so a handle stays valid while more runs are added.
    """

    def __init__(self, db: PathLike, run: Optional[str] = None, counts: Optional[RunCounts] = None):
        self.db = Path(db)
        self.run_id = run
        self.counts = counts            # rows by status, for a handle returned by `run`

    def __repr__(self) -> str:
        what = f"run {self.run_id}" if self.run_id else "every run"
        counts = f", {dict(self.counts)}" if self.counts is not None else ""
        return f"<fleetbench.Results {self.db} ({what}){counts}>"

    def runs(self) -> pd.DataFrame:
        """Every stored run: sweep, run_id, started, finished, status, nodes and row counts."""
        import pandas as pd

        from fleetbench.coordinator.report.runs import list_runs
        return pd.DataFrame(list_runs(self.db), columns=["sweep", "run_id", "started", "finished", "status",
                                                         "nodes", "ok", "failed", "unsupported"])

    def arrow(self, run: Optional[str] = None) -> pa.Table:
        """The `course` view (one row per result, named and judged) as a pyarrow Table: the rows of
        `run`, else of this handle's run, else of every run."""
        run = run or self.run_id
        where = "WHERE run_id = ? " if run else ""
        from fleetbench.coordinator import store
        try:
            return store.query_arrow(self.db, f"SELECT * FROM course {where}ORDER BY {_ORDER}", [run] if run else None)
        except StoreError as e:
            if "is busy" in str(e):
                raise
            raise SweepError(str(e)) from None

    def table(self, run: Optional[str] = None) -> pd.DataFrame:
        """`arrow(run)` as a pandas DataFrame (`coordinator query "SELECT * FROM course"`)."""
        return self.arrow(run).to_pandas()

    def sql(self, query: str) -> pd.DataFrame:
        """One read-only statement on the database (views `course`, `hardware`, `comparison`), as
        `coordinator query` runs it: nothing can write, attach or load."""
        return read_query(self.db, query, arrow=True).to_pandas()

    def picks(self, max_drop: float = 0.01, by: str = "p50", max_size_mb: Optional[float] = None,
              batch_size: Optional[int] = None, run: Optional[str] = None) -> list[Pick]:
        """The recommendation of `best` as Pick objects (node, model, batch_size, row, why)."""
        from fleetbench.coordinator.report import data
        from fleetbench.coordinator.report.recommend import BY, best
        if by not in BY:
            raise SweepError(f"by: {by!r} is not one of {', '.join(BY)}")
        rows = data.load(self.db, run or self.run_id).rows
        return best(rows, max_drop=max_drop, max_size_mb=max_size_mb, by=by, batch_size=batch_size)

    def best(self, max_drop: float = 0.01, by: str = "p50", max_size_mb: Optional[float] = None,
             batch_size: Optional[int] = None, run: Optional[str] = None) -> pd.DataFrame:
        """Per node and model, the fastest ok, valid row whose quality (F1, else accuracy, else top-1
        agreement) is within `max_drop` of eager fp32; `by`: p50, p99 or throughput. A node and model
        with no such row has a row of its own whose `why` says so. Reads `run`, else this handle's
        run, else the latest."""
        import pandas as pd
        keep = ("compression", "backend", "device", "dtype", "latency_p50_ms", "latency_p99_ms", "throughput_ips",
                "size_mb", "size_compressed_mb", "quality_metric", "quality", "quality_drop", "hardware", "job_id")
        out = []
        for p in self.picks(max_drop=max_drop, by=by, max_size_mb=max_size_mb, batch_size=batch_size, run=run):
            row = p.row or {}
            out.append({"node": p.node, "model": p.model, "batch_size": p.batch_size,
                        **{k: row.get(k) for k in keep}, "why": p.why})
        return pd.DataFrame(out, columns=["node", "model", "batch_size", *keep, "why"])

    def compare(self, run_a: str, run_b: str, fail_above: float = 0.10, max_drop: float = 0.01) -> pd.DataFrame:
        """p50 and quality per configuration of two runs of one sweep (`coordinator compare`):
        `change` and `noise` are fractions; `regression` is a slow-down above `fail_above` and the
        noise, or a quality drop above `max_drop`."""
        import pandas as pd

        from fleetbench.coordinator.report.compare import KEY, compare, is_regression
        lines = compare(self.db, run_a, run_b, fail_above=fail_above, max_drop=max_drop)
        return pd.DataFrame([{**dict(zip(KEY, line.key)), "p50_a_ms": line.a.get("latency_p50_ms"),
                              "p50_b_ms": line.b.get("latency_p50_ms"), "change": line.change, "noise": line.noise,
                              "quality_a": line.a.get("quality"), "quality_b": line.b.get("quality"),
                              "quality_change": line.q_change, "verdict": line.verdict,
                              "regression": is_regression(line)} for line in lines],
                            columns=[*KEY, "p50_a_ms", "p50_b_ms", "change", "noise", "quality_a", "quality_b",
                                     "quality_change", "verdict", "regression"])

    def report(self, html: Optional[PathLike] = None, md: Optional[PathLike] = None, run: Optional[str] = None,
               max_drop: float = 0.01, out: Optional[TextIO] = None, force: bool = False) -> Report:
        """The report of `run` (else this handle's run, else the latest), as `coordinator report`
        makes it: writes `html` and `md` when given (an existing file only with `force`), prints the
        terminal form to `out` when given. In Jupyter the returned Report shows inline."""
        from fleetbench.coordinator.report.write import report
        rep = report(str(self.db), run_id=run or self.run_id, html=_str(html), md=_str(md), max_drop=max_drop,
                     out=out, quiet=out is None, force=force)
        return Report(rep)

    def _repr_html_(self) -> str:
        """In Jupyter: the runs, then the recommendation of this handle's run (or the latest)."""
        from fleetbench.coordinator.report import compose, data
        from fleetbench.coordinator.report.render_html import html_table
        from fleetbench.coordinator.report.table import BEST
        parts = [f"<p><b>fleetbench results</b> <code>{escape(str(self.db))}</code></p>",
                 self.runs().to_html(index=False, border=0)]
        try:
            rep = compose.compose(data.load(self.db, self.run_id))
        except SweepError as e:
            return "".join(parts) + f"<p>{escape(str(e))}</p>"
        parts += [f"<p><b>Recommendation</b>, run <code>{escape(rep.data.run.run_id)}</code>: "
                  f"{escape(rep.best_note)}</p>", html_table(BEST, rep.best_rows, "best")]
        return "".join(parts)


class Report:
    """One run's report: `.text` (as in a terminal), `.markdown`, `.html` (self-contained, with plots).
    In Jupyter it renders as HTML (in a frame of its own, so its styles stay inside)."""

    def __init__(self, composed: ComposedReport):
        self.composed = composed
        self._html: Optional[str] = None

    @property
    def run_id(self) -> str:
        return self.composed.data.run.run_id

    @property
    def text(self) -> str:
        from fleetbench.coordinator.report import render_term
        buf = io.StringIO()
        render_term.render(self.composed, file=buf)
        return buf.getvalue()

    @property
    def markdown(self) -> str:
        from fleetbench.coordinator.report import render_md
        return render_md.render(self.composed)

    @property
    def html(self) -> str:
        if self._html is None:
            from fleetbench.coordinator.report import plots, render_html
            rep = self.composed
            self._html = render_html.render(rep, plots.all_plots(rep.data.rows, rep.front, rep.data.samples))
        return self._html

    def __repr__(self) -> str:
        return f"<fleetbench.Report {printable(self.composed.title)}>"   # a REPL prints it as it is

    def __str__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{escape(self.html, quote=True)}" title="{escape(self.composed.title)}" '
                'style="width: 100%; height: 720px; border: 1px solid #d0d7de"></iframe>')


def _arg(sweep: Any) -> str:
    return repr(os.fspath(sweep)) if isinstance(sweep, (str, os.PathLike)) else "..."


def _str(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else os.fspath(path)
