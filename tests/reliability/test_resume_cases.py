"""`--resume` continues a run only with the sweep it was started with: a changed file is refused in one
line naming what changed, before Ray starts, and the database is left as it was.

The stored spec is the one `run` writes (`coordinator.spec.spec_json` of what `preflight` checked);
`cluster.connect` is replaced here: a refusal must come before it, an accepted resume reaches it."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator import cluster
from fleetbench.coordinator.cli import main
from fleetbench.coordinator.run import preflight
from fleetbench.coordinator.spec import spec_json
from fleetbench.coordinator.store import Store, new_run_id

from .test_db_cases import cli, digest
from .test_sweep_cases import GOOD


class Reached(Exception):
    """`run` got past every check and would start Ray now."""


@pytest.fixture(autouse=True)
def stop_at_ray(monkeypatch):
    def reached(*a, **k):
        raise Reached()
    monkeypatch.setattr(cluster, "connect", reached)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A results database as `Store` creates it, copied by each test (creating one costs most of a test)."""
    db = tmp_path_factory.mktemp("resume") / "empty.duckdb"
    with Store(db):
        pass
    return db


@pytest.fixture
def db(empty_db, tmp_path) -> Path:
    shutil.copy(empty_db, tmp_path / "r.duckdb")
    return tmp_path / "r.duckdb"


def started(db: Path, sweep: Path, spec: str | None = None) -> str:
    """A run of `sweep` with the spec `coordinator run` stores for it (`Store.start_run`'s row), interrupted
    before any row."""
    checked = preflight(str(sweep))
    run = new_run_id()
    con = duckdb.connect(str(db))
    try:
        con.execute("INSERT INTO sweeps (run_id, sweep, started_at, spec, status) VALUES (?, ?, now(), ?, "
                    "'interrupted')", [run, checked.sweep.name,
                                       spec if spec is not None else spec_json(checked.sweep, checked.hashes)])
    finally:
        con.close()
    return run


def refused(capsys, sweep: Path, db: Path) -> str:
    before = digest(db)
    rc, lines = cli(capsys, "run", sweep, "--db", db, "--resume", "--no-progress")
    assert rc == 2 and len(lines) == 1 and digest(db) == before
    return lines[0]


def test_changed_batch_size_is_refused_naming_it(tmp_path, capsys, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    run = started(db, sweep)
    write(sweep, GOOD.replace("batch_sizes: [1]", "batch_sizes: [1, 2]"))
    assert refused(capsys, sweep, db) == (
        f"--resume: {sweep} is not the sweep run {run} was started with: batch_sizes: [1] -> [1, 2]; "
        "a run holds one spec: run without --resume to start a new run")


def test_unchanged_sweep_resumes(tmp_path, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)
    with pytest.raises(Reached):
        main(["run", str(sweep), "--db", str(db), "--resume"])


def test_same_sweep_spelled_differently_resumes(tmp_path, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)
    write(sweep, "# the same sweep, written another way\n" + GOOD
          .replace("compression: [none]", "compression:\n  - {method: none}")
          .replace("batch_sizes: [1]", "batch_sizes:\n  - 1")
          .replace("targets: [all]", "targets: [all]\nscenarios: [latency]   # the default, now given"))
    with pytest.raises(Reached):
        main(["run", str(sweep), "--db", str(db), "--resume"])


def test_changed_checkpoint_bytes_are_refused(tmp_path, capsys, db):
    (tmp_path / "w.bin").write_bytes(b"weights one")
    sweep = write(tmp_path / "sweep.yaml", GOOD.replace("    num_classes: 10\n", "    num_classes: 10\n    checkpoint: w.bin\n"))
    run = started(db, sweep)
    (tmp_path / "w.bin").write_bytes(b"weights two")
    line = refused(capsys, sweep, db)
    assert line.startswith(f"--resume: {sweep} is not the sweep run {run} was started with: file_sha256.m: \"")
    assert line.count(" -> ") == 1


def test_many_changes_show_three_and_count_the_rest(tmp_path, capsys, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)
    write(sweep, GOOD.replace("num_classes: 10", "num_classes: 12").replace("min_iters: 3", "min_iters: 4")
          .replace("limit: 8", "limit: 16").replace("timeout_s: 60", "timeout_s: 61"))
    line = refused(capsys, sweep, db)
    assert "models[0].num_classes: 10 -> 12; dataset.limit: 8 -> 16; measure.min_iters: 3 -> 4 (and 1 more);" in line


def test_added_model_is_refused(tmp_path, capsys, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)
    write(sweep, GOOD.replace("models:\n", "models:\n  - {name: m2, source: 'timm:test_resnet', num_classes: 10}\n"))
    assert "models: [{" in refused(capsys, sweep, db)


def test_a_field_added_since_takes_its_default(tmp_path, db):
    """A run stored by an older fleetbench has no key for a field added since: its default is what it ran."""
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    checked = preflight(str(sweep))
    spec = json.loads(spec_json(checked.sweep, checked.hashes))
    del spec["scenarios"], spec["measure"]["repeat_mode"]
    started(db, sweep, json.dumps(spec))
    with pytest.raises(Reached):
        main(["run", str(sweep), "--db", str(db), "--resume"])


@pytest.mark.parametrize("stored", ["{}", "null", '{"name": "hostile", "models": "x"}'])
def test_a_run_without_a_readable_spec_is_not_resumed(tmp_path, capsys, stored, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    run = started(db, sweep, stored)
    assert refused(capsys, sweep, db) == (
        f"--resume: run {run} has no spec this version can read, so it cannot be shown to be the same sweep; "
        "run without --resume to start a new run")


def test_the_latest_run_is_the_one_compared(tmp_path, capsys, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)                                     # older run: this file
    write(sweep, GOOD.replace("min_iters: 3", "min_iters: 5"))
    latest = started(db, sweep)                            # latest run: min_iters 5
    write(sweep, GOOD)
    assert refused(capsys, sweep, db).startswith(f"--resume: {sweep} is not the sweep run {latest} was started "
                                                 "with: measure.min_iters: 5 -> 3;")


def test_changed_value_text_is_shown_escaped(tmp_path, capsys, db):
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    started(db, sweep)
    write(sweep, GOOD.replace("targets: [all]", 'targets: ["node:a b"]'))
    assert 'targets[0]: "all" -> "node:a b"' in refused(capsys, sweep, db)


def test_the_resume_hint_is_shell_quoted(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "my sweeps"
    folder.mkdir()
    sweep, db = write(folder / "it's.yaml", GOOD), folder / "r 1.duckdb"

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cluster, "connect", interrupted)
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 130
    assert lines[-1].endswith(f"run the missing jobs with: coordinator run '{folder}/it'\"'\"'s.yaml' "
                              f"--db '{folder}/r 1.duckdb' --resume")


def test_stored_spec_is_the_checked_sweep_with_its_file_hashes(tmp_path, db):
    (tmp_path / "w.bin").write_bytes(b"weights")
    sweep = write(tmp_path / "sweep.yaml", GOOD.replace("    num_classes: 10\n", "    num_classes: 10\n    checkpoint: w.bin\n"))
    run = started(db, sweep)
    con = duckdb.connect(str(db), read_only=True)
    spec = json.loads(con.execute("SELECT spec FROM sweeps WHERE run_id = ?", [run]).fetchone()[0])
    con.close()
    assert spec["batch_sizes"] == [1] and spec["models"][0]["checkpoint"] == "w.bin"
    assert spec["file_sha256"] == {"m": hashlib.sha256(b"weights").hexdigest()}
