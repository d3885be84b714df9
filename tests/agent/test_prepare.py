"""The node's prepared work (agent/prepare.py, agent/cache.py) and the lean measuring process."""
import dataclasses
import pickle
import threading

import numpy as np
import pytest

from fleetbench.agent import cache, prepare
from fleetbench.agent.backends import get
from fleetbench.agent.runner import run_job
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def job_of(model, measure, backend="onnxruntime", method="none", batch_size=1, **kw):
    comp = CompressionSpec(method=method, **kw.pop("comp", {}))
    return Job(sweep="t", model=model, dataset=kw.pop("dataset", DatasetSpec(kind="digits", limit=32)),
               compression=comp, backend=backend, device="cpu", batch_size=batch_size, measure=measure, **kw)


def all_keys(job):
    ort, ts = get("onnxruntime"), get("torchscript")
    return {"dataset": prepare.dataset_key(job), "reference": prepare.reference_key(job),
            "compressed": prepare.compressed_key(job), "onnx": prepare.onnx_key(job, None),
            "artifact": prepare.artifact_key(job, ort), "artifact_ts": prepare.artifact_key(job, ts),
            "predictions": prepare.predictions_key(job, ort, 2)}


# ---- keys ----------------------------------------------------------------------------------------

def test_keys_change_with_every_input_and_not_otherwise(demo_model_spec, quick_measure, monkeypatch):
    base = job_of(demo_model_spec, quick_measure, method="cluster", comp={"clusters": 32}, weights_sha256="a" * 64)
    keys = all_keys(base)
    # not otherwise: the sweep's name, how it is measured, the node's name in the plan, the timeout
    same = dataclasses.replace(base, sweep="other", measure=MeasureSpec(min_duration_s=5), timeout_s=7,
                               hostname="h", node_id="n")
    assert all_keys(same) == keys
    # the batch size: ONNX Runtime shares its artifact (dynamic axis); TorchScript and predictions do not
    bs8 = all_keys(dataclasses.replace(base, batch_size=8))
    assert bs8["artifact"] == keys["artifact"] and bs8["onnx"] == keys["onnx"]
    assert bs8["artifact_ts"] != keys["artifact_ts"] and bs8["predictions"] != keys["predictions"]

    def changed(job):
        new = all_keys(job)
        return {k for k in keys if new[k] != keys[k]}

    everything = set(keys)
    assert changed(dataclasses.replace(base, weights_sha256="b" * 64)) == everything - {"dataset"}
    assert changed(dataclasses.replace(base, compression=CompressionSpec(method="cluster", clusters=16))) == \
        everything - {"dataset", "reference"}
    other_data = changed(dataclasses.replace(base, dataset=DatasetSpec(kind="digits", limit=32, seed=1)))
    assert other_data == everything   # new images; and calibration of the compressed model
    # int8-static calibrates on the dataset; the fp32 graph's artifact does not depend on calibration images
    q = job_of(demo_model_spec, quick_measure, method="int8-static")
    calib = DatasetSpec(kind="digits", limit=32, calibration=16)
    assert prepare.artifact_key(dataclasses.replace(q, dataset=calib), get("onnxruntime")) != \
        prepare.artifact_key(q, get("onnxruntime"))
    fp = job_of(demo_model_spec, quick_measure)
    assert prepare.onnx_key(dataclasses.replace(fp, dataset=calib), None) == prepare.onnx_key(fp, None)

    # a library version, or the code that makes an entry
    versions = prepare._all_versions()
    monkeypatch.setattr(prepare, "_all_versions", lambda: {**versions, "torch": "0.0.1"})
    assert changed(base) >= {"reference", "compressed", "onnx", "artifact", "predictions"}
    monkeypatch.setattr(prepare, "_all_versions", lambda: versions)
    assert changed(base) == set()
    real = prepare.code_hash
    monkeypatch.setattr(prepare, "code_hash", lambda m: "edited" if m == "fleetbench.agent.compress" else real(m))
    assert changed(base) == {"compressed", "onnx", "artifact", "artifact_ts", "predictions"}
    monkeypatch.setattr(prepare, "code_hash", lambda m: "edited" if "onnxruntime" in m else real(m))
    assert changed(base) == {"artifact", "predictions"}


def test_node_fingerprint_is_in_artifact_keys(demo_model_spec, quick_measure, monkeypatch):
    job = job_of(demo_model_spec, quick_measure)
    before = prepare.artifact_key(job, get("openvino"))
    fp = cache.fingerprint()
    monkeypatch.setattr(cache, "fingerprint", lambda: {**fp, "cpu": "Another CPU"})
    assert prepare.artifact_key(job, get("openvino")) != before
    assert prepare.onnx_key(job, None) == prepare.onnx_key(job, None)


# ---- the store -----------------------------------------------------------------------------------

def write(data: bytes):
    def make(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "blob.bin").write_bytes(data)
        return {"what": "blob"}
    return make


def test_store_roundtrip_and_a_corrupt_or_half_written_entry_is_a_miss(node_cache):
    key = cache.content_key(x=1)
    made = cache.get_or_make("t", key, write(b"a" * 100))
    assert made.hit is False and made.info == {"what": "blob"}
    again = cache.get_or_make("t", key, write(b"never used"))
    assert again.hit is True and again.file("sub/blob.bin").read_bytes() == b"a" * 100
    blob = again.file("sub/blob.bin")
    blob.write_bytes(b"b" * 100)                       # same size, other content
    assert cache.lookup("t", key) is None         # a miss, and the entry is gone
    assert not (node_cache / "t" / key).exists()
    made = cache.get_or_make("t", key, write(b"c" * 100))
    (made.path / "manifest.json").unlink()            # half-written: files without a manifest
    assert cache.lookup("t", key) is None
    made = cache.get_or_make("t", key, write(b"d" * 100))
    made.file("sub/blob.bin").write_bytes(b"d" * 10)  # truncated
    assert not cache.exists("t", key) and cache.lookup("t", key) is None
    made = cache.get_or_make("t", key, write(b"e" * 100))
    target = made.file("sub/blob.bin")
    target.unlink()
    target.symlink_to(made.path / "manifest.json")    # a symlink is never followed
    assert cache.lookup("t", key) is None
    assert cache.get_or_make("t", key, write(b"f" * 100)).file("sub/blob.bin").read_bytes() == b"f" * 100


def test_racing_writers_leave_one_entry(node_cache):
    key = cache.content_key(race=True)
    gate = threading.Barrier(6)
    got = []

    def make(folder):
        gate.wait()   # every writer is inside make() at once
        (folder / "x.npy").write_bytes(b"same")
        return {}

    threads = [threading.Thread(target=lambda: got.append(cache.put("race", key, make))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and sum(not e.hit for e in got) == 1
    assert [p.name for p in (node_cache / "race").iterdir()] == [key]   # no leftovers of the losers
    assert {e.file("x.npy").read_bytes() for e in got} == {b"same"}


# ---- jobs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,runtime", [("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                                             ("tflite", "ai_edge_litert")])
def test_measuring_process_carries_only_its_runtime(backend, runtime, node_cache, tmp_path, demo_model_spec,
                                                    quick_measure):
    if not get(backend).probe().available:
        pytest.skip(f"{backend} not installed")
    job = job_of(demo_model_spec, quick_measure, backend=backend)
    row = run_job(job, workdir=tmp_path / "work")
    assert row.status == "ok", row.error
    outcome = pickle.loads((tmp_path / "work" / "measure" / "result.pkl").read_bytes())
    # sys.modules of the measuring process: its runtime, no torch, no other runtime
    assert outcome.error is None and outcome.modules == [runtime]
    assert row.ram_peak_mb < 1000 and row.ram_delta_mb >= 0


def test_second_run_hits_every_cache_and_gives_the_same_quality(node_cache, demo_model_spec, quick_measure):
    quality = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "top1_agreement", "eval_samples",
               "size_mb", "sparsity", "dtype")
    for backend in ("onnxruntime", "pytorch"):
        job = job_of(demo_model_spec, quick_measure, backend=backend, method="cluster", comp={"clusters": 16})
        first, second = run_job(job), run_job(job)
        assert first.status == second.status == "ok", (first.error, second.error)
        assert [getattr(first, q) for q in quality] == [getattr(second, q) for q in quality]
        assert first.quality_from.startswith("evaluated") and second.quality_from.startswith("reused predictions")
        assert "made" not in second.reused and "predictions" in second.reused
        assert "compressed" in first.reused and "made" in first.reused
        assert second.latency_p50_ms > 0 and second.iterations >= quick_measure.min_iters   # still measured


def test_one_artifact_serves_both_batch_sizes_and_quality_is_per_batch(node_cache, demo_model_spec, quick_measure):
    rows = [run_job(job_of(demo_model_spec, quick_measure, backend="onnxruntime", batch_size=bs)) for bs in (1, 8)]
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert "made" in rows[0].reused and "artifact" in rows[0].reused
    assert rows[1].reused.startswith("reused") and "artifact" in rows[1].reused.split(";")[0]
    assert rows[1].quality_from.startswith("evaluated") and rows[1].cache_hit is True
    assert len(list((node_cache / "engines").iterdir())) == 1


def test_a_crash_while_preparing_fails_the_row_with_its_stage(node_cache, demo_model_spec, quick_measure, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("exporter exploded")
    monkeypatch.setattr(prepare, "onnx_export", broken)
    row = run_job(job_of(demo_model_spec, quick_measure, backend="onnxruntime", batch_size=1))
    assert (row.status, row.stage) == ("failed", "export") and "exporter exploded" in row.error
    assert not (node_cache / "engines").exists() or not any((node_cache / "engines").iterdir())


def test_a_measuring_process_that_dies_fails_its_row_with_the_stage(node_cache, demo_model_spec, quick_measure):
    from fleetbench.agent.backends import register, unregister
    register("dying", "tests.fixtures.dying_backend:DyingBackend")
    try:
        row = run_job(job_of(demo_model_spec, quick_measure, backend="dying"))
    finally:
        unregister("dying")
    assert (row.status, row.stage) == ("failed", "measure"), row.error
    assert "measuring process died (killed by SIGKILL)" in row.error


def test_reference_predictions_are_the_fp32_models(node_cache, demo_model_spec, quick_measure):
    job = job_of(demo_model_spec, quick_measure)
    data = prepare.dataset(job)
    ref = prepare.reference(job, None, data, 1)
    assert ref.hit is False and ref.pred.shape == (32,) and np.mean(ref.pred == data.eval_y) > 0.9
    assert ref.gflops and ref.gflops > 0   # counted on the reference pass, kept with it
    again = prepare.reference(job, None, data, 1)
    assert again.hit is True and np.array_equal(ref.pred, again.pred) and again.gflops == ref.gflops
