"""The DuckDB results store, on real files (no mocks)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator.store import Store, query, result_schema
from fleetbench.shared.errors import StoreError
from fleetbench.shared.job import RESULT_COLUMNS, NodeProfile, Result

REPO = Path(__file__).resolve().parents[2]


def make_result(run_id: str, job_id: str, **kw) -> Result:
    base = dict(job_id=job_id, sweep="demo", model="m", compression="none", backend="pytorch",
                device="cpu", batch_size=1, node_id="n1", hostname="h1", hw_kind="cpu",
                run_id=run_id, dtype="fp32", latency_p50_ms=10.0, latency_mean_ms=11.0,
                started_at="2025-01-02T03:04:05.123456+00:00",
                finished_at="2025-01-02T03:04:07+00:00")
    base.update(kw)
    return Result(**base)


def make_profile(node_id: str, **kw) -> NodeProfile:
    base = dict(hostname="h1", kinds=["cpu"], cpu_model="Xeon", cores=8, logical_cpus=16,
                isa_flags=["avx2"], ram_mb=32000.0, node_id=node_id, node_key="h1")
    base.update(kw)
    return NodeProfile(**base)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.duckdb"


def test_schema_created_and_idempotent(db: Path) -> None:
    with Store(db):
        pass
    with Store(db):      # a second open must not fail on the existing schema
        pass
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results' "
            "ORDER BY ordinal_position").fetchall()]
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'results'").fetchall())
    finally:
        con.close()
    assert {"sweeps", "nodes", "results", "comparison"} <= tables
    assert cols == list(RESULT_COLUMNS)
    assert types["latency_p50_ms"] == "DOUBLE"
    assert types["batch_size"] == "BIGINT"
    assert types["cache_hit"] == "BOOLEAN"
    assert types["model"] == "VARCHAR"
    assert types["started_at"] == "TIMESTAMP"
    assert result_schema()["finished_at"] == "TIMESTAMP"


def test_runs(db: Path) -> None:
    with Store(db) as store:
        assert store.latest_run("demo") is None
        first = store.start_run("demo", json.dumps({"name": "demo"}), None)
        second = store.start_run("demo", "{}", "ray://head:10001")
        other = store.start_run("other", "{}", None)
        assert len({first, second, other}) == 3
        assert sorted([first, second]) == [first, second]    # sortable by start time
        assert store.latest_run("demo") == second
        assert store.latest_run("other") == other
        store.finish_run(second, "done")
    names, rows = query(db, f"SELECT status, finished_at IS NOT NULL, address, spec "
                            f"FROM sweeps WHERE run_id = '{second}'")
    assert rows == [("done", True, "ray://head:10001", "{}")]


def test_put_result_upsert_replaces(db: Path) -> None:
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_result(make_result(run, "j1", status="failed", stage="export", error="boom",
                                     latency_p50_ms=None))
        store.put_result(make_result(run, "j1", latency_p50_ms=4.5, cache_hit=True))
        rows = store.rows(run)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["error"] is None and row["stage"] is None
    assert row["latency_p50_ms"] == 4.5 and row["cache_hit"] is True
    assert row["started_at"] == "2025-01-02T03:04:05.123456"     # stored as UTC TIMESTAMP
    assert Result(**row).job_id == "j1"                           # rows round-trip into Result


def test_put_result_needs_run_id(db: Path) -> None:
    with Store(db) as store:
        with pytest.raises(StoreError, match="run_id"):
            store.put_result(make_result(None, "j1"))


def test_durable_without_finish(db: Path) -> None:
    store = Store(db)
    run = store.start_run("demo", "{}", None)
    store.put_result(make_result(run, "j1"))
    store.close()                     # no finish_run
    with Store(db) as store:
        assert [r["job_id"] for r in store.rows(run)] == ["j1"]


def test_durable_after_kill(db: Path, tmp_path: Path) -> None:
    """A writer killed with SIGKILL right after put_result loses nothing already stored."""
    flag = tmp_path / "written"
    code = textwrap.dedent(f"""
        import time
        from fleetbench.coordinator.store import Store
        from fleetbench.shared.job import Result
        s = Store({str(db)!r})
        run = s.start_run("demo", "{{}}", None)
        s.put_result(Result(job_id="j1", sweep="demo", model="m", compression="none",
                            backend="pytorch", device="cpu", batch_size=1, node_id="n1",
                            hostname="h1", hw_kind="cpu", run_id=run))
        open({str(flag)!r}, "w").write(run)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        _wait_for(flag, proc)
        run = flag.read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with Store(db) as store:
        assert store.done_job_ids(run) == {"j1"}


def test_done_job_ids_counts_only_ok(db: Path) -> None:
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        other = store.start_run("demo", "{}", None)
        store.put_result(make_result(run, "ok1"))
        store.put_result(make_result(run, "bad", status="failed", stage="build", error="x"))
        store.put_result(make_result(run, "nope", status="unsupported", error="no gpu"))
        store.put_result(make_result(other, "ok2"))
        assert store.done_job_ids(run) == {"ok1"}
        assert store.done_job_ids(other) == {"ok2"}
        assert store.done_job_ids("missing") == set()


def test_nodes_upsert(db: Path) -> None:
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_nodes(run, [make_profile("n1"), make_profile("n2", hostname="h2")])
        store.put_nodes(run, [make_profile("n1", cores=4, gpus=[{"name": "H200"}],
                                           versions={"torch": "2.9"}, kinds=["cpu", "nvidia"])])
    names, rows = query(db, "SELECT node_id, hostname, cores, kinds, gpus, versions "
                            "FROM nodes ORDER BY node_id")
    assert len(rows) == 2
    n1 = dict(zip(names, rows[0]))
    assert n1["cores"] == 4 and n1["kinds"] == ["cpu", "nvidia"]
    assert json.loads(n1["gpus"]) == [{"name": "H200"}]
    assert json.loads(n1["versions"]) == {"torch": "2.9"}
    assert rows[1][:2] == ("n2", "h2")


def test_comparison_speedup(db: Path) -> None:
    with Store(db) as store:
        old = store.start_run("demo", "{}", None)
        store.put_result(make_result(old, "old", latency_p50_ms=1.0))
        run = store.start_run("demo", "{}", None)
        put = store.put_result
        put(make_result(run, "ref-cpu", latency_p50_ms=20.0))
        put(make_result(run, "ort-cpu", backend="onnxruntime", latency_p50_ms=10.0))
        put(make_result(run, "ref-cuda", device="cuda", latency_p50_ms=4.0))
        put(make_result(run, "trt", backend="tensorrt", device="cuda", compression="fp16",
                        latency_p50_ms=1.0))
        put(make_result(run, "ov-gpu", backend="openvino", device="GPU", latency_p50_ms=5.0))
        put(make_result(run, "bs8", backend="onnxruntime", batch_size=8, latency_p50_ms=30.0))
        put(make_result(run, "fail", backend="tflite", status="failed", stage="export",
                        error="boom", latency_p50_ms=None))
        put(make_result(run, "n2", node_id="n2", hostname="h2", backend="onnxruntime",
                        latency_p50_ms=2.0))
    names, rows = query(db, "SELECT * FROM comparison")
    by = {(r["backend"], r["device"], r["batch_size"], r["node_id"]): r
          for r in (dict(zip(names, row)) for row in rows)}
    assert len(rows) == 8                                  # only the latest run
    assert {r["run_id"] for r in by.values()} == {run}
    assert by[("pytorch", "cpu", 1, "n1")]["speedup_vs_ref"] == pytest.approx(1.0)
    assert by[("onnxruntime", "cpu", 1, "n1")]["speedup_vs_ref"] == pytest.approx(2.0)
    trt = by[("tensorrt", "cuda", 1, "n1")]
    assert trt["speedup_vs_ref"] == pytest.approx(4.0) and trt["ref_device"] == "cuda"
    ov = by[("openvino", "GPU", 1, "n1")]                  # no same-device ref: falls back to cpu
    assert ov["speedup_vs_ref"] == pytest.approx(4.0) and ov["ref_device"] == "cpu"
    assert by[("onnxruntime", "cpu", 8, "n1")]["speedup_vs_ref"] is None   # no bs8 reference
    failed = by[("tflite", "cpu", 1, "n1")]
    assert failed["speedup_vs_ref"] is None and failed["status"] == "failed"
    assert failed["error"] == "boom"
    assert by[("onnxruntime", "cpu", 1, "n2")]["speedup_vs_ref"] is None   # other node
    expected = {"sweep", "run_id", "hw_kind", "hostname", "model", "compression", "backend",
                "device", "dtype", "batch_size", "status", "latency_p50_ms", "latency_mean_ms",
                "throughput_ips", "ram_peak_mb", "vram_peak_mb", "size_mb", "size_compressed_mb",
                "precision_macro", "recall_macro", "f1_macro", "accuracy", "top1_agreement",
                "speedup_vs_ref"}
    assert expected <= set(names)


def test_comparison_leaves_invalid_rows_out_and_comparison_all_keeps_them(db: Path) -> None:
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_result(make_result(run, "ref", latency_p50_ms=20.0, valid=True))
        store.put_result(make_result(run, "noisy", backend="onnxruntime", latency_p50_ms=5.0, valid=False,
                                     validity="cv 31% > 10%"))
        store.put_result(make_result(run, "ov", backend="openvino", latency_p50_ms=10.0, valid=True))
        store.put_result(make_result(run, "fail", backend="tflite", status="failed", error="boom",
                                     latency_p50_ms=None))
        store.mark_invalid(run, "ov", "timed while job x ran on the same host (node n2)")
        store.mark_invalid(run, "noisy", "cpu steal 12% > 5%")
        store.mark_invalid(run, "fail", "never applies to a failed row")
    names, rows = query(db, "SELECT backend, valid, validity FROM comparison ORDER BY backend")
    assert rows == [("pytorch", True, None), ("tflite", None, None)]
    names, rows = query(db, "SELECT backend, valid, validity, speedup_vs_ref FROM comparison_all ORDER BY backend")
    assert rows == [("onnxruntime", False, "cv 31% > 10%; cpu steal 12% > 5%", 4.0),
                    ("openvino", False, "timed while job x ran on the same host (node n2)", 2.0),
                    ("pytorch", True, None, 1.0), ("tflite", None, None, None)]


def test_samples_and_window_lists_round_trip(db: Path) -> None:
    samples = [1.5, 1.25, 3.0, 1.0]
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_result(make_result(run, "a", samples_ms=samples, window_p50s_ms=[1.375, 2.0],
                                     window_iters=[2, 2], repeats=2))
        store.put_result(make_result(run, "b"))   # no samples (an unsupported row, say): no samples row
        assert store.samples(run, "a") == samples and store.samples(run, "b") is None
        again = make_result(run, "a", samples_ms=[9.0])
        store.put_result(again)                   # a re-run replaces its samples too
        assert store.samples(run, "a") == [9.0]
    names, rows = query(db, "SELECT r.window_iters, r.window_p50s_ms, s.samples_ms FROM results r "
                            "JOIN samples s USING (run_id, job_id)")
    assert rows == [(None, None, [9.0])]
    assert result_schema()["window_p50s_ms"] == "DOUBLE[]"
    assert "samples_ms" not in result_schema() and result_schema()["window_iters"] == "BIGINT[]"


@pytest.mark.parametrize("sql", [
    "INSERT INTO sweeps (run_id) VALUES ('x')",
    "CREATE TABLE t (a INT)",
    "DROP TABLE results",
    "UPDATE results SET status = 'ok'",
    "DELETE FROM results",
    "ALTER TABLE results ADD COLUMN z INT",
    "COPY results TO 'out.csv'",
    "ATTACH 'other.duckdb' AS other",
    "EXPORT DATABASE 'dump'",
])
def test_query_refuses_writes(db: Path, sql: str) -> None:
    Store(db).close()
    with pytest.raises(StoreError) as info:
        query(db, sql)
    message = str(info.value)
    assert "opened read-only" in message and "would write" in message
    assert str(db) in message


def test_query_refuses_several_statements(db: Path) -> None:
    Store(db).close()
    with pytest.raises(StoreError, match="exactly one"):
        query(db, "SELECT 1; SELECT 2")


def test_query_reads(db: Path) -> None:
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_result(make_result(run, "j1"))
    names, rows = query(str(db), "SELECT job_id, latency_p50_ms FROM results")
    assert names == ["job_id", "latency_p50_ms"] and rows == [("j1", 10.0)]


def test_query_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    with pytest.raises(StoreError, match="no such results database") as info:
        query(path, "SELECT 1")
    assert str(path) in str(info.value)
    assert not path.exists()


def test_query_syntax_error(db: Path) -> None:
    Store(db).close()
    with pytest.raises(StoreError, match="syntax error") as info:
        query(db, "SELEC 1")
    assert "\n" not in str(info.value)


def test_query_unknown_table(db: Path) -> None:
    Store(db).close()
    with pytest.raises(StoreError, match="nope"):
        query(db, "SELECT * FROM nope")


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("writer did not signal readiness")
        time.sleep(0.05)


def test_query_reads_while_a_coordinator_writes(db: Path, tmp_path: Path) -> None:
    """The coordinator keeps the file closed between rows: readers get in, a second writer does not."""
    flag = tmp_path / "open"
    code = (f"import time; from fleetbench.coordinator.store import Store; s = Store({str(db)!r}); "
            f"run = s.start_run('demo', '{{}}', None); open({str(flag)!r}, 'w').close(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        _wait_for(flag, proc)
        assert query(db, "SELECT count(*), min(status) FROM sweeps")[1] == [(1, "running")]
        with pytest.raises(StoreError, match="busy: another coordinator is writing"):
            Store(db)                               # a second writer is refused
    finally:
        proc.kill()
        proc.wait(timeout=30)
    Store(db).close()                               # free again once the writer is gone


def test_query_says_busy_while_the_file_is_held(db: Path, tmp_path: Path, monkeypatch) -> None:
    from fleetbench.coordinator import store as store_mod
    Store(db).close()
    monkeypatch.setattr(store_mod, "READ_WAIT_S", 0.3)
    flag = tmp_path / "open"
    code = (f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
            f"open({str(flag)!r}, 'w').close(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        _wait_for(flag, proc)
        with pytest.raises(StoreError) as info:
            query(db, "SELECT count(*) FROM results")
        assert "busy" in str(info.value) and "coordinator is writing" in str(info.value)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert query(db, "SELECT count(*) FROM results")[1] == [(0,)]


def test_adds_missing_result_column(db: Path) -> None:
    from fleetbench.coordinator.store import _NODES_DDL, _SWEEPS_DDL
    con = duckdb.connect(str(db))     # a file of an older fleetbench: no meta table, fewer columns
    con.execute(_SWEEPS_DDL)
    con.execute(_NODES_DDL)
    con.execute("CREATE TABLE results (run_id VARCHAR, job_id VARCHAR, sweep VARCHAR, "
                "status VARCHAR, PRIMARY KEY (run_id, job_id))")
    con.execute("INSERT INTO results VALUES ('r0', 'old', 'demo', 'ok')")
    con.close()
    with Store(db) as store:
        store.put_result(make_result("r1", "new", top1_agreement=0.99))
        assert store.done_job_ids("r0") == {"old"}
    names, rows = query(db, "SELECT * FROM results ORDER BY run_id")
    assert set(RESULT_COLUMNS) <= set(names)
    got = [dict(zip(names, r)) for r in rows]
    assert got[0]["top1_agreement"] is None and got[1]["top1_agreement"] == 0.99


def test_closed_store_refuses(db: Path) -> None:
    store = Store(db)
    store.close()
    store.close()                                   # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.latest_run("demo")


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "bad.duckdb"
    path.write_text("not a database")
    with pytest.raises(StoreError, match="not a DuckDB database"):
        query(path, "SELECT 1")
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store(path)


def test_a_reader_gets_in_while_rows_keep_coming(db: Path, tmp_path: Path) -> None:
    """A writer storing a row every 20 ms holds the file between rows; a reader's request makes it let go."""
    flag = tmp_path / "open"
    code = textwrap.dedent(f"""
        import time
        from fleetbench.coordinator.store import Store
        from fleetbench.shared.job import Result
        s = Store({str(db)!r})
        run = s.start_run('demo', '{{}}', None)
        for i in range(100000):
            s.put_result(Result(job_id=f'j{{i}}', sweep='demo', model='m', compression='none', backend='pytorch',
                                device='cpu', batch_size=1, node_id='n', hostname='h', hw_kind='cpu', run_id=run))
            if i == 3:
                open({str(flag)!r}, 'w').close()
            time.sleep(0.02)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        _wait_for(flag, proc)
        seen = []
        for _ in range(3):
            seen.append(query(db, "SELECT count(*) FROM results")[1][0][0])
            time.sleep(0.3)
        assert proc.poll() is None, "the writer must still be writing"
        assert seen[0] >= 4 and seen[-1] > seen[0], seen      # rows arrived between the reads
    finally:
        proc.kill()
        proc.wait(timeout=30)
