"""Work done once per node and reused by every job that needs it, each entry keyed by its content.

Entries, and what each key is made from:
- dataset: eval_x / eval_y / calib_x as .npy. Dataset spec, input size, the image files' names, sizes
  and times (imagefolder), code, numpy / scikit-learn / Pillow versions.
- reference: the fp32 eager model's predictions on the data. Model (source, classes, input size, weights
  hash; for a `python:` source its code and what it imports: agent/codekey.py), dataset key, code,
  torch / timm / onnxruntime versions.
- compressed: the model-level compressed torch module. Model, compression parameters, calibration data,
  code, torch / torch-pruning versions.
- onnx: the fp32 ONNX export of the (compressed) model. Compressed key, batch axis (dynamic, or one static
  size), opset, code, torch / onnx versions.
- engines: a backend's exported artifact files (dtype, notes). Compressed key, backend, device, method, batch size
  (left out where the backend takes a dynamic batch axis), calibration data, backend code, node name and
  fingerprint (hardware, library versions).
- predictions: an engine's top-1 predictions on the data. Artifact key, batch size, threads, dataset key.

Keys are computed from the inputs only, so a plan can tell what is cached without doing any work, and
a key changes when any input changes (weights, compression parameters, dataset, calibration, library
version, code) and not otherwise. The store (agent/cache.py) checks every file's hash on read.

Heavy libraries (torch, timm, exporters) are imported only when an entry must be made.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetbench.agent import cache
from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.cache import code_hash
from fleetbench.agent.codekey import source_digest
from fleetbench.shared.errors import StageError
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import METHODS

log = logging.getLogger(__name__)
OPSET = 18
CALIB_BATCH = 8        # calibration batch size of an artifact shared by every batch size (dynamic axis)
REFERENCE_BATCH = 64

# Code each kind of entry is made by (a package stands for every .py file in it).
CODE = {
    "dataset": ("fleetbench.agent.data",),
    "model": ("fleetbench.agent.models",),
    "compressed": ("fleetbench.agent.compress",),
    "onnx": ("fleetbench.agent.onnx_export",),
    "predictions": ("fleetbench.agent.quality",),
}
VERSIONS = {
    "dataset": ("numpy", "scikit-learn", "pillow"),
    "model": ("torch", "timm", "safetensors", "onnxruntime"),
    "compressed": ("torch", "torch-pruning"),
    "onnx": ("torch", "onnx", "onnxscript"),
}


@functools.lru_cache(maxsize=1)
def _all_versions() -> dict[str, Optional[str]]:
    import importlib.metadata

    from fleetbench.agent.probe import versions
    out = dict(versions())
    for name in {n for names in VERSIONS.values() for n in names}:
        if name not in out:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = None
    return out


def versions_of(names) -> dict[str, Optional[str]]:
    v = _all_versions()
    return {n: v.get(n) for n in names}


def code_of(kind: str) -> dict[str, Optional[str]]:
    return {m: code_hash(m) for m in CODE[kind]}


# ---- keys ------------------------------------------------------------------------------------------

def dataset_key(job: Job) -> str:
    spec = job.dataset.model_dump(mode="json")
    folder = _folder_digest(job.dataset.path) if job.dataset.kind == "imagefolder" else None
    return cache.content_key(kind="dataset", spec=spec, input_size=list(job.model.input_size), folder=folder,
                                 code=code_of("dataset"), versions=versions_of(VERSIONS["dataset"]))


def _folder_digest(path: Optional[str]) -> Optional[str]:
    """SHA-256 over an image folder's file names, sizes and modification times (a stat per file, so a
    large folder is not read again by every job): images added, removed or rewritten are another dataset."""
    root = Path(path or "")
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def model_key(job: Job) -> str:
    m = job.model
    weights = job.weights_sha256
    if weights is None and (m.checkpoint or m.scheme == "onnx"):
        local = Path(m.checkpoint or m.source.partition(":")[2])
        weights = cache.file_sha256(local) if local.is_file() else f"missing:{local}"
    user_code = source_digest(m.source.split(":")[1]) if m.scheme == "python" else None
    return cache.content_key(kind="model", source=m.source, num_classes=m.num_classes,
                                 input_size=list(m.input_size), pretrained=m.pretrained, weights=weights,
                                 code=code_of("model"), user_code=user_code, versions=versions_of(VERSIONS["model"]))


def reference_key(job: Job) -> str:
    batch = job.batch_size if job.model.scheme == "onnx" else REFERENCE_BATCH   # an ONNX source may be static
    return cache.content_key(kind="reference", model=model_key(job), dataset=dataset_key(job),
                                 batch=batch, code=code_hash(__name__))


def model_level(job: Job) -> bool:
    return METHODS[job.compression.method].level == "model"


def compressed_key(job: Job) -> str:
    """The compressed module's key; for methods that leave the network as it is, the model's own key."""
    if not model_level(job):
        return model_key(job)
    return cache.content_key(kind="compressed", model=model_key(job),
                                 compression=job.compression.model_dump(mode="json"), calibration=dataset_key(job),
                                 code=code_of("compressed"), versions=versions_of(VERSIONS["compressed"]))


def onnx_key(job: Job, batch: Optional[int]) -> str:
    """The fp32 ONNX export of the compressed model: batch None = a dynamic batch axis."""
    return cache.content_key(kind="onnx", compressed=compressed_key(job), batch=batch or "dynamic",
                                 opset=OPSET, code=code_of("onnx"), versions=versions_of(VERSIONS["onnx"]))


def backend_package(backend) -> str:
    module = type(backend).__module__
    parent = module.rpartition(".")[0]
    return parent if parent != "fleetbench.agent.backends" else module


def shares_batch(backend, job: Job) -> bool:
    fn = getattr(backend, "shares_batch", None)
    return bool(fn(job)) if callable(fn) else False


def artifact_key(job: Job, backend, fp: Optional[dict] = None) -> str:
    """What a backend's artifact is made from (batch size left out where the backend takes a dynamic axis),
    on this node (`fp`: its hardware and library fingerprint, agent/cache.py)."""
    method = job.compression.method
    calibrated = METHODS[method].level == "precision" and "static" in method
    return cache.content_key(
        kind="artifact", compressed=compressed_key(job), backend=job.backend, device=job.device,
        method=method, compression=job.compression.model_dump(mode="json"),
        batch=None if shares_batch(backend, job) else job.batch_size,
        calibration=dataset_key(job) if calibrated else None, opset=OPSET,
        code={"backend": code_hash(backend_package(backend)) if backend is not None else None,
              "base": code_hash("fleetbench.agent.backends.base"), **code_of("onnx")},
        node=job.node_key, fingerprint=fp or cache.fingerprint())   # per node: nodes sharing one disk keep theirs


def predictions_key(job: Job, backend, threads: int) -> str:
    return cache.content_key(kind="predictions", artifact=artifact_key(job, backend), batch=job.batch_size,
                                 threads=threads, dataset=dataset_key(job), code=code_of("predictions"))


# ---- entries ---------------------------------------------------------------------------------------

@dataclass
class Data:
    """The dataset's arrays, read from the node's cache (numpy only)."""

    entry: cache.Entry

    @property
    def eval_x_path(self) -> Path:
        return self.entry.file("eval_x.npy")

    def eval_x(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.eval_x_path, mmap_mode="r" if mmap else None)

    @property
    def calib_x(self) -> np.ndarray:
        return np.load(self.entry.file("calib_x.npy"))

    @property
    def eval_y(self) -> Optional[np.ndarray]:
        f = self.entry.files.get("eval_y.npy")
        return None if f is None else np.load(f)


def dataset(job: Job) -> Data:
    def make(folder: Path) -> dict:
        from fleetbench.agent.data import load_dataset
        d = load_dataset(job.dataset, tuple(job.model.input_size))
        np.save(folder / "eval_x.npy", np.ascontiguousarray(d.eval_x, dtype=np.float32))
        np.save(folder / "calib_x.npy", np.ascontiguousarray(d.calib_x, dtype=np.float32))
        if d.eval_y is not None:
            np.save(folder / "eval_y.npy", d.eval_y.astype(np.int64))
        return {"name": d.name, "classes": d.classes, "notes": list(d.notes), "job": job.describe()}
    return Data(cache.get_or_make("dataset", dataset_key(job), make))


def checkpoint_file(job: Job, weights: Optional[bytes]) -> Optional[Path]:
    """The checkpoint on this node: shipped bytes written to the weights cache, else the sweep's local path."""
    if weights is not None and job.weights_sha256:
        from fleetbench.agent.models import materialise_weights
        suffix = Path(job.model.checkpoint or job.model.source).suffix
        return materialise_weights(weights, job.weights_sha256, suffix)
    if job.model.scheme == "onnx":
        return Path(job.model.source.partition(":")[2])
    return Path(job.model.checkpoint) if job.model.checkpoint else None


def onnx_source(job: Job, weights: Optional[bytes]) -> Path:
    path = checkpoint_file(job, weights)
    if path is None or not path.is_file():
        raise StageError("load", f"{path}: ONNX model not found")
    return path


def load_fp32(job: Job, weights: Optional[bytes]) -> tuple[Any, list[str]]:
    from fleetbench.agent.models import load_model
    return load_model(job.model, checkpoint_file(job, weights))


@dataclass
class Reference:
    """The fp32 reference predictions, the model's GFLOPs per item counted on that pass, and notes."""

    pred: np.ndarray
    hit: bool
    notes: list[str]
    gflops: Optional[float]


def reference(job: Job, weights: Optional[bytes], data: Data, threads: int) -> Reference:
    """The fp32 eager model's predictions on the evaluation set (for onnx: sources, the fp32 graph on ORT)."""
    from fleetbench.agent.quality import predict

    def make(folder: Path) -> dict:
        x = data.eval_x(mmap=False)
        gflops = None
        classes = job.model.num_classes
        if job.model.scheme == "onnx":
            from fleetbench.agent.backends.onnxruntime.backend import reference_runner
            pred = predict(reference_runner(onnx_source(job, weights), threads), x, job.batch_size, classes)
            notes: list[str] = []
        else:
            import torch
            from torch.utils.flop_counter import FlopCounterMode
            model, notes = load_fp32(job, weights)
            torch.set_num_threads(threads)
            counter = FlopCounterMode(display=False)   # FLOPs per item, counted on the reference pass itself
            with torch.inference_mode(), counter:
                pred = predict(lambda b: _numpy(model(torch.from_numpy(b))), x, REFERENCE_BATCH, classes)
            items = -(-len(x) // REFERENCE_BATCH) * REFERENCE_BATCH   # predict pads the last batch
            gflops = counter.get_total_flops() / items / 1e9 or None
        np.save(folder / "reference.npy", pred)
        return {"model_notes": list(notes) + _judge_reference(pred), "gflops": gflops}

    entry = cache.get_or_make("reference", reference_key(job), make)
    gflops = entry.info.get("gflops")
    return Reference(np.load(entry.file("reference.npy")), entry.hit, list(entry.info.get("model_notes") or []),
                     float(gflops) if isinstance(gflops, (int, float)) else None)


def _numpy(out: Any) -> Any:
    """A torch model's output as numpy (a tensor of a dtype numpy lacks as float32); anything else as it is,
    for `quality.logits` to say what it is."""
    import torch
    if not isinstance(out, torch.Tensor):
        return out
    out = out.detach().cpu()
    return (out.float() if out.dtype in (torch.bfloat16, torch.float16) else out).numpy()


def _judge_reference(pred: np.ndarray) -> list[str]:
    """Refuse a model whose fp32 logits are not finite (the load stage fails with the count); a note when
    it predicts one class for every image (its output may not depend on its input)."""
    from fleetbench.agent.quality import nonfinite
    bad = nonfinite(pred)
    if bad:
        raise StageError("load", f"the fp32 model gives non-finite logits (NaN or inf) for {bad} of "
                                 f"{len(pred)} images")
    if len(pred) > 1 and len(np.unique(pred)) == 1:
        return [f"the fp32 model predicts class {int(pred[0])} for all {len(pred)} images"]
    return []


@dataclass
class CompressedModel:
    model: Any
    notes: list[str] = field(default_factory=list)
    sparsity: Optional[float] = None
    hit: bool = False


def compressed(job: Job, weights: Optional[bytes], data: Data) -> CompressedModel:
    """The model-level compressed network (made once per model and compression); else the fp32 network."""
    import torch
    if not model_level(job):
        model, notes = load_fp32(job, weights)
        return CompressedModel(model, notes)

    def make(folder: Path) -> dict:
        from fleetbench.agent import compress
        model, notes = load_fp32(job, weights)
        change = compress.apply(job, model, data.calib_x)
        torch.save(change.model, folder / "model.pt")   # the whole module: pruning may change its structure
        return {"notes": list(notes) + list(change.notes), "sparsity": change.sparsity}

    entry = cache.get_or_make("compressed", compressed_key(job), make)
    # The node's own 0700 cache, each file's SHA-256 checked on read: a full module (not only weights).
    module = torch.load(entry.file("model.pt"), map_location="cpu", weights_only=False).eval()
    return CompressedModel(module, list(entry.info.get("notes") or []), entry.info.get("sparsity"), entry.hit)


def compressed_info(job: Job) -> Optional[dict]:
    """Sparsity and notes of the node's compressed module of this job, when it is kept (None: not yet)."""
    entry = cache.lookup("compressed", compressed_key(job)) if model_level(job) else None
    if entry is None:
        return None
    return {"sparsity": entry.info.get("sparsity"), "compression_notes": list(entry.info.get("notes") or [])}


def onnx_export(job: Job, model_fn, example: np.ndarray, dynamic: bool) -> tuple[Path, bool, bool]:
    """The fp32 ONNX of the compressed model: one with a dynamic batch axis shared by every batch size,
    or one at the example's batch size. `model_fn()` gives the compressed module (only on a miss).
    Returns (path, cache hit, dynamic): a model whose export cannot take a dynamic axis gets a static one."""
    def make(x: np.ndarray, dyn: bool):
        def write(folder: Path) -> dict:
            from fleetbench.agent.onnx_export import export_onnx
            export_onnx(model_fn(), x, folder / "model.onnx", OPSET, dynamic_batch=dyn)
            return {"dynamic": dyn}
        return write

    if dynamic:
        x = example if len(example) >= 2 else np.concatenate([example, example])[:2]   # export specialises size 1
        try:
            entry = cache.get_or_make("onnx", onnx_key(job, None), make(x, True))
            return entry.file("model.onnx"), entry.hit, True
        except Exception as e:  # noqa: BLE001 - e.g. a reshape that fixes the batch: export per batch size
            log.warning("%s: no ONNX export with a dynamic batch axis (%s); exporting per batch size",
                        job.describe(), e)
    x = example[: job.batch_size]
    entry = cache.get_or_make("onnx", onnx_key(job, len(x)), make(x, False))
    return entry.file("model.onnx"), entry.hit, False


def stored_artifact(job: Job, backend) -> Optional[tuple[Artifact, cache.Entry]]:
    """The cached artifact of this job on this node and its entry, or None (a damaged entry is a miss)."""
    if not backend.cacheable:
        return None
    entry = cache.lookup(cache.ENGINES, artifact_key(job, backend))
    artifact = _artifact_of(entry) if entry is not None else None
    return None if artifact is None or entry is None else (artifact, entry)


def _artifact_of(entry: cache.Entry) -> Optional[Artifact]:
    info = entry.info
    try:
        files = [entry.file(rel) for rel in info["files"]]
        notes = [str(n) for n in info.get("notes") or []]
        dtype = info.get("dtype")
    except (KeyError, TypeError):
        return None
    if not files or not isinstance(dtype, (str, type(None))):
        return None
    return Artifact(files=files, dtype=dtype or "fp32", notes=notes, compute_dtype=info.get("compute_dtype"))


def store_artifact(job: Job, backend, artifact: Artifact, workdir: Path, info: Optional[dict] = None) -> Optional[Path]:
    """Keep the artifact's files for later jobs with the same key; returns the entry's folder, or None when
    not cached. `info` (JSON) is kept beside it (what the compress stage said)."""
    entry = _keep(job, backend, artifact, workdir, info)
    return entry.path if entry is not None else None


def keep_artifact(job: Job, backend, artifact: Artifact, workdir: Path, info: Optional[dict] = None) -> Artifact:
    """store_artifact, returning the kept copy (the artifact itself where it is not kept)."""
    entry = _keep(job, backend, artifact, workdir, info)
    return (_artifact_of(entry) if entry is not None else None) or artifact


def _keep(job: Job, backend, artifact: Artifact, workdir: Path, info: Optional[dict]) -> Optional[cache.Entry]:
    if not backend.cacheable:
        return None
    rels = _relative_names(artifact.files, Path(workdir))
    if rels is None:
        return None

    def make(folder: Path) -> dict:
        for src, rel in zip(artifact.files, rels):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / rel)
        return {**(info or {}), "files": rels, "dtype": artifact.dtype, "compute_dtype": artifact.compute_dtype,
                "notes": list(artifact.notes), "job_id": job.job_id, "job": job.describe(),
                "backend": job.backend, "fingerprint": cache.fingerprint()}

    try:
        cache.kind_dir(cache.ENGINES)
        return cache.put(cache.ENGINES, artifact_key(job, backend), make)
    except OSError as e:
        log.warning("engine cache: cannot store %s: %s", job.describe(), e)
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
        if rel == cache.MANIFEST or rel in rels or not p.is_file():
            return None
        rels.append(rel)
    return rels


def stored_predictions(job: Job, backend, threads: int) -> Optional[np.ndarray]:
    entry = cache.lookup("predictions", predictions_key(job, backend, threads))
    return None if entry is None else np.load(entry.file("pred.npy"))


def store_predictions(job: Job, backend, threads: int, pred: np.ndarray) -> None:
    def make(folder: Path) -> dict:
        np.save(folder / "pred.npy", np.asarray(pred))
        return {"job": job.describe()}
    try:
        cache.put("predictions", predictions_key(job, backend, threads), make)
    except OSError as e:
        log.warning("predictions of %s not kept: %s", job.describe(), e)


# ---- the plan ----------------------------------------------------------------------------------------

def plan_job(job: Job, backend, threads: Optional[int] = None) -> list[tuple[str, str, bool]]:
    """The preparations a job needs as (kind, key, cached), in order, without doing any of them: what the
    artifact is made from is listed only when the artifact itself is not cached."""
    steps = [("dataset", dataset_key(job))]
    if backend.needs_model:
        steps.append(("reference", reference_key(job)))
        art = artifact_key(job, backend)
        if not (backend.cacheable and cache.exists(cache.ENGINES, art)):
            if model_level(job):
                steps.append(("compressed", compressed_key(job)))
            if getattr(backend, "takes_onnx", False) and job.model.scheme != "onnx":
                steps.append(("onnx", onnx_key(job, None if shares_batch(backend, job) else job.batch_size)))
        if backend.cacheable:
            steps.append((cache.ENGINES, art))
        if threads is None:
            from fleetbench.agent.stages import default_threads
            threads = job.measure.threads or default_threads()
        steps.append(("predictions", predictions_key(job, backend, threads)))
    return [(kind, key, cache.exists(kind, key)) for kind, key in steps]


def describe_reuse(parts: dict[str, bool]) -> str:
    """'reused: dataset, reference; made: artifact' for a row."""
    used = [k for k, hit in parts.items() if hit]
    made = [k for k, hit in parts.items() if not hit]
    out = []
    if used:
        out.append("reused " + ", ".join(used))
    if made:
        out.append("made " + ", ".join(made))
    return "; ".join(out)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)

