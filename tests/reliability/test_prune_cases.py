"""`cache prune` removes only what fleetbench made: entries of its own layout, in a cache folder that carries
its marker. A folder of the user's (FLEETBENCH_CACHE=~/myproject), a file dropped into a cache folder, a
look-alike entry, a symlink out of the cache: all left byte for byte. Ray-free, no model."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from fleetbench.agent import cache
from fleetbench.coordinator.cli import main

OLD = time.time() - 90 * 86400


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` with its content hash (or 'dir' / the symlink's target)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else \
            hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def aged(*paths: Path) -> None:
    for p in paths:
        os.utime(p, (OLD, OLD), follow_symlinks=False)


def entry(kind: str, payload: bytes = b"x") -> Path:
    """A real entry, made the way every job makes one, last used 90 days ago."""
    key = cache.content_key(kind=kind, payload=payload.hex())
    got = cache.put(kind, key, lambda folder: (folder / "data.bin").write_bytes(payload) and None)
    aged(got.path / cache.MANIFEST, got.path)
    return got.path


@pytest.fixture
def fresh(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "cache"


def prune_cli(capsys, *extra) -> tuple[int, list[str], list[str]]:
    rc = main(["cache", "prune", "--older-than", "0", *extra])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out.splitlines(), cap.err.splitlines()


def test_a_users_own_folder_is_refused_and_left_byte_for_byte(tmp_path, monkeypatch, capsys):
    project = tmp_path / "myproject"
    (project / "dataset" / "cats").mkdir(parents=True)
    (project / "dataset" / "cats" / "1.jpg").write_bytes(b"\xff\xd8 a cat")
    (project / "weights").mkdir()
    (project / "weights" / "model.ckpt").write_bytes(b"my weights")
    (project / "README").write_text("my project\n")
    look_alike = project / "engines" / ("a" * 32)
    look_alike.mkdir(parents=True)
    (look_alike / "manifest.json").write_text(json.dumps({"kind": "engines", "key": "a" * 32}))
    aged(*project.rglob("*"))
    before = tree(project)
    monkeypatch.setenv("FLEETBENCH_CACHE", str(project))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc, out, err = prune_cli(capsys)
    assert rc == 2 and out == [] and err == [
        f"coordinator: {project}: not a fleetbench cache folder (no .fleetbench-cache marker: fleetbench did not "
        "make it); prune refused, nothing removed. A cache of an older fleetbench: coordinator cache prune --adopt"]
    assert tree(project) == before


def test_a_folder_the_cache_makes_is_marked_and_prune_removes_its_entries(fresh, capsys):
    old = entry("onnx")
    assert (fresh / ".fleetbench-cache").is_file() and old.is_dir()
    rc, out, _ = prune_cli(capsys)
    assert rc == 0 and out == [f"{fresh}: removed 1 entries unused for over 0 day(s)"] and not old.exists()


def test_an_existing_folder_holding_other_files_is_used_but_never_marked(tmp_path, monkeypatch, capsys):
    project = tmp_path / "myproject"
    project.mkdir(mode=0o700)
    (project / "notes.txt").write_text("mine")
    monkeypatch.setenv("FLEETBENCH_CACHE", str(project))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    made = entry("dataset")
    assert made.is_dir() and not (project / ".fleetbench-cache").exists()
    assert prune_cli(capsys)[0] == 2 and made.is_dir() and (project / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("holds", [[], ["peaks.json", "tensorrt/"], ["engines/", "weights/"]])
def test_a_folder_holding_only_what_the_cache_writes_is_marked_on_first_use(tmp_path, monkeypatch, holds):
    folder = tmp_path / "c"   # empty, or what the GEMM probe, TensorRT or an older fleetbench left there
    folder.mkdir()
    for name in holds:
        (folder / name).mkdir() if name.endswith("/") else (folder / name).write_text("{}")
    monkeypatch.setenv("FLEETBENCH_CACHE", str(folder))
    entry("reference")
    assert (folder / ".fleetbench-cache").is_file()


def test_in_a_marked_folder_only_provable_entries_go(fresh, tmp_path, capsys):
    real = entry("engines")
    data, sha = b"checkpoint bytes", hashlib.sha256(b"checkpoint bytes").hexdigest()
    from fleetbench.agent.models import materialise_weights
    weights = materialise_weights(data, sha, ".safetensors")
    aged(weights)
    leftover = fresh / "engines" / ".tmp-0123abcd-k2j_9xq1"
    leftover.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"outside")
    planted = {
        "dataset/my-image.png": b"\x89PNG user",                      # a file, not an entry folder
        "engines/notes.txt": b"user notes",
        f"engines/{'b' * 32}/data.bin": b"no manifest",               # entry-shaped, no manifest
        f"engines/{'c' * 32}/manifest.json": json.dumps({"kind": "engines", "key": "d" * 32}).encode(),
        f"onnx/{'e' * 32}/manifest.json": json.dumps({"kind": "engines", "key": "e" * 32}).encode(),
        f"weights/{'f' * 64}.pt": b"not the bytes its name says",      # sha256-named, wrong content
        "weights/model.ckpt": b"user checkpoint",
        "engines/.tmp-notes": b"user dotfile",
    }
    for rel, blob in planted.items():
        (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
        (fresh / rel).write_bytes(blob)
    (fresh / "engines" / ("9" * 32)).symlink_to(outside, target_is_directory=True)
    aged(leftover, *fresh.rglob("*"))
    keep = {k: v for k, v in tree(fresh).items() if not k.startswith((real.relative_to(fresh).as_posix(),
                                                                        "weights/" + weights.name,
                                                                        "engines/.tmp-0123abcd"))}
    rc, out, _ = prune_cli(capsys)
    assert rc == 0 and out == [f"{fresh}: removed 3 entries unused for over 0 day(s)"]
    assert not real.exists() and not weights.exists() and not leftover.exists()
    assert tree(fresh) == keep and (outside / "keep.bin").read_bytes() == b"outside"


def test_an_older_cache_is_refused_until_adopted_then_pruned(fresh, capsys):
    old = entry("predictions")
    (fresh / ".fleetbench-cache").unlink()   # as an older fleetbench left it: no marker
    (fresh / "peaks.json").write_text("{}")
    rc, _, err = prune_cli(capsys)
    assert rc == 2 and len(err) == 1 and "no .fleetbench-cache marker" in err[0] and old.is_dir()
    rc, out, _ = prune_cli(capsys, "--adopt")
    assert rc == 0 and out == [f"{fresh}: removed 1 entries unused for over 0 day(s)"] and not old.exists()
    assert (fresh / ".fleetbench-cache").is_file() and (fresh / "peaks.json").read_text() == "{}"


def test_adopt_refuses_a_folder_holding_anything_a_cache_does_not(tmp_path, monkeypatch, capsys):
    project = tmp_path / "myproject"
    (project / "dataset").mkdir(parents=True)
    (project / "train.py").write_text("print('mine')\n")
    before = tree(project)
    monkeypatch.setenv("FLEETBENCH_CACHE", str(project))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc, _, err = prune_cli(capsys, "--adopt")
    assert rc == 2 and err == [f"coordinator: {project}: holds 'train.py', which no fleetbench cache holds; not "
                               "adopted, nothing removed"]
    assert tree(project) == before


def test_a_missing_cache_folder_prunes_nothing_and_makes_nothing(fresh, capsys):
    rc, out, _ = prune_cli(capsys)
    assert rc == 0 and out == [f"{fresh}: removed 0 entries unused for over 0 day(s)"] and not fresh.exists()


def test_the_agents_own_prune_command_refuses_the_same_way(tmp_path, monkeypatch, capsys):
    from fleetbench.agent.cli import main as agent_main
    project = tmp_path / "p"
    project.mkdir()
    (project / "engines").mkdir()
    monkeypatch.setenv("FLEETBENCH_CACHE", str(project))
    assert agent_main(["cache", "prune", "--older-than", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"agent: {project}: not a fleetbench cache folder")
