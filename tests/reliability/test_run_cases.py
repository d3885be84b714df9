"""Exit status of a run on a real (embedded) Ray cluster: 0 when every row is ok or unsupported,
1 when any row failed; a failed row names its stage and reason."""
from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
MEASURE = {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["FLEETBENCH_NULL_MS"] = "1"
    return subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


def sweep(path, name, source, backends):
    path.write_text(yaml.safe_dump({
        "name": name, "models": [{"name": "m", "source": source, "num_classes": 10, "input_size": [3, 16, 16]}],
        "dataset": {"kind": "synthetic", "limit": 8}, "backends": backends, "measure": MEASURE}))
    return path


def test_exit_status_says_how_the_run_went(tmp_path):
    db = tmp_path / "r.duckdb"
    good = run_cli("run", sweep(tmp_path / "good.yaml", "good", "timm:test_resnet", ["null", "tensorrt"]),
                   "--db", db, "--no-progress")
    assert good.returncode == 0, good.stderr[-2000:]          # ok + unsupported (no TensorRT here)
    bad = run_cli("run", sweep(tmp_path / "bad.yaml", "bad", "python:tests.fixtures.no_such_module:net",
                               ["pytorch"]), "--db", db, "--no-progress")
    assert bad.returncode == 1, bad.stderr[-2000:]
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT sweep, status, stage, error FROM results ORDER BY sweep, status").fetchall()
    con.close()
    assert [r[:3] for r in rows] == [("bad", "failed", "load"), ("good", "ok", None), ("good", "unsupported", None)]
    assert "no_such_module" in rows[0][3]
