"""The per-node engine cache: a backend's exported artifact, kept so an identical job skips the export.

Key: the job's `job_id` (what determines the measurement, node key included), plus a fingerprint of
this node's hardware (CPU model and ISA flags, GPU names and driver), library versions
(agent.probe.versions()) and a hash of the backend module's source. A new driver, library version
or exporter, or other hardware behind the same node name, is a different key.

Layout: $FLEETBENCH_CACHE (default ~/.cache/fleetbench)/engines/<key>/ holds the artifact's files
under their paths relative to the job's workdir, and manifest.json (files, dtype, compute_dtype, notes,
job, fingerprint).
An entry is written to a temporary folder and renamed into place, so readers see it whole or not at all.

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
import time
from pathlib import Path
from typing import Any, Optional

from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.paths import cache_dir
from fleetbench.shared.job import Job

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 2   # 2: typed notes and compute_dtype instead of a meta dict


def cache_root() -> Path:
    return cache_dir("engines")


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
    """The cached artifact of this job on this node, or None."""
    if not cacheable(backend):
        return None
    entry = cache_root() / cache_key(job, backend=backend)
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = [entry / rel for rel in manifest["files"]]
        if manifest.get("format") != FORMAT or not files:
            return None
        for path, size in zip(files, manifest["sizes"]):
            if path.stat().st_size != size:
                log.warning("engine cache %s: %s changed size; ignoring the entry", entry.name, path.name)
                return None
        return Artifact(files=files, dtype=manifest["dtype"], notes=list(manifest.get("notes") or []),
                        compute_dtype=manifest.get("compute_dtype"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(job: Job, backend, artifact: Artifact, workdir: Path) -> Optional[Path]:
    """Keep the artifact's files for later identical jobs; returns the entry, or None when not cached."""
    if not cacheable(backend):
        return None
    rels = _relative_names(artifact.files, Path(workdir))
    if rels is None:
        return None
    root = cache_root()
    entry = root / cache_key(job, backend=backend)
    if (entry / MANIFEST).is_file():
        return entry
    tmp = root / f".tmp-{entry.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for src, rel in zip(artifact.files, rels):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        manifest = {"format": FORMAT, "files": rels, "sizes": [(tmp / r).stat().st_size for r in rels],
                    "dtype": artifact.dtype,
                    "compute_dtype": artifact.compute_dtype, "notes": list(artifact.notes),
                    "job_id": job.job_id, "job": job.describe(),
                    "backend": job.backend, "fingerprint": fingerprint(),
                    "code": _source_hash(type(backend).__module__), "created": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if entry.exists() and not (entry / MANIFEST).is_file():
            shutil.rmtree(entry, ignore_errors=True)   # a damaged entry
        try:
            tmp.rename(entry)
        except OSError:   # another worker stored it first
            shutil.rmtree(tmp, ignore_errors=True)
        return entry
    except OSError as e:
        log.warning("engine cache: cannot store %s: %s", job.describe(), e)
        shutil.rmtree(tmp, ignore_errors=True)
        return None


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
