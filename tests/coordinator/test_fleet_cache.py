"""The node cache's engine entries (agent/cache.py), without Ray: keys, entries, and run_job skipping the export."""
import json

import pytest

from fleetbench.agent import cache, prepare
from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.runner import run_job
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec
from tests.conftest import cached_artifact as lookup


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "engines"


def make_job(model, measure, backend="onnxruntime", batch_size=1, node_key="local"):
    return Job(sweep="t", model=model, dataset=DatasetSpec(kind="digits", limit=32),
               compression=CompressionSpec(method="none"), backend=backend, device="cpu",
               batch_size=batch_size, measure=measure, node_key=node_key)


class Files:
    name = "files"
    cacheable = True


class Live:
    name = "live"
    cacheable = False


def write(path, data=b"x" * 10):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_store_then_lookup_keeps_files_layout_dtype_and_notes(cache_dir, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    work = tmp_path / "work"
    files = [write(work / "onnx" / "model.onnx"), write(work / "onnx" / "model.onnx.data", b"w" * 99)]
    assert lookup(job, Files()) is None
    entry = prepare.store_artifact(job, Files(), Artifact(files, dtype="fp16", notes=["made"], compute_dtype="fp16"), work)
    assert entry is not None and entry.parent == cache_dir
    hit = lookup(job, Files())
    assert [p.relative_to(entry).as_posix() for p in hit.files] == ["onnx/model.onnx", "onnx/model.onnx.data"]
    assert hit.main.read_bytes() == b"x" * 10 and hit.files[1].stat().st_size == 99
    assert (hit.dtype, hit.compute_dtype, hit.notes) == ("fp16", "fp16", ["made"])
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["info"]["job_id"] == job.job_id and manifest["info"]["fingerprint"]["versions"]["python"]
    # another job (other batch size, other node) is another entry
    assert lookup(make_job(demo_model_spec, quick_measure, batch_size=8), Files()) is None
    assert lookup(make_job(demo_model_spec, quick_measure, node_key="other"), Files()) is None


def test_the_key_covers_hardware_and_library_versions(cache_dir, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    fp = cache.fingerprint()
    assert {"cpu", "isa", "gpus", "driver", "versions"} <= set(fp)
    keys = {prepare.artifact_key(job, None, fp),
            prepare.artifact_key(job, None, {**fp, "driver": "999.1"}),
            prepare.artifact_key(job, None, {**fp, "gpus": ["NVIDIA H100"]}),
            prepare.artifact_key(job, None, {**fp, "cpu": "Other CPU"}),
            prepare.artifact_key(job, None, {**fp, "versions": {**fp["versions"], "onnxruntime": "0.0.1"}})}
    assert len(keys) == 5
    assert prepare.artifact_key(job, None) == prepare.artifact_key(job, None, fp)
    from fleetbench.agent.backends import get
    ts, ort = get("torchscript"), get("onnxruntime")   # the exporter's own source is in the key too
    assert prepare.artifact_key(job, ts, fp) != prepare.artifact_key(job, ort, fp) != prepare.artifact_key(job, None, fp)


def test_uncacheable_backends_are_not_cached(cache_dir, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    f = write(tmp_path / "w" / "model.bin")
    assert prepare.store_artifact(job, Live(), Artifact([f]), tmp_path / "w") is None
    assert lookup(job, Live()) is None
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_a_damaged_entry_is_a_miss_and_is_replaced(cache_dir, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    f = write(tmp_path / "w" / "model.bin")
    entry = prepare.store_artifact(job, Files(), Artifact([f]), tmp_path / "w")
    (entry / "model.bin").write_bytes(b"short")
    assert lookup(job, Files()) is None
    assert not entry.exists()   # a damaged entry is removed on the miss
    assert lookup(job, Files()) is None
    assert prepare.store_artifact(job, Files(), Artifact([f]), tmp_path / "w") == entry
    assert lookup(job, Files()).main.read_bytes() == b"x" * 10


def test_an_identical_second_job_skips_the_export(cache_dir, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure, backend="onnxruntime")
    first, second = run_job(job), run_job(job)
    assert first.status == second.status == "ok", (first.error, second.error)
    assert first.cache_hit is False and first.export_s > 0
    assert second.cache_hit is True and second.export_s == 0.0
    assert second.build_s > 0                       # loading the cached engine is still timed, honestly
    assert second.size_mb == pytest.approx(first.size_mb)
    assert second.top1_agreement >= 0.99 and second.latency_p50_ms > 0
    assert len(list(cache_dir.iterdir())) == 1


def test_pytorch_eager_is_never_cached(cache_dir, demo_model_spec, quick_measure):
    r = run_job(make_job(demo_model_spec, quick_measure, backend="pytorch"))
    assert r.status == "ok", r.error
    assert r.cache_hit is None and r.export_s > 0
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
