"""The wheel installs under one import name: no top-level `agent`, `shared` or `coordinator`."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("agent", "shared", "coordinator")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    listed = set(_config()["packages"])
    found = {"fleetbench." + p.parent.relative_to(ROOT).as_posix().replace("/", ".")
             for top in TOPS for p in (ROOT / top).rglob("__init__.py")}
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
