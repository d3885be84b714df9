"""`make lint` type-checks across packages: a wrong call from fleetbench.coordinator into fleetbench.agent fails it."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("typecheck", ROOT / "scripts" / "typecheck.py")
typecheck = importlib.util.module_from_spec(spec)
sys.modules["typecheck"] = typecheck
spec.loader.exec_module(typecheck)

WRONG = '''

def _wrong_call() -> None:
    from fleetbench.agent.runner import run_job
    run_job(42)
'''


def test_tree_lays_out_every_installed_package():
    sources = typecheck.package_sources(ROOT)
    assert sources["fleetbench.agent.backends"] == ROOT / "agent" / "backends"
    assert sources["fleetbench.coordinator"] == ROOT / "coordinator"


def test_a_wrong_argument_type_across_packages_fails_the_type_check(tmp_path):
    tree = tmp_path / "tree"
    packages = typecheck.build_tree(ROOT, tree)
    plan = tree / "fleetbench" / "coordinator" / "plan.py"
    text = plan.read_text()
    plan.unlink()                      # a copy with the error in place of the link to the real module
    plan.write_text(text + WRONG)
    cache = tmp_path / "cache"
    try:    # `make lint`'s cache, where there is one: only the changed module and its dependents are checked again
        shutil.copytree(ROOT / ".mypy_cache", cache, ignore_dangling_symlinks=True)
    except (OSError, shutil.Error):
        pass    # none, or a lint writing it now: what was copied is used, mypy checks the rest
    proc = typecheck.mypy(ROOT, tree, packages, cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'fleetbench/coordinator/plan.py' in proc.stdout
    assert 'Argument 1 to "run_job" has incompatible type "int"; expected "Job"' in proc.stdout, proc.stdout
