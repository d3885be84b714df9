"""Hostile cases for the node caches (engine entries and shipped checkpoints): a cache never lies,
nobody else can plant an entry, and a damaged entry is a miss that is rebuilt, never a wrong
figure or a traceback. Ray-free."""
import json
import os
import stat
import threading
import time

import pytest

from fleetbench.agent import cache, prepare
from fleetbench.agent.backends.base import Artifact
from fleetbench.agent.models import materialise_weights, weights_cache_dir
from fleetbench.agent.runner import run_job
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec
from tests.conftest import cached_artifact as lookup


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_job(model, measure, backend="onnxruntime"):
    return Job(sweep="t", model=model, dataset=DatasetSpec(kind="digits", limit=64),
               compression=CompressionSpec(method="none"), backend=backend, device="cpu",
               batch_size=1, measure=measure, node_key="local")


class Files:
    """A backend as the cache sees one: its name and its declared `cacheable`."""

    name = "files"
    cacheable = True


def stored(job, tmp_path, files=None):
    work = tmp_path / "work"
    files = files or {"onnx/model.onnx": b"x" * 10, "onnx/model.onnx.data": b"w" * 99}
    paths = []
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
        paths.append(work / rel)
    entry = prepare.store_artifact(job, Files(), Artifact(paths, dtype="fp32"), work)
    assert entry is not None and lookup(job, Files()) is not None
    return entry


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- an entry that changed is a miss, removed, and rebuilt ------------------------------------------

def test_same_size_overwrite_of_the_data_file_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    (entry / "onnx/model.onnx.data").write_bytes(os.urandom(99))   # same size, other floats
    assert lookup(job, Files()) is None
    assert not entry.exists()                                       # removed, to be rebuilt


def test_truncated_file_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    os.truncate(entry / "onnx/model.onnx", 3)
    assert lookup(job, Files()) is None


@pytest.mark.parametrize("planted", ["/etc/passwd", "../../../../etc/passwd", "onnx/../../x", "", 7, None,
                                     "onnx/./model.onnx/../../../../etc/hosts"])
def test_planted_manifest_paths_outside_the_entry_are_a_miss(base, tmp_path, demo_model_spec, quick_measure,
                                                             planted):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    m = json.loads((entry / "manifest.json").read_text())
    m["files"][0] = planted
    (entry / "manifest.json").write_text(json.dumps(m))
    assert lookup(job, Files()) is None


@pytest.mark.parametrize("manifest", [b"", b"{", b"[]", b'{"format": 2}', b'{"format": 2, "files": [],'
                                      b' "sizes": [], "sha256": []}', b"\xff\xfe\x00garbage", b"null"])
def test_garbage_manifest_is_a_miss_not_a_traceback(base, tmp_path, demo_model_spec, quick_measure, manifest):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    (entry / "manifest.json").write_bytes(manifest)
    assert lookup(job, Files()) is None


def test_a_file_replaced_by_a_symlink_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 10)           # same bytes: only the symlink is wrong
    (entry / "onnx/model.onnx").unlink()
    (entry / "onnx/model.onnx").symlink_to(target)
    assert lookup(job, Files()) is None
    assert target.read_bytes() == b"x" * 10   # the target is left alone


def test_a_folder_on_the_path_replaced_by_a_symlink_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    real = tmp_path / "real-onnx"
    (entry / "onnx").rename(real)
    (entry / "onnx").symlink_to(real)
    assert lookup(job, Files()) is None


def test_an_entry_that_is_a_symlink_to_a_planted_folder_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    planted = tmp_path / "planted"
    entry.rename(planted)
    entry.symlink_to(planted)
    assert lookup(job, Files()) is None
    assert planted.is_dir() and not entry.is_symlink()   # the link is removed, not what it points to


def test_an_old_format_entry_with_sizes_only_is_a_miss(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    m = json.loads((entry / "manifest.json").read_text())
    m["format"] = 1
    del m["sha256"]
    (entry / "manifest.json").write_text(json.dumps(m))
    assert lookup(job, Files()) is None


def test_end_to_end_an_altered_cached_engine_is_rebuilt_and_the_figure_is_right(base, demo_model_spec,
                                                                                  quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    first = run_job(job)
    assert first.status == "ok", first.error
    (entry,) = list((base / "engines").iterdir())
    biggest = max((p for p in entry.rglob("*") if p.is_file() and p.name != "manifest.json"),
                  key=lambda p: p.stat().st_size)
    biggest.write_bytes(os.urandom(biggest.stat().st_size))
    second = run_job(job)
    assert second.status == "ok", second.error
    assert second.cache_hit is False and second.export_s > 0
    assert second.accuracy == first.accuracy and second.top1_agreement == first.top1_agreement
    third = run_job(job)
    assert third.cache_hit is True and third.accuracy == first.accuracy


# -- private folders, unpredictable temporary names, races -------------------------------------------

def test_cache_folders_are_created_0700_and_entries_private(base, tmp_path, demo_model_spec, quick_measure):
    entry = stored(make_job(demo_model_spec, quick_measure), tmp_path)
    assert mode(base) == mode(base / "engines") == mode(entry) == 0o700


def test_an_existing_loose_folder_of_ours_is_tightened(base, tmp_path, demo_model_spec, quick_measure):
    (base / "engines").mkdir(parents=True)
    os.chmod(base / "engines", 0o777)
    stored(make_job(demo_model_spec, quick_measure), tmp_path)
    assert mode(base / "engines") == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_cache_folder_of_another_user_is_not_used(base, tmp_path, demo_model_spec, quick_measure, caplog):
    (base / "engines").mkdir(parents=True)
    os.chown(base / "engines", 12345, 12345)
    job = make_job(demo_model_spec, quick_measure)
    f = tmp_path / "w" / "m.bin"
    f.parent.mkdir()
    f.write_bytes(b"x")
    assert prepare.store_artifact(job, Files(), Artifact([f]), tmp_path / "w") is None
    assert lookup(job, Files()) is None
    assert not any((base / "engines").iterdir())
    assert "belongs to uid 12345" in caplog.text


def test_a_cache_root_that_is_a_symlink_is_not_used(base, tmp_path, demo_model_spec, quick_measure):
    base.mkdir()
    (tmp_path / "shared").mkdir()
    (base / "engines").symlink_to(tmp_path / "shared")
    job = make_job(demo_model_spec, quick_measure)
    f = tmp_path / "w" / "m.bin"
    f.parent.mkdir()
    f.write_bytes(b"x")
    assert prepare.store_artifact(job, Files(), Artifact([f]), tmp_path / "w") is None
    assert not any((tmp_path / "shared").iterdir())


def test_a_symlink_at_the_old_predictable_temp_name_is_not_written_through(base, tmp_path, demo_model_spec,
                                                                            quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    key = prepare.artifact_key(job, Files())
    (base / "engines").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.mkdir()
    (base / "engines" / f".tmp-{key}-{os.getpid()}").symlink_to(victim)
    stored(job, tmp_path)
    assert not any(victim.iterdir())
    assert [p.name for p in (base / "engines").iterdir() if not p.name.startswith(".tmp-")] == [key]


def test_racing_writers_leave_one_whole_entry(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    work = tmp_path / "w"
    work.mkdir()
    f = work / "model.bin"
    f.write_bytes(os.urandom(1 << 20))
    go = threading.Barrier(8)
    out = []

    def writer():
        go.wait()
        out.append(prepare.store_artifact(job, Files(), Artifact([f]), work))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1 and out[0] is not None
    assert [p.name for p in (base / "engines").iterdir()] == [out[0].name]   # no temp folder left
    assert lookup(job, Files()).main.read_bytes() == f.read_bytes()


# -- shipped checkpoints ---------------------------------------------------------------------------

def _weights():
    import hashlib

    from tests.conftest import DEMO_CHECKPOINT
    data = DEMO_CHECKPOINT.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def test_checkpoint_copy_is_0600_in_a_0700_folder(base):
    data, sha = _weights()
    path = materialise_weights(data, sha, ".safetensors")
    assert path.read_bytes() == data
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(base) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temp file left


@pytest.mark.parametrize("damage", ["truncate", "same-size", "empty", "symlink"])
def test_a_damaged_checkpoint_copy_is_rewritten_from_the_shipped_bytes(base, tmp_path, damage):
    data, sha = _weights()
    path = materialise_weights(data, sha, ".safetensors")
    if damage == "truncate":
        os.truncate(path, len(data) // 2)
    elif damage == "same-size":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        other = tmp_path / "other.safetensors"
        other.write_bytes(data)
        path.unlink()
        path.symlink_to(other)
    again = materialise_weights(data, sha, ".safetensors")
    assert again == path and not path.is_symlink() and path.read_bytes() == data and mode(path) == 0o600


def test_a_job_with_a_truncated_cached_checkpoint_is_ok(base, demo_model_spec, quick_measure):
    from dataclasses import replace
    data, sha = _weights()
    job = replace(make_job(demo_model_spec, quick_measure, backend="pytorch"), weights_sha256=sha)
    first = run_job(job, data)
    assert first.status == "ok", first.error
    os.truncate(weights_cache_dir() / f"{sha}.safetensors", 100)
    second = run_job(job, data)
    assert second.status == "ok", second.error
    assert second.accuracy == first.accuracy


def test_shipped_bytes_that_do_not_match_their_hash_fail_at_load(base):
    data, sha = _weights()
    from fleetbench.shared.errors import StageError
    with pytest.raises(StageError, match="do not match their hash"):
        materialise_weights(data[:-1], sha, ".safetensors")


# -- prune -----------------------------------------------------------------------------------------

def test_prune_removes_entries_unused_for_longer_than_the_age(base, tmp_path, demo_model_spec, quick_measure):
    old = stored(make_job(demo_model_spec, quick_measure), tmp_path)
    data, sha = _weights()
    weights = materialise_weights(data, sha, ".safetensors")
    long_ago = time.time() - 40 * 86400
    for p in (old, old / "manifest.json", weights):
        os.utime(p, (long_ago, long_ago))
    from dataclasses import replace
    new = stored(replace(make_job(demo_model_spec, quick_measure), batch_size=2), tmp_path / "n")
    removed = cache.prune(30 * 86400)
    assert sorted(removed) == sorted([old, weights])
    assert not old.exists() and not weights.exists() and new.is_dir()
    assert cache.prune(30 * 86400) == []


def test_a_hit_counts_as_use_for_prune(base, tmp_path, demo_model_spec, quick_measure):
    job = make_job(demo_model_spec, quick_measure)
    entry = stored(job, tmp_path)
    long_ago = time.time() - 40 * 86400
    for p in (entry, entry / "manifest.json"):
        os.utime(p, (long_ago, long_ago))
    assert lookup(job, Files()) is not None
    assert cache.prune(30 * 86400) == []
