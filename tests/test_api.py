"""The Python API (`import fleetbench`) and the command line run one code path and read the same rows.

One database for the module: `coordinator run --model ... --save-sweep F` (the one-line form) runs a two-job
sweep on the embedded cluster, then `fleetbench.run(F)` runs the same sweep again into it, each in a fresh interpreter.
"""
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import DEMO_CHECKPOINT

FLAGS = ["--model", "timm:test_resnet", "--checkpoint", str(DEMO_CHECKPOINT), "--num-classes", "10",
         "--input-size", "3,32,32", "--backends", "pytorch,onnxruntime", "--limit", "24",
         "--measure", "warmup_iters=1,min_iters=3,min_duration_s=0,max_duration_s=1"]
ROW = "job_id, status, model, compression, backend, device, batch_size, node"


# Each run in a fresh interpreter, as a user would start one: an embedded cluster started inside the
# test process would inherit what earlier tests left in Ray's process-wide state.
API_RUN = """import json, sys, fleetbench
res = fleetbench.run(sys.argv[1], db=sys.argv[2], progress=False)
print(json.dumps({"run_id": res.run_id, "counts": dict(res.counts)}))"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from fleetbench.coordinator.api import Results
    from fleetbench.coordinator.run import RunCounts
    tmp = tmp_path_factory.mktemp("api")
    db, saved = tmp / "r.duckdb", tmp / "sweep.yaml"
    cli = subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", "run", *FLAGS, "--save-sweep", str(saved),
                          "--db", str(db), "--no-progress"], cwd=tmp, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    api = subprocess.run([sys.executable, "-c", API_RUN, str(saved), str(db)], cwd=tmp, capture_output=True, text=True,
                         timeout=600)
    assert api.returncode == 0, api.stderr[-3000:]
    got = json.loads(api.stdout.strip().splitlines()[-1])
    counts = RunCounts(got["counts"])
    counts.run_id = got["run_id"]
    return db, saved, Results(db, run=got["run_id"], counts=counts)


def _rows(res, run_id):
    return sorted(res.sql(f"SELECT {ROW} FROM course WHERE run_id = '{run_id}'").itertuples(index=False))


@pytest.mark.slow
def test_fleetbench_run_gives_the_rows_the_command_line_gave(runs):
    import fleetbench
    from fleetbench.coordinator import cli, flags
    from fleetbench.shared.sweep import load_sweep
    db, saved, res = runs
    assert load_sweep(saved) == flags.build(cli._parser().parse_args(["run", *FLAGS]))   # the sweep it ran
    assert saved.read_text().startswith("# the sweep of: coordinator run --model timm:test_resnet")
    listed = fleetbench.open(db).runs()
    assert list(listed["status"]) == ["done", "done"] and list(listed["sweep"]) == ["test_resnet"] * 2
    cli_run = next(r for r in listed["run_id"] if r != res.run_id)
    api_rows, cli_rows = _rows(res, res.run_id), _rows(res, cli_run)
    assert api_rows == cli_rows and len(api_rows) == 2          # same job ids, statuses, models, backends
    assert {r.status for r in api_rows} == {"ok"} and {r.backend for r in api_rows} == {"pytorch", "onnxruntime"}
    assert res.counts["ok"] == 2 and not res.counts["failed"]


@pytest.mark.slow
def test_table_is_coordinator_query_of_course(runs, tmp_path):
    import fleetbench
    from fleetbench.coordinator import cli
    db, _, _ = runs
    out = tmp_path / "course.parquet"
    assert cli.main(["query", "SELECT * FROM course", "--db", str(db), "--format", "parquet", "-o", str(out)]) == 0
    table = fleetbench.open(db).table()
    queried = pd.read_parquet(out)
    assert list(table.columns) == list(queried.columns) and len(table) == len(queried) == 4

    def records(df):
        df = df.sort_values(["run_id", "job_id"]).reset_index(drop=True).astype(object)
        return df.where(df.notna(), None).to_dict("records")
    assert records(table) == records(queried)
    assert fleetbench.open(db).arrow().num_rows == 4


@pytest.mark.slow
def test_results_reads_like_the_report_commands(runs, tmp_path):
    import fleetbench
    db, _, res = runs
    assert len(res.table()) == 2 and set(res.table()["run_id"]) == {res.run_id}   # the handle's own run
    best = res.best(max_drop=0.01)
    assert list(best[["node", "model"]].itertuples(index=False, name=None)) == [(res.table()["node"][0], "test_resnet")]
    assert best["why"][0]
    a, b = fleetbench.open(db).runs()["run_id"]
    cmp = res.compare(a, b)
    assert set(cmp["backend"]) <= {"pytorch", "onnxruntime"} and set(cmp["verdict"]) <= {"same", "SLOWER", "faster"}
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    rep = res.report(html=html, md=md)
    assert rep.run_id == res.run_id and "test_resnet" in md.read_text() and html.read_text().startswith("<!DOCTYPE")
    assert rep._repr_html_().startswith("<iframe srcdoc=") and "test_resnet" in rep.text
    assert "Recommendation" in res._repr_html_() and res.run_id in res._repr_html_()
    with pytest.raises(fleetbench.SweepError, match="read-only"):
        res.sql("DELETE FROM results")


def test_refused_input_is_one_error_listing_every_problem_and_nothing_is_written(tmp_path):
    import fleetbench
    db = tmp_path / "r.duckdb"
    bad = {"name": "x", "models": [{"name": "m", "source": "tim:resnet18", "num_classes": 10}],
           "backends": ["pytorch", "onx"], "batch_sizes": [0]}
    with pytest.raises(fleetbench.SweepError) as e:
        fleetbench.run(bad, db=db)
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("sweep: ") for line in lines), lines
    assert "models[0].source" in lines[0] and "backends[1]" in str(e.value) and "batch_sizes[0]" in str(e.value)
    assert not db.exists()
    with pytest.raises(fleetbench.SweepError, match="no such results database"):
        fleetbench.open(tmp_path / "missing.duckdb")
    assert (fleetbench.SweepError.exit_code, fleetbench.ClusterError.exit_code, fleetbench.StoreError.exit_code) == (2, 1, 1)
