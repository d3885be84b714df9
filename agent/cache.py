"""The node's cache: work done once on this node and reused by every job that needs it.

Layout: $FLEETBENCH_CACHE (default ~/.cache/fleetbench)/<kind>/<key>/ holds an entry's plain files and
manifest.json (each file's size and SHA-256, and a small JSON `info`). Kinds (agent/prepare.py says
what each key is made from): `dataset`, `reference`, `compressed`, `onnx`, `engines` (a backend's
exported artifact), `predictions`; shipped checkpoints live in `weights/` (agent/models.py).

A key is the SHA-256 of everything the entry is made from (`content_key`): the caller names every
input (weights hash, dataset, compression parameters, library versions, code hashes, and for engines
the node's hardware `fingerprint`), so a key changes when any input changes and not otherwise.

A cache must not lie, and nobody else may fill it:
- the cache folders are created 0700 and must be owned by this user and not a symlink (else the
  cache is not used: the work is done afresh every time, with a warning); an existing folder of ours
  with looser bits is tightened to 0700;
- an entry is written into a fresh folder with an unpredictable name (tempfile.mkdtemp) and renamed
  into place, so readers see it whole or not at all, and two jobs racing for one key leave one entry;
- on read every file is checked against its recorded size and SHA-256, must be a plain file (not a
  symlink) inside the entry; anything else is a miss, the damaged entry is removed and made again.

The base folder gets a marker file (MARKER) when the cache makes it or finds it holding only what a
fleetbench cache holds; `prune` works only
in a marked folder and removes only what it can prove the cache made (see `prune`).

Only plain-file artifacts are cached as engines: a backend declares `cacheable = False` when its
artifact is more than files (PyTorch eager keeps the module itself; TensorRT keeps engines in a cache
of its own).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fleetbench.agent.paths import cache_dir

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 4   # 4: content keys, `info`; 3: typed notes and compute_dtype, every file's SHA-256
ENGINES = "engines"
KINDS = ("dataset", "reference", "compressed", "onnx", ENGINES, "predictions")
_CHUNK = 1 << 20


class UnsafeCacheDir(OSError):
    """A cache folder that another user could write (or that is not ours): never used."""


@dataclass
class Entry:
    """A verified entry: its folder, files by relative name, and the JSON info it was stored with."""

    key: str
    path: Path
    files: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    hit: bool = True          # False when this call made it

    def file(self, name: str) -> Path:
        return self.files[name]


def base_dir() -> Path:
    """The node's cache folder (agent.paths.cache_dir), absolute."""
    return cache_dir().absolute()


MARKER = ".fleetbench-cache"   # in a cache folder fleetbench made (or adopted): `prune` works only there
# What a fleetbench cache folder holds at its top (engines of TensorRT and ORT's TensorRT EP, the GEMM peaks).
_TOP = frozenset({*KINDS, "weights", "tensorrt", "ort-tensorrt", "peaks.json", MARKER})
_MARKER_TEXT = ("This folder is a fleetbench node cache: fleetbench made it. `coordinator cache prune` removes\n"
                "only the entries fleetbench made in it (<kind>/<32 hex>/ with their manifest, weights/<sha256>).\n")


def kind_dir(kind: str) -> Path:
    """base/<kind> (kind: an entry kind, or `weights`), made 0700; the base folder gets its marker when this
    call made it or found it holding nothing but what fleetbench puts there (empty, or an older
    fleetbench's cache): a folder that holds anything else was not made for the cache."""
    base = base_dir()
    fresh = not base.exists() and not base.is_symlink()
    private_dir(base)
    marker = base / MARKER
    if not marker.exists() and (fresh or _foreign(base) is None):
        marker.write_text(_MARKER_TEXT)
    return private_dir(base / kind)


def root(kind: str) -> Path:
    return base_dir() / kind


def cache_root() -> Path:
    return root(ENGINES)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with mode 0700; refuse one that others could write.

    An existing folder must be a real folder (not a symlink), owned by this user; an existing folder
    of ours with looser bits is tightened to 0700.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDir(f"{path}: cache folder is a symlink or not a folder")
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(f"{path}: cache folder belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.getuid()}); set FLEETBENCH_CACHE to a folder of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_key(**parts: Any) -> str:
    """SHA-256 (hex, 32 chars) of the parts as canonical JSON: the same inputs give the same key."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def code_hash(module: str) -> Optional[str]:
    """SHA-256 of a module's source (of every .py file of a package): edited code is a new key."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return None
    origin = Path(spec.origin)
    files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(origin.parent).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def code_version() -> Optional[str]:
    """One hash of fleetbench's own code (agent, shared, coordinator): two checkouts that differ in any line
    differ here, whatever their package version says."""
    parts = {p: code_hash(f"fleetbench.{p}") for p in ("agent", "shared", "coordinator")}
    return None if None in parts.values() else content_key(**parts)[:16]


def inside(entry: Path, rel: Any) -> Optional[Path]:
    """entry/rel when `rel` is a relative path that stays inside `entry` through no symlink, else None."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return None
    parts = Path(rel).parts
    if any(part in ("..", ".", "") for part in parts):
        return None
    path = entry
    for part in parts:
        path = path / part
        if path.is_symlink():
            return None
    return path


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict[str, Any]:
    """What, besides the job, an artifact depends on: hardware and library versions of this node."""
    from fleetbench.agent.gpu import nvidia_gpus
    from fleetbench.agent.probe import cpu_info, versions
    cpu_model, flags = cpu_info()
    gpus, driver, _ = nvidia_gpus()
    return {"cpu": cpu_model, "isa": flags, "gpus": sorted(str(g.get("name")) for g in gpus),
            "driver": driver, "versions": versions(), "format": FORMAT}


# ---- entries of any kind ---------------------------------------------------------------------------

def lookup(kind: str, key: str) -> Optional[Entry]:
    """The verified entry, or None (a damaged one is removed; an unsafe cache folder is a miss)."""
    try:
        entry = kind_dir(kind) / key
    except OSError as e:
        log.warning("cache %s not used: %s", kind, e)
        return None
    if not entry.exists() and not entry.is_symlink():
        return None
    got = _check(key, entry)
    if isinstance(got, Entry):
        try:
            os.utime(entry / MANIFEST)   # last used: what `prune` goes by
        except OSError:
            pass
        return got
    log.warning("cache %s/%s: %s; it is made again", kind, key, got)
    _remove(entry)
    return None


def exists(kind: str, key: str) -> bool:
    """Whether a complete entry is there (sizes only: cheap, for plans; `lookup` checks content)."""
    entry = root(kind) / key
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        return manifest["format"] == FORMAT and all(
            (entry / rel).stat().st_size == size for rel, size in zip(manifest["files"], manifest["sizes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def put(kind: str, key: str, make: Callable[[Path], Optional[dict]]) -> Entry:
    """Run `make(folder)` to write the entry's files into a fresh folder (it returns the JSON info), then
    publish it under `key`. When another writer published first, theirs is kept and returned. Where the
    cache folder cannot be used safely, the entry is made in a private temporary folder and not kept."""
    try:
        base = kind_dir(kind)
    except OSError as e:
        log.warning("cache %s not used: %s", kind, e)
        folder = Path(tempfile.mkdtemp(prefix=f"fleetbench-{kind}-"))
        info = make(folder) or {}
        files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        return Entry(key, folder, files, json.loads(json.dumps(info, default=str)), hit=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:8]}-", dir=base))   # 0700, unpredictable
    try:
        info = make(tmp) or {}
        rels = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())
        if MANIFEST in rels:
            raise ValueError(f"an entry may not hold a file named {MANIFEST}")
        manifest = {"format": FORMAT, "kind": kind, "key": key, "files": rels,
                    "sizes": [(tmp / r).stat().st_size for r in rels],
                    "sha256": [file_sha256(tmp / r) for r in rels], "info": info, "created": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        manifest = json.loads((tmp / MANIFEST).read_text())   # the info as a reader will see it (JSON types)
        entry = base / key
        if entry.exists() or entry.is_symlink():
            if isinstance(_check(key, entry), Entry):
                _remove(tmp)
                return _read_back(kind, key, hit=True)
            _remove(entry)   # a damaged entry
        try:
            os.rename(tmp, entry)
        except OSError:      # another writer published first: keep theirs
            _remove(tmp)
            return _read_back(kind, key, hit=True)
        # ours, as just written and hashed (reading it back would hash every file again)
        return Entry(key, entry, {r: entry / r for r in rels}, manifest["info"], hit=False)
    except BaseException:
        _remove(tmp)
        raise


def get_or_make(kind: str, key: str, make: Callable[[Path], Optional[dict]]) -> Entry:
    """The entry under `key`, made now (hit=False) when missing or damaged."""
    return lookup(kind, key) or put(kind, key, make)


def _read_back(kind: str, key: str, hit: bool) -> Entry:
    entry = _check(key, root(kind) / key)
    if not isinstance(entry, Entry):
        raise OSError(f"cache entry {kind}/{key} could not be read back: {entry}")
    entry.hit = hit
    return entry


def _check(key: str, entry: Path):
    """The Entry when every file is as recorded, else the reason (a string)."""
    try:
        st = os.lstat(entry)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return "not a folder"
        mpath = entry / MANIFEST
        if mpath.is_symlink() or not mpath.is_file():
            return "no manifest (half-written)"
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("key") != key:
            return "manifest of another format or key"
        rels, sizes, hashes = manifest["files"], manifest["sizes"], manifest["sha256"]
        if not (isinstance(rels, list) and len(rels) == len(sizes) == len(hashes)):
            return "manifest lists no files"
        files = {}
        for rel, size, digest in zip(rels, sizes, hashes):
            path = inside(entry, rel)
            if path is None:
                return f"manifest names {rel!r}, outside the entry"
            fst = os.lstat(path)
            if not stat.S_ISREG(fst.st_mode):
                return f"{rel} is not a plain file"
            if fst.st_size != size:
                return f"{rel} changed size"
            if file_sha256(path) != digest:
                return f"{rel} changed content (SHA-256 differs)"
            files[rel] = path
        info = manifest.get("info")
        return Entry(key, entry, files, info if isinstance(info, dict) else {})
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError as e:
        log.debug("cannot remove %s: %s", path, e)


# ---- prune -------------------------------------------------------------------------------------------

class NotACache(OSError):
    """`prune` refused a folder fleetbench did not make (no marker) or an adoption of a foreign folder."""


_ENTRY = re.compile(r"[0-9a-f]{32}")                              # content_key
_TMP = re.compile(r"\.tmp-[0-9a-f]{8}-[a-z0-9_]{8}")              # mkdtemp / mkstemp of put and weights
_WEIGHTS = re.compile(r"([0-9a-f]{64})(\.[A-Za-z0-9_]{1,16})?")    # materialise_weights: <sha256><suffix>


def _foreign(base: Path) -> Optional[str]:
    """The first name in `base` that no fleetbench cache holds at its top, else None."""
    return next((item.name for item in sorted(base.iterdir())
                 if item.name not in _TOP and not re.fullmatch(r"peaks\.\d+\.tmp", item.name)), None)


def adopt(base: Path) -> None:
    """Mark an unmarked cache folder (one made by an older fleetbench) after checking, strictly, that it
    holds nothing but what a fleetbench cache holds; else NotACache naming what does not belong."""
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise NotACache(f"{base}: not a folder of this user; not adopted, nothing removed")
    foreign = _foreign(base)
    if foreign is not None:
        raise NotACache(f"{base}: holds {foreign!r}, which no fleetbench cache holds; not adopted, nothing removed")
    (base / MARKER).write_text(_MARKER_TEXT)


def prune(older_than_s: float, root_dir: Optional[Path] = None, now: Optional[float] = None,
          adopt_folder: bool = False) -> list[Path]:
    """Remove what fleetbench made here and last used more than `older_than_s` ago: entries (a
    <kind>/<32 hex> folder whose manifest names that kind and key), shipped checkpoints (weights/<sha256>
    whose content has that hash) and leftovers of interrupted writes (.tmp-<8 hex>-<8>). Only in a cache
    folder that carries the marker (`adopt_folder` marks a strict fleetbench layout first); anything
    else in it is left alone. Returns what was removed. Runs on one node (its own cache)."""
    base = Path(root_dir) if root_dir is not None else base_dir()
    now = time.time() if now is None else now
    if not base.exists():
        return []
    if not (base / MARKER).is_file():
        if not adopt_folder:
            raise NotACache(f"{base}: not a fleetbench cache folder (no {MARKER} marker: fleetbench did not make "
                            "it); prune refused, nothing removed. A cache of an older fleetbench: "
                            "coordinator cache prune --adopt")
        adopt(base)
    removed = []
    for kind in [*KINDS, "weights"]:
        folder = base / kind
        if not _ours(folder, stat.S_ISDIR):
            continue
        for item in folder.iterdir():
            try:
                if now - _last_used(item) > older_than_s and _made_here(item, kind):
                    _remove(item)
                    removed.append(item)
            except OSError:
                continue
    return removed


def _ours(path: Path, kind_test) -> bool:
    """A file or folder of this user (never a symlink) of the kind tested."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return kind_test(st.st_mode) and st.st_uid == os.getuid()


def _made_here(item: Path, kind: str) -> bool:
    """Whether `item` is, provably, what fleetbench writes in base/<kind>."""
    name = item.name
    if _TMP.fullmatch(name):
        return _ours(item, stat.S_ISDIR if kind != "weights" else stat.S_ISREG)
    if kind == "weights":
        m = _WEIGHTS.fullmatch(name)
        return m is not None and _ours(item, stat.S_ISREG) and file_sha256(item) == m.group(1)
    if not _ENTRY.fullmatch(name) or not _ours(item, stat.S_ISDIR) or not _ours(item / MANIFEST, stat.S_ISREG):
        return False
    try:
        manifest = json.loads((item / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == kind and manifest.get("key") == name


def _last_used(item: Path) -> float:
    """When an entry was last written or read (a hit touches its manifest)."""
    st = os.lstat(item)
    stamp = st.st_mtime
    manifest = item / MANIFEST
    if stat.S_ISDIR(st.st_mode) and manifest.is_file():
        stamp = max(stamp, manifest.stat().st_mtime)
    return stamp
