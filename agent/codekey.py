"""The code a `python:<module>:<callable>` model is made by, as one digest for its cache keys.

`source_digest(module)` is the SHA-256 over the module's source and the source of every module it imports
from the user's tree, followed transitively (plain and relative imports, `from pkg import sub`, imports
inside functions, and the `__init__.py` of each package on the way), plus the version of each installed
distribution it imports. Editing the factory (8 channels to 256), a helper module it imports or a package
`__init__.py` is a new key; an unrelated file is not.

Imports are found by reading the files' import statements: nothing is imported or run, so the coordinator's
dry run and the agent compute the same key. Not seen: modules loaded by a name computed at run time
(`importlib.import_module(name)`, `exec`) and data files the factory reads (a JSON config): a model that
depends on those should take them as a checkpoint, or import them by a plain import statement.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import site
import sys
import sysconfig
from typing import Any, Mapping, Optional

OWN = "fleetbench"   # our own code is in every key already (agent/prepare.py CODE)


def source_digest(module: str) -> str:
    """SHA-256 (hex, 32 chars) of `module`'s code and what it imports (see the module's docstring)."""
    sources: dict[str, str] = {}
    libraries: dict[str, Optional[str]] = {}
    specs: dict[str, Any] = {}
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = _find(name, specs)
        path = spec.origin if spec is not None and spec.has_location else None
        if path is None or not os.path.isfile(path):
            if name == module:
                sources[name] = "missing"   # the load stage says why; the key still differs from a found one
            continue
        if name != module and _library(path):
            top = name.partition(".")[0]
            libraries[top] = _version(top)
            continue
        with open(path, "rb") as f:
            data = f.read()
        sources[name] = hashlib.sha256(data).hexdigest()
        if path.endswith(".py"):
            package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
            todo.extend(_imports(data, package))
        todo.extend(name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1))   # parent packages run too
    blob = json.dumps({"sources": sources, "libraries": libraries}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _imports(source: bytes, package: str) -> list[str]:
    """Absolute names of what `source` (a module of `package`) imports; unresolvable ones are left out."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):
                continue
            out.append(base)
            out.extend(f"{base}.{a.name}" for a in node.names if a.name != "*")   # a submodule, or an attribute
    return [n for n in out if _wanted(n)]


def _wanted(name: str) -> bool:
    top = name.partition(".")[0]
    return bool(top) and top != OWN and top not in sys.stdlib_module_names and top not in sys.builtin_module_names


def _find(name: str, specs: dict[str, Any]) -> Any:
    """The module's spec as the import system would find it, without importing its parent packages."""
    if name not in specs:
        parent, _, _ = name.rpartition(".")
        if not parent:
            specs[name] = _top_level(name)
        else:
            pspec = _find(parent, specs)
            locations = list(pspec.submodule_search_locations or []) if pspec is not None else []
            specs[name] = _search(name, locations) if locations else None
    return specs[name]


def _top_level(name: str) -> Any:
    for finder in sys.meta_path:   # editable installs have finders of their own
        find = getattr(finder, "find_spec", None)
        try:
            spec = find(name, None) if find is not None else None
        except Exception:  # noqa: BLE001 - a third-party finder's failure is "not found"
            spec = None
        if spec is not None:
            return spec
    return None


def _search(name: str, locations: list[str]) -> Any:
    """A submodule in its package's folders: the path finder's search without its namespace-package
    bookkeeping, which needs the parent imported."""
    portions: list[str] = []
    for folder in locations:
        finder = pkgutil.get_importer(folder)
        find = getattr(finder, "find_spec", None)
        try:
            spec = find(name) if find is not None else None
        except Exception:  # noqa: BLE001 - an unreadable folder is "not found"
            spec = None
        if spec is not None and spec.loader is not None:
            return spec
        if spec is not None:
            portions.extend(spec.submodule_search_locations or [])
    if not portions:
        return None
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = portions
    return spec


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def _library(path: str) -> bool:
    """Whether a file belongs to an installed distribution or the standard library (not the user's tree)."""
    return os.path.realpath(path).startswith(_library_dirs())


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _version(top: str) -> Optional[str]:
    """The installed version of the distribution that provides module `top` (its own name first: scanning
    every distribution for the others takes a second or two, once per process)."""
    try:
        return f"{top}=={importlib.metadata.version(top)}"
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pass
    versions = []
    for dist in sorted(set(_distributions().get(top) or [])):
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ",".join(versions) or None
