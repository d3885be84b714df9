"""Type-check the packages under the names the installer gives them (fleetbench.agent, ...).

The repository keeps agent/, shared/ and coordinator/ at its top and pyproject's package-dir maps them to
fleetbench.*; the editable install reaches them through an import hook that mypy cannot follow, and mypy given
the folders sees `fleetbench.agent` as a missing module, so every name crossing packages would be Any. This
script builds a tree of symlinks laid out as installed (.mypy-tree/fleetbench/agent/runner.py -> agent/runner.py)
from pyproject's own package list and runs mypy on it, so a wrong call across packages is a type error.

    python scripts/typecheck.py [--root REPO]     # exit code: mypy's
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = ".mypy-tree"


def package_sources(root: Path) -> dict[str, Path]:
    """Each installed package name -> the folder its modules come from, as setuptools maps them."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    out = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):   # the longest mapped prefix wins, as in setuptools
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                out[package] = root / mapping[prefix] / Path(*parts[cut:])
                break
        else:
            out[package] = root / Path(*parts)
    return out


def build_tree(root: Path, dest: Path) -> list[str]:
    """(Re)build dest as the installed layout of symlinks to root's modules; returns the top-level packages."""
    shutil.rmtree(dest, ignore_errors=True)
    sources = package_sources(root)
    for package, source in sources.items():
        folder = dest / Path(*package.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        for module in sorted(source.glob("*.py")):
            (folder / module.name).symlink_to(module.resolve())
    return sorted(p for p in sources if ".".join(p.split(".")[:-1]) not in sources)


def mypy(root: Path, tree: Path, packages: list[str], cache: Path) -> subprocess.CompletedProcess:
    """mypy over the tree's packages with root's configuration, its output captured."""
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml"),
           "--cache-dir", str(cache), "--no-error-summary"]
    for package in packages:
        cmd += ["-p", package]
    # Run inside the tree so no folder of the repository can shadow the `fleetbench` name.
    return subprocess.run(cmd, cwd=tree, env={**os.environ, "MYPYPATH": str(tree)}, capture_output=True, text=True)


def repo_paths(report: str, root: Path, tree: Path) -> str:
    """mypy's lines name the tree's links; name the repository's files instead (coordinator/plan.py:12: ...)."""
    lines = []
    for line in report.splitlines(keepends=True):
        path, sep, rest = line.partition(":")
        link = tree / path
        if sep and link.is_symlink() and link.resolve().is_relative_to(root):
            line = f"{link.resolve().relative_to(root)}:{rest}"
        lines.append(line)
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the repository to check (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    packages = build_tree(root, root / TREE)
    proc = mypy(root, root / TREE, packages, root / ".mypy_cache")
    sys.stdout.write(repo_paths(proc.stdout, root, root / TREE))
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
