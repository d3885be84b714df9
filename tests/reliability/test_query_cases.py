"""`coordinator query` is read-only by construction: no statement writes a file, reads a foreign one,
reaches the network or loads an extension; each refusal is exit 2 and one line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleetbench.coordinator.cli import main
from fleetbench.coordinator.store import Store
from fleetbench.shared.job import Result


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "results.duckdb"
    with Store(path) as store:
        run = store.start_run("demo", "{}", None)
        store.put_result(Result(job_id="j1", sweep="demo", model="m", compression="none", backend="pytorch",
                                device="cpu", batch_size=1, node_id="n", hostname="h", hw_kind="cpu",
                                status="ok", run_id=run, latency_p50_ms=2.0))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def q(capsys, db: Path, sql: str) -> tuple[int, str, list[str]]:
    rc = main(["query", sql, "--db", str(db), "--format", "csv"])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, [ln.removeprefix("coordinator: ") for ln in cap.err.splitlines()]


def test_explain_analyze_copy_cannot_overwrite_a_file(tmp_path, db, capsys):
    victim = tmp_path / "other.duckdb"
    with Store(victim):
        pass
    before = digest(victim)
    rc, out, err = q(capsys, db, f"EXPLAIN ANALYZE COPY (SELECT 'gone' AS x) TO '{victim}'")
    assert rc == 2 and err == [f"{db}: EXPLAIN is allowed only around a SELECT (got COPY); nothing was run"]
    assert digest(victim) == before and out == ""


def test_explain_analyze_copy_to_a_new_file_creates_nothing(tmp_path, db, capsys):
    rc, _, err = q(capsys, db, f"explain   analyze copy (select 1) to '{tmp_path / 'new.csv'}' (FORMAT csv)")
    assert rc == 2 and err == [f"{db}: EXPLAIN is allowed only around a SELECT (got COPY); nothing was run"]
    assert not (tmp_path / "new.csv").exists()


@pytest.mark.parametrize("sql,kind", [
    ("COPY results TO '{tmp}/out.csv'", "COPY"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
    ("ATTACH '{tmp}/other.duckdb' AS o", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD sqlite", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("DELETE FROM results", "DELETE"),
    ("UPDATE results SET status = 'ok'", "UPDATE"),
    ("DROP VIEW comparison", "DROP"),
])
def test_writing_statements_refused(tmp_path, db, capsys, sql, kind):
    before = digest(db)
    rc, _, err = q(capsys, db, sql.format(tmp=tmp_path))
    assert rc == 2 and err == [f"{db}: the results database is opened read-only and this {kind} statement would "
                               "write or change state; only SELECT, EXPLAIN, PRAGMA and CALL are allowed"]
    assert digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["results.duckdb"]


@pytest.mark.parametrize("sql,needle", [
    ("SELECT * FROM read_parquet('https://example.invalid/x.parquet')",
     'Permission Error: Cannot access file "https://example.invalid/x.parquet" - file system operations are '
     'disabled by configuration'),
    ("SELECT * FROM read_csv('/etc/passwd')",
     'Permission Error: Cannot access file "/etc/passwd" - file system operations are disabled by configuration'),
    ("SELECT * FROM read_text('/etc/hostname')",
     'Permission Error: Cannot access file "/etc/hostname" - file system operations are disabled by configuration'),
    ("SELECT * FROM sqlite_scan('/tmp/x.db', 't')", "sqlite_scan"),
    ("SELECT * FROM 'https://example.invalid/x.csv'",
     'Permission Error: Cannot access file "https://example.invalid/x.csv" - file system operations are '
     'disabled by configuration'),
    ("SELECT * FROM glob('/etc/*')",
     'Permission Error: Cannot access file "/etc/*" - file system operations are disabled by configuration'),
])
def test_reading_outside_the_database_refused(db, capsys, sql, needle):
    rc, out, err = q(capsys, db, sql)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"{db}: ") and needle in err[0], err
    assert out == ""


def test_explain_of_a_select_is_allowed(db, capsys):
    rc, out, _ = q(capsys, db, "EXPLAIN ANALYZE SELECT count(*) FROM results")
    assert rc == 0 and "QUERY PROFILING" in out or "explain_value" in out
    rc, out, _ = q(capsys, db, "EXPLAIN SELECT * FROM comparison")
    assert rc == 0 and "explain_value" in out


def test_select_and_settings(db, capsys):
    rc, out, _ = q(capsys, db, "SELECT model, status, latency_p50_ms FROM comparison")
    assert rc == 0 and out.split() == ["model,status,latency_p50_ms", "m,ok,2.0"]
    rc, out, _ = q(capsys, db, "SELECT current_setting('enable_external_access') AS e, "
                               "current_setting('lock_configuration') AS l")
    assert rc == 0 and out.split() == ["e,l", "false,true"]


@pytest.mark.parametrize("sql,expect", [
    ("SELECT 1; SELECT 2", "2 statements given: `query` runs exactly one"),
    ("SELEC 1", None),
    ("", "query: empty SQL statement"),
    ("   ", "query: empty SQL statement"),
    ("-- only a comment", "empty SQL: give one SELECT statement"),
    ("EXPLAIN ANALYZE", None),
])
def test_malformed_sql(db, capsys, sql, expect):
    rc, _, err = q(capsys, db, sql)
    assert rc == 2 and len(err) == 1, err
    if expect is not None:
        assert err == [expect]
    else:
        assert err[0].startswith("invalid SQL: Parser Error")
