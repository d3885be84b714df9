"""`coordinator report | best | runs | compare | query` on a real DuckDB file of hand-made rows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator.cli import main
from fleetbench.coordinator.store import Store

REPO = Path(__file__).resolve().parents[3]


def test_views_name_nodes_and_compare_against_none(demo_db):
    db, first, second = demo_db
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT node, hardware, compression, backend, size_x, compressed_x, p50_x, f1_diff, "
                       "quality_drop, speedup_vs_eager FROM course WHERE run_id = ? AND status = 'ok'",
                       [first]).fetchall()
    by = {(r[0], r[2], r[3]): r for r in rows}
    fp16 = by[("alpha", "fp16", "onnxruntime")]
    assert fp16[1] == "Intel(R) Xeon(R) Processor, 2 cores"
    assert fp16[4:8] == pytest.approx((0.5, 18 / 37, 5 / 6, -0.001))
    assert fp16[8] == pytest.approx(0.001) and fp16[9] == pytest.approx(2.0)
    assert by[("beta", "none", "pytorch")][1] == "AMD EPYC 9454, 2 cores, NVIDIA H200"
    hw = con.execute("SELECT * FROM hardware WHERE compression = 'int8-static'").fetchall()
    cols = [d[0] for d in con.description]
    assert {"alpha_p50_ms", "beta_p50_ms", "alpha_quality"} <= set(cols)
    got = dict(zip(cols, hw[0]))
    assert got["run_id"] == second and got["alpha_p50_ms"] == pytest.approx(4.5) and got["beta_p50_ms"] == 5.0
    con.close()


def test_report_writes_markdown_and_html(demo_db, tmp_path, capsys):
    db, first, _ = demo_db
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--run", first, "--md", str(md), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "alpha — Intel(R) Xeon(R) Processor, 2 cores (cpu)" in out
    text = md.read_text()
    assert "| fp16 | onnxruntime | cpu | fp32 | 1 | 20.00 | 18.00 | 5.000 |" in text
    assert "×0.50" in text and "−0.0010" in text and "boom: the compiler refused" in text
    page = html.read_text()
    assert page.count("<svg") == 4
    assert not any(ref in page for ref in ('src="http', 'href="http', "url(http", "@import"))
    assert "<script" not in page


def test_best_one_line_per_node_and_the_winner_differs(demo_db, capsys):
    db, first, _ = demo_db
    assert main(["best", "--db", str(db), "--run", first, "--max-f1-drop", "0.01"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(("alpha", "beta"))]
    assert len(lines) == 2
    assert "fp16" in lines[0] and "onnxruntime" in lines[0]        # int8 drops 0.02 F1: left out
    assert " none " in lines[1] and "onnxruntime" in lines[1]       # beta: ORT fp32 at 3.0 ms
    assert main(["best", "--db", str(db), "--run", first, "--max-f1-drop", "0.05"]) == 0
    assert "int8-static" in capsys.readouterr().out


def test_runs_lists_counts_and_shows_a_dead_coordinator_as_interrupted(demo_db, capsys):
    db, first, second = demo_db
    proc = subprocess.run([sys.executable, "-c", f"from fleetbench.coordinator.store import Store; "
                           f"s = Store({str(db)!r}); print(s.start_run('demo', '{{}}', None))"],
                          capture_output=True, text=True, check=True, cwd=REPO)   # exits without finish_run
    dead = proc.stdout.strip()
    assert main(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert first in out and second in out
    line = next(ln for ln in out.splitlines() if dead in ln)
    assert "interrupted" in line and "running" not in line
    first_line = next(ln for ln in out.splitlines() if first in ln)
    assert first_line.split()[-4:] == ["2", "10", "2", "0"]


def test_compare_flags_the_real_regression_not_the_noise(demo_db, capsys):
    db, first, second = demo_db
    assert main(["compare", "--db", str(db), first, second]) == 1
    out = capsys.readouterr().out
    slower = [ln for ln in out.splitlines() if "SLOWER" in ln]
    assert len(slower) == 1 and "alpha" in slower[0] and "int8-static" in slower[0]
    assert "1 regression(s)" in out
    assert main(["compare", "--db", str(db), first, second, "--fail-above", "60%"]) == 0
    assert main(["compare", "--db", str(db), first, first]) == 2   # a run compared with itself is refused


def test_compare_noise_hides_a_change_within_the_spread(tmp_path):
    from fleetbench.coordinator.report.compare import compare
    from tests.coordinator.report.conftest import add_samples, write_run
    db = tmp_path / "n.duckdb"
    with Store(db) as store:
        a, sa = write_run(store)
        b, sb = write_run(store, slow={"alpha-fp16-onnxruntime": 1.15})
    wide = {j: [v * f for v, f in zip(s, [0.7, 1.3] * 100)] for j, s in sa.items()}   # +-30% samples
    add_samples(db, a, wide)
    add_samples(db, b, sb)
    line = next(ln for ln in compare(db, a, b) if ln.key[0] == "alpha" and ln.key[3] == "fp16")
    assert line.change == pytest.approx(0.15) and line.noise > 0.15 and line.verdict == "same"


@pytest.mark.parametrize("args, needle", [
    (["report", "--run", "nope"], "unknown run id 'nope'"),
    (["best", "--sweep", "other"], "no run of sweep 'other'"),
    (["compare", "nope", "x"], "unknown run id 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(demo_db, capsys, args, needle):
    db, _, _ = demo_db
    assert main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_empty_db_only_failed_rows_and_different_sweeps_exit_2(tmp_path, capsys):
    from tests.coordinator.report.conftest import result
    db = tmp_path / "e.duckdb"
    Store(db).close()
    html = tmp_path / "x.html"
    assert main(["report", "--db", str(db), "--html", str(html)]) == 2
    assert "holds no runs" in capsys.readouterr().err and not html.exists()
    with Store(db) as store:
        bad = store.start_run("demo", "{}", None)
        store.put_result(result(bad, "alpha", "id", "none", "pytorch", 1, 0.9, 1, 1, status="failed",
                                latency_p50_ms=None, stage="load", error="x"))
        other = store.start_run("other", "{}", None)
        store.put_result(result(other, "alpha", "id", "none", "pytorch", 1, 0.9, 1, 1, sweep="other"))
    assert main(["report", "--db", str(db), "--run", bad, "--html", str(html)]) == 2
    assert "has no ok rows (1 failed" in capsys.readouterr().err and not html.exists()
    assert main(["compare", "--db", str(db), bad, other]) == 2
    assert "different sweeps" in capsys.readouterr().err
    assert main(["report", "--db", str(tmp_path / "missing.duckdb")]) == 2


def test_query_exports_csv_json_parquet_from_stdin_and_file(demo_db, tmp_path, monkeypatch):
    import io

    import pyarrow.parquet as pq
    db, _, _ = demo_db
    sql = "SELECT node, compression, latency_p50_ms FROM course WHERE status = 'ok' ORDER BY ALL"
    (tmp_path / "q.sql").write_text(sql)
    out = tmp_path / "o.parquet"
    assert main(["query", "-f", str(tmp_path / "q.sql"), "--db", str(db), "--format", "parquet", "--output", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 20 and table.column_names == ["node", "compression", "latency_p50_ms"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(sql))
    assert main(["query", "--db", str(db), "--format", "json", "--output", str(tmp_path / "o.json")]) == 0
    assert len(json.loads((tmp_path / "o.json").read_text())) == 20
    assert main(["query", sql, "--db", str(db), "--format", "csv", "-o", str(tmp_path / "o.csv")]) == 0
    assert (tmp_path / "o.csv").read_text().splitlines()[0] == "node,compression,latency_p50_ms"
    assert main(["query", sql, "--db", str(db), "--format", "parquet"]) == 2
    assert main(["query", "COPY results TO 'x.csv'", "--db", str(db), "--format", "csv", "-o", str(tmp_path / "w.csv")]) == 2
    assert not (tmp_path / "w.csv").exists()
