"""The wheel installs under one import name: no top-level `agent`, `shared` or `coordinator`; the
`fleetbench` package itself (the Python API) comes from fleetbench_api/."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"agent": "fleetbench.agent", "shared": "fleetbench.shared", "coordinator": "fleetbench.coordinator",
        "fleetbench_api": "fleetbench"}


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    listed = set(_config()["packages"])
    found = {".".join([name, *p.parent.relative_to(ROOT / top).parts])
             for top, name in TOPS.items() for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed, f"missing: {sorted(found - listed)}, stale: {sorted(listed - found)}"


def test_wheel_has_only_the_fleetbench_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("fleetbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"fleetbench"}, tops
    assert "fleetbench/agent/runner.py" in names
    assert "fleetbench/shared/job.py" in names
    assert "fleetbench/coordinator/cli.py" in names
    assert "fleetbench/__init__.py" in names


def test_import_fleetbench_starts_nothing_heavy():
    """`import fleetbench` is cheap: Ray, torch, DuckDB and pandas load when a sweep runs or rows are read."""
    code = ("import sys, fleetbench; assert callable(fleetbench.run) and callable(fleetbench.open); "
            "print(sorted(m for m in ('ray', 'torch', 'duckdb', 'pandas', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout
