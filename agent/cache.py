"""The per-node engine cache: a backend's exported artifact, kept so an identical job skips the export.

Key: the job's `job_id` (what determines the measurement, node key included), plus a fingerprint of
this node's hardware (CPU model and ISA flags, GPU names and driver), library versions
(agent.probe.versions()) and a hash of the backend module's source. A new driver, library version
or exporter, or other hardware behind the same node name, is a different key.

Layout: $FLEETBENCH_CACHE (default ~/.cache/fleetbench)/engines/<key>/ holds the artifact's files
under their paths relative to the job's workdir, and manifest.json (files, their sizes and SHA-256,
dtype, compute_dtype, notes, job, fingerprint).

A cache must not lie, and nobody else may fill it:
- the cache folders are created 0700 and must be owned by this user and not writable by others
  (else the cache is not used: every job exports afresh, with a warning);
- an entry is written into a fresh folder with an unpredictable name (tempfile.mkdtemp) and renamed
  into place, so readers see it whole or not at all, and two jobs racing for one key leave one entry;
- on read every file is checked against its recorded size and SHA-256, must be a plain file (not a
  symlink) inside the entry; anything else is a miss, the damaged entry is removed and rebuilt.

Only plain-file artifacts are cached: a backend declares `cacheable = False` when its artifact is more
than files (PyTorch eager keeps the module itself; TensorRT keeps engines in a cache of its own).
A broken or partial entry is a miss, never an error.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.paths import cache_dir
from fleetbench.shared.job import Job

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 3   # 3: typed notes and compute_dtype (no meta dict), every file's SHA-256
_CHUNK = 1 << 20


class UnsafeCacheDir(OSError):
    """A cache folder that another user could write (or that is not ours): never used."""


def base_dir() -> Path:
    """The node's cache folder (agent.paths.cache_dir), absolute."""
    return cache_dir().absolute()


def cache_root() -> Path:
    return base_dir() / "engines"


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with mode 0700; refuse one that others could write.

    An existing folder must be a real folder (not a symlink), owned by this user, and not group- or
    world-writable; an existing folder of ours with looser read bits is tightened to 0700.
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


@functools.lru_cache(maxsize=None)
def _source_hash(module: str) -> Optional[str]:
    """Hash of a backend's source: an edited exporter (same package version) is a new key. A backend
    that is a package (backends/onnxruntime/...) is hashed whole: its variants are part of its export."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(module)
        origin = Path(str(spec.origin)) if spec is not None else None
        if origin is None or not origin.is_file():
            return None
        files = sorted(origin.parent.glob("*.py")) if origin.parent.name != "backends" else [origin]
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.read_bytes())
        return digest.hexdigest()[:16]
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return None


def cache_key(job: Job, fp: Optional[dict[str, Any]] = None, backend=None) -> str:
    code = _source_hash(type(backend).__module__) if backend is not None else None
    blob = json.dumps({"job_id": job.job_id, "fingerprint": fp or fingerprint(), "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cacheable(backend) -> bool:
    return bool(backend.cacheable)


def lookup(job: Job, backend) -> Optional[Artifact]:
    """The cached artifact of this job on this node, or None (a damaged entry is removed: a miss)."""
    if not cacheable(backend):
        return None
    try:
        entry = private_dir(cache_root()) / cache_key(job, backend=backend)
    except OSError as e:
        log.warning("engine cache not used: %s", e)
        return None
    if not entry.exists() and not entry.is_symlink():
        return None
    why = _check_entry(entry)
    if isinstance(why, Artifact):
        try:
            os.utime(entry / MANIFEST)   # last used: what `prune` goes by
        except OSError:
            pass
        return why
    log.warning("engine cache %s: %s; the entry is rebuilt", entry.name, why)
    _remove(entry)
    return None


def _check_entry(entry: Path):
    """The entry's Artifact when every file is as recorded, else the reason (a string)."""
    try:
        st = os.lstat(entry)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return "not a folder"
        mpath = entry / MANIFEST
        if mpath.is_symlink() or not mpath.is_file():
            return "no manifest"
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return "manifest of another format"
        rels, sizes, hashes = manifest["files"], manifest["sizes"], manifest["sha256"]
        if not (isinstance(rels, list) and rels and len(rels) == len(sizes) == len(hashes)):
            return "manifest lists no files"
        files = []
        for rel, size, digest in zip(rels, sizes, hashes):
            path = inside(entry, rel)
            if path is None:
                return f"manifest names {rel!r}, outside the entry"
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                return f"{rel} is not a plain file"
            if st.st_size != size:
                return f"{rel} changed size"
            if file_sha256(path) != digest:
                return f"{rel} changed content (SHA-256 differs)"
            files.append(path)
        notes = manifest.get("notes") or []
        if not isinstance(notes, list) or not isinstance(manifest.get("dtype"), (str, type(None))):
            return "bad manifest fields"
        return Artifact(files=files, dtype=manifest["dtype"], notes=[str(n) for n in notes],
                        compute_dtype=manifest.get("compute_dtype"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)
    except OSError as e:
        log.debug("cannot remove %s: %s", path, e)


def store(job: Job, backend, artifact: Artifact, workdir: Path) -> Optional[Path]:
    """Keep the artifact's files for later identical jobs; returns the entry, or None when not cached."""
    if not cacheable(backend):
        return None
    rels = _relative_names(artifact.files, Path(workdir))
    if rels is None:
        return None
    try:
        root = private_dir(cache_root())
    except OSError as e:
        log.warning("engine cache not used: %s", e)
        return None
    entry = root / cache_key(job, backend=backend)
    if isinstance(_check_entry(entry), Artifact):
        return entry
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name[:8]}-", dir=root))   # 0700, unpredictable
        for src, rel in zip(artifact.files, rels):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        manifest = {"format": FORMAT, "files": rels, "sizes": [(tmp / r).stat().st_size for r in rels],
                    "sha256": [file_sha256(tmp / r) for r in rels],
                    "dtype": artifact.dtype, "compute_dtype": artifact.compute_dtype, "notes": list(artifact.notes),
                    "job_id": job.job_id, "job": job.describe(),
                    "backend": job.backend, "fingerprint": fingerprint(),
                    "code": _source_hash(type(backend).__module__), "created": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if (entry.exists() or entry.is_symlink()) and not isinstance(_check_entry(entry), Artifact):
            _remove(entry)   # a damaged entry
        try:
            os.rename(tmp, entry)   # fails when another worker stored it first: keep theirs
        except OSError:
            _remove(tmp)
        return entry
    except OSError as e:
        log.warning("engine cache: cannot store %s: %s", job.describe(), e)
        if tmp is not None:
            _remove(tmp)
        return None


def prune(older_than_s: float, root: Optional[Path] = None, now: Optional[float] = None) -> list[Path]:
    """Remove engine entries and shipped checkpoints last used more than `older_than_s` ago, and
    leftovers of interrupted writes; returns what was removed. Runs on one node (its own cache)."""
    base = Path(root) if root is not None else base_dir()
    now = time.time() if now is None else now
    removed = []
    for folder in (base / "engines", base / "weights"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for item in folder.iterdir():
            try:
                used = _last_used(item)
            except OSError:
                continue
            if now - used > older_than_s:
                _remove(item)
                removed.append(item)
    return removed


def _last_used(item: Path) -> float:
    """When an entry was last written or read (a hit touches its manifest)."""
    st = os.lstat(item)
    stamp = st.st_mtime
    manifest = item / MANIFEST
    if stat.S_ISDIR(st.st_mode) and manifest.is_file():
        stamp = max(stamp, manifest.stat().st_mtime)
    return stamp


def _relative_names(files: list[Path], workdir: Path) -> Optional[list[str]]:
    """Each file's path under workdir (a file outside it, e.g. an onnx: source, by its name); None on a clash."""
    rels = []
    for f in files:
        p = Path(f)
        try:
            rel = p.resolve().relative_to(workdir.resolve()).as_posix()
        except ValueError:
            rel = p.name
        if rel == MANIFEST or rel in rels or not p.is_file():
            return None
        rels.append(rel)
    return rels
