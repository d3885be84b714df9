"""End to end on the embedded default: a real local Ray cluster, real engines, a real DuckDB file."""
import contextlib
import os
import subprocess
import sys
import time

import duckdb
import psutil
import pytest
import yaml

from tests.conftest import DEMO_CHECKPOINT, ROOT

MEASURE = {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}


def write_sweep(path, **over):
    spec = {
        "name": "e2e",
        "models": [
            {"name": "digits", "source": "timm:test_resnet", "checkpoint": str(DEMO_CHECKPOINT),
             "num_classes": 10, "input_size": [3, 32, 32]},
            {"name": "trap", "source": "python:tests.fixtures.bad_models:batch_trap", "num_classes": 10,
             "input_size": [3, 16, 16]},
        ],
        "dataset": {"kind": "digits", "limit": 24},
        "backends": ["pytorch", "onnxruntime", "tensorrt"],
        "batch_sizes": [1, 8],
        "measure": MEASURE,
        **over,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def launchers_since(began: float, wait_s: float = 30) -> list[int]:
    """Job launchers (agent/jobproc.py) of this test session started since `began` and still running."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter(["cmdline", "create_time", "status"]):
            with contextlib.suppress(psutil.Error):
                if "--launcher" in (p.info["cmdline"] or ()) and p.info["create_time"] >= began - 1 and \
                        p.info["status"] != psutil.STATUS_ZOMBIE and \
                        p.environ().get("FLEETBENCH_CACHE") == os.environ["FLEETBENCH_CACHE"]:
                    left.append(p.pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def coordinator(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sweep_streams_rows_into_duckdb_and_resume_reruns_only_the_rest(tmp_path):
    from fleetbench.coordinator.run import run_sweep
    sweep, db = write_sweep(tmp_path / "sweep.yaml"), tmp_path / "r.duckdb"
    began = time.time()
    counts = run_sweep(str(sweep), db=str(db), progress=False)
    assert counts["ok"] == 7 and counts["failed"] == 1 and counts["unsupported"] == 4
    assert launchers_since(began) == []   # no job launcher outlives the sweep's embedded cluster

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT model, backend, batch_size, status, stage, error, latency_p50_ms, f1_macro, "
                       "top1_agreement, size_mb, hostname, node_id, started_at FROM results").fetchall()
    assert len(rows) == 12
    by = {(r[0], r[1], r[2]): r for r in rows}
    for _key, r in by.items():
        if r[3] == "ok":
            assert r[6] > 0 and r[8] >= 0.99 and r[9] > 0 and r[10] and len(r[11]) > 20
    assert by[("digits", "onnxruntime", 8)][7] >= 0.95
    assert by[("trap", "pytorch", 8)][3:5] == ("failed", "measure")
    # the node's one ONNX export of the trap has a dynamic batch axis (traced at batch 2): the graph runs at 8
    assert by[("trap", "onnxruntime", 8)][3] == "ok"
    assert "BatchTrap refuses" in by[("trap", "pytorch", 8)][5]
    trt = by[("digits", "tensorrt", 1)]
    assert trt[3] == "unsupported" and "tensorrt" in trt[5]
    assert con.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM sweeps WHERE status = 'done'").fetchone()[0] == 1
    # a few samples per row: every ok row is judged invalid (p99 from 3 samples), so `comparison`
    # leaves them out and `comparison_all` keeps them
    assert con.execute("SELECT count(*) FROM results WHERE status = 'ok' AND valid").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM comparison WHERE status = 'ok'").fetchone()[0] == 0
    view = con.execute("SELECT backend, speedup_vs_ref FROM comparison_all WHERE status = 'ok' AND model = 'digits' "
                       "AND batch_size = 1 ORDER BY backend").fetchall()
    assert dict(view)["pytorch"] == pytest.approx(1.0)
    ok_started = {k: r[12] for k, r in by.items() if r[3] == "ok"}
    con.close()

    counts = run_sweep(str(sweep), db=str(db), progress=False, resume=True)
    assert counts["ok (resumed)"] == 7 and counts["failed"] == 1 and counts["ok"] == 0
    con = duckdb.connect(str(db), read_only=True)
    again = con.execute("SELECT model, backend, batch_size, status, started_at FROM results").fetchall()
    assert len(again) == 12 and con.execute("SELECT count(DISTINCT run_id) FROM results").fetchone()[0] == 1
    for m, b, bs, status, started in again:
        if status == "ok":
            assert started == ok_started[(m, b, bs)]   # not re-run
    con.close()


def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path):
    sweep = write_sweep(tmp_path / "bad.yaml", backends=["pytorch", "onnx"])
    db = tmp_path / "r.duckdb"
    for cmd in (("validate", sweep), ("run", sweep, "--db", db)):
        p = coordinator(*cmd)
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip().count("\n") == 0 and "backends[1]: unknown backend 'onnx'" in p.stderr
        assert "Traceback" not in p.stderr
    assert not db.exists()


def test_missing_checkpoint_is_bad_input(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml")
    text = sweep.read_text().replace(str(DEMO_CHECKPOINT), str(tmp_path / "gone.safetensors"))
    sweep.write_text(text)
    p = coordinator("validate", sweep)
    assert p.returncode == 2 and "models[0].checkpoint" in p.stderr and "no such file" in p.stderr


def test_validate_ok_and_query_is_read_only(tmp_path):
    p = coordinator("validate", "examples/sweep.yaml")
    assert p.returncode == 0 and "ok" in p.stdout
    db = tmp_path / "q.duckdb"
    from fleetbench.coordinator.store import Store
    Store(db).close()
    p = coordinator("query", "SELECT count(*) AS n FROM results", "--db", db, "--format", "csv")
    assert p.returncode == 0 and p.stdout.splitlines() == ["n", "0"]
    p = coordinator("query", "DELETE FROM results", "--db", db)
    assert p.returncode != 0 and "read-only" in p.stderr
    p = coordinator("query", "SELECT 1", "--db", tmp_path / "none.duckdb")
    assert p.returncode != 0 and "no such results database" in p.stderr


@pytest.mark.slow
def test_sweep_with_a_throughput_scenario_drives_onnxruntime_and_openvino(tmp_path):
    """scenarios: [latency, throughput] over ONNX Runtime (concurrent calls) and OpenVINO (async requests):
    every row ok, throughput rows with the streams they kept in flight."""
    from fleetbench.coordinator.run import run_sweep
    sweep = write_sweep(tmp_path / "sweep.yaml", models=[
        {"name": "digits", "source": "timm:test_resnet", "checkpoint": str(DEMO_CHECKPOINT), "num_classes": 10,
         "input_size": [3, 32, 32]}], backends=["onnxruntime", "openvino"], batch_sizes=[4],
        scenarios=["latency", "throughput"], measure={**MEASURE, "min_iters": 20, "threads": 2})
    db = tmp_path / "r.duckdb"
    counts = run_sweep(str(sweep), db=str(db), progress=False)
    assert counts["ok"] == 4, counts
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT backend, scenario, status, streams, threads, throughput_ips, iterations, notes "
                       "FROM results ORDER BY backend, scenario").fetchall()
    con.close()
    by = {(r[0], r[1]): r for r in rows}
    assert by[("onnxruntime", "latency")][3] is None and by[("openvino", "latency")][3] is None
    ort, ov = by[("onnxruntime", "throughput")], by[("openvino", "throughput")]
    assert ort[2:5] == ("ok", 2, 1)                      # two concurrent calls, a thread each
    assert ov[2] == "ok" and ov[3] >= 1 and ov[4] == 2   # the plugin's requests, every thread
    assert "PERFORMANCE_HINT THROUGHPUT" in ov[7]
    assert all(r[5] > 0 and r[6] >= 20 for r in (ort, ov))
