"""Hostile results databases and local inputs: refused before the fleet starts, in one line, unchanged.

`coordinator run` is called in this process with `cluster.connect` replaced by a function that
fails the test: every refusal here must come before Ray would start.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator import cluster
from fleetbench.coordinator.cli import main
from fleetbench.coordinator.store import SCHEMA_VERSION, Store, open_read_only
from fleetbench.shared.errors import StoreError

from .test_sweep_cases import GOOD

REPO = Path(__file__).resolve().parents[2]

# The schema written by fleetbench before versioned files (no `meta` table): what such a file holds.
V1_DDL = [
    """CREATE TABLE sweeps (run_id VARCHAR PRIMARY KEY, sweep VARCHAR, started_at TIMESTAMP,
       finished_at TIMESTAMP, spec JSON, address VARCHAR, status VARCHAR)""",
    """CREATE TABLE nodes (run_id VARCHAR, node_id VARCHAR, node_key VARCHAR, hostname VARCHAR,
       kinds VARCHAR[], cpu_model VARCHAR, cores INTEGER, logical_cpus INTEGER, isa_flags JSON,
       ram_mb DOUBLE, gpus JSON, driver VARCHAR, openvino_devices JSON, labels JSON, versions JSON,
       backends JSON, PRIMARY KEY (run_id, node_id))""",
    """CREATE TABLE results (job_id VARCHAR, sweep VARCHAR, model VARCHAR, compression VARCHAR,
       backend VARCHAR, device VARCHAR, batch_size BIGINT, node_id VARCHAR, hostname VARCHAR,
       hw_kind VARCHAR, status VARCHAR, stage VARCHAR, error VARCHAR, run_id VARCHAR, dtype VARCHAR,
       threads BIGINT, provider VARCHAR, latency_mean_ms DOUBLE, latency_p50_ms DOUBLE,
       latency_p90_ms DOUBLE, latency_p99_ms DOUBLE, latency_std_ms DOUBLE, latency_min_ms DOUBLE,
       first_ms DOUBLE, latency_device_p50_ms DOUBLE, iterations BIGINT, measure_s DOUBLE,
       throughput_ips DOUBLE, ram_peak_mb DOUBLE, ram_delta_mb DOUBLE, vram_peak_mb DOUBLE,
       vram_source VARCHAR, size_mb DOUBLE, size_compressed_mb DOUBLE, sparsity DOUBLE, accuracy DOUBLE,
       precision_macro DOUBLE, recall_macro DOUBLE, f1_macro DOUBLE, eval_samples BIGINT,
       export_s DOUBLE, build_s DOUBLE, cache_hit BOOLEAN, wall_s DOUBLE, notes VARCHAR,
       started_at TIMESTAMP, finished_at TIMESTAMP, PRIMARY KEY (run_id, job_id))""",
    "INSERT INTO sweeps (run_id, sweep, started_at, status) VALUES ('r1', 'hostile', TIMESTAMP '2026-01-02 03:04:05', 'done')",
    "INSERT INTO results (run_id, job_id, sweep, model, status, latency_p50_ms) "
    "VALUES ('r1', 'j1', 'hostile', 'm', 'ok', 1.5), ('r1', 'j2', 'hostile', 'm', 'failed', NULL)",
]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray was started for a sweep that is refused")
    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.fixture
def sweep(tmp_path) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(GOOD)
    return p


def cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln.removeprefix("coordinator: ") for ln in err.splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_db(path: Path) -> Path:
    con = duckdb.connect(str(path))
    for stmt in V1_DDL:
        con.execute(stmt)
    con.close()
    return path


def foreign_db(path: Path) -> Path:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE results (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO results VALUES (1, 'theirs')")
    con.close()
    return path


def tables_and_columns(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT table_name, column_name FROM duckdb_columns() ORDER BY ALL").fetchall()
    finally:
        con.close()


# -- the path ------------------------------------------------------------------------------------

def test_db_is_a_directory(tmp_path, sweep, capsys):
    rc, lines = cli(capsys, "run", sweep, "--db", tmp_path)
    assert rc == 2 and lines == [f"--db {tmp_path}: is a directory, not a results database"]


def test_db_parent_missing(tmp_path, sweep, capsys):
    db = tmp_path / "nope" / "r.duckdb"
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: folder {db.parent} does not exist"]
    assert not db.parent.exists()


def test_db_parent_is_a_file(tmp_path, sweep, capsys):
    (tmp_path / "file").write_text("x")
    db = tmp_path / "file" / "r.duckdb"
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: {db.parent} is not a folder"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_db_not_writable(tmp_path, sweep, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    rc, lines = cli(capsys, "run", sweep, "--db", ro / "r.duckdb")
    assert rc == 2 and lines == [f"--db {ro / 'r.duckdb'}: cannot create a file in {ro} (not writable by this user)"]


# -- what the file holds -------------------------------------------------------------------------

def test_sqlite_file_refused_unchanged(tmp_path, sweep, capsys):
    import sqlite3
    db = tmp_path / "r.duckdb"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = digest(db)
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: is a SQLite database, not a fleetbench results database; refused"]
    assert digest(db) == before


def test_random_bytes_refused_unchanged(tmp_path, sweep, capsys):
    db = tmp_path / "r.duckdb"
    db.write_bytes(os.urandom(4096))
    before = digest(db)
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: not a DuckDB database (unrecognised content); refused"]
    assert digest(db) == before


def test_empty_file_refused(tmp_path, sweep, capsys):
    db = tmp_path / "r.duckdb"
    db.touch()
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: empty file, not a DuckDB database; remove it or name another --db"]
    assert db.stat().st_size == 0


def test_foreign_duckdb_refused_unchanged(tmp_path, sweep, capsys):
    db = foreign_db(tmp_path / "r.duckdb")
    before, cols = digest(db), tables_and_columns(db)
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: a DuckDB database of another application (tables: results); "
                                 "refused, nothing was changed"]
    assert digest(db) == before and tables_and_columns(db) == cols


def test_foreign_duckdb_refused_by_the_store_itself(tmp_path):
    db = foreign_db(tmp_path / "r.duckdb")
    cols = tables_and_columns(db)
    with pytest.raises(StoreError, match="another application"):
        Store(db)
    assert tables_and_columns(db) == cols    # not a column added, no `nodes` table created


def test_foreign_meta_table_refused(tmp_path, sweep, capsys):
    db = tmp_path / "r.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('application', 'someone-else')")
    con.close()
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: a DuckDB database of another application (its meta table is not "
                                 "fleetbench's); refused, nothing was changed"]


def newer_db(path: Path) -> Path:
    with Store(path):
        pass
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.execute("UPDATE meta SET value = '9.0' WHERE key = 'fleetbench_version'")
    con.close()
    return path


def test_newer_version_refused(tmp_path, sweep, capsys):
    db = newer_db(tmp_path / "r.duckdb")
    before = digest(db)
    rc, lines = cli(capsys, "run", sweep, "--db", db)
    assert rc == 2 and lines == [f"--db {db}: written by a newer fleetbench (schema 99, fleetbench 9.0); "
                                 f"this one reads schema {SCHEMA_VERSION}: upgrade fleetbench to use it"]
    assert digest(db) == before


def test_validate_agrees_with_run_on_the_db(tmp_path, sweep, capsys):
    db = foreign_db(tmp_path / "r.duckdb")
    rc_run, run_lines = cli(capsys, "run", sweep, "--db", db)
    rc_val, val_lines = cli(capsys, "validate", sweep, "--db", db)
    assert rc_run == rc_val == 2 and run_lines == val_lines


# -- versions and migration ----------------------------------------------------------------------

def test_new_file_records_its_version(tmp_path):
    db = tmp_path / "r.duckdb"
    with Store(db):
        pass
    meta = dict(duckdb.connect(str(db), read_only=True).execute("SELECT * FROM meta").fetchall())
    assert meta["application"] == "fleetbench" and meta["schema_version"] == str(SCHEMA_VERSION)
    from importlib.metadata import version
    assert meta["fleetbench_version"] == version("fleetbench")


def test_old_file_migrates_in_place_keeping_rows(tmp_path, sweep, capsys):
    db = old_db(tmp_path / "r.duckdb")
    rc, _ = cli(capsys, "validate", sweep, "--db", db)
    assert rc == 0                                    # an older file is accepted by `run`: it migrates
    with Store(db) as store:
        assert store.migrated_from == 1
        assert store.done_job_ids("r1") == {"j1"}
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert con.execute("SELECT job_id, status, latency_p50_ms, top1_agreement FROM results ORDER BY job_id"
                       ).fetchall() == [("j1", "ok", 1.5, None), ("j2", "failed", None, None)]
    con.close()


def test_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    from fleetbench.coordinator import store as store_mod
    db = old_db(tmp_path / "r.duckdb")
    cols = tables_and_columns(db)
    monkeypatch.setattr(store_mod, "COMPARISON_SQL", "CREATE OR REPLACE VIEW comparison AS SELECT nope FROM x")
    with pytest.raises(StoreError, match="cannot create the schema"):
        Store(db)
    assert tables_and_columns(db) == cols             # no meta table, no added column: one transaction


def test_query_on_old_file_names_the_upgrade_command(tmp_path, capsys):
    db = old_db(tmp_path / "r.duckdb")
    rc, lines = cli(capsys, "query", "SELECT count(*) FROM results", "--db", db)
    assert rc == 2 and lines == [f"{db}: written by an older fleetbench (schema 1); upgrade it (one transaction, "
                                 f"rows kept) with: coordinator migrate --db {db}"]
    rc, _ = cli(capsys, "migrate", "--db", db)
    assert rc == 0
    rc, _ = cli(capsys, "query", "SELECT count(*) FROM results", "--db", db)
    assert rc == 0


def test_migrate_command(tmp_path, capsys):
    db = old_db(tmp_path / "r.duckdb")
    assert main(["migrate", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"{db}: schema {SCHEMA_VERSION} (migrated from schema 1)"
    assert main(["migrate", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"{db}: schema {SCHEMA_VERSION} (already)"
    assert main(["query", "SELECT count(*) AS n FROM results", "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]


def test_migrate_missing_file(tmp_path, capsys):
    rc, lines = cli(capsys, "migrate", "--db", tmp_path / "none.duckdb")
    assert rc == 2 and lines == [f"--db {tmp_path / 'none.duckdb'}: no such results database"]


# -- read-only opens ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,expect", [
    ("missing", "{db}: no such results database"),
    ("directory", "{db}: is a directory, not a results database"),
    ("sqlite", "{db}: is a SQLite database, not a fleetbench results database; refused"),
    ("random", "{db}: not a DuckDB database (unrecognised content); refused"),
    ("foreign", "{db}: a DuckDB database of another application (tables: results); refused, nothing was changed"),
    ("newer", "{db}: written by a newer fleetbench (schema 99, fleetbench 9.0); this one reads schema "
              f"{SCHEMA_VERSION}: upgrade fleetbench to use it"),
    ("empty-duckdb", "{db}: an empty DuckDB database, no fleetbench results in it"),
])
def test_query_refuses_what_is_not_ours(tmp_path, capsys, kind, expect):
    import sqlite3
    db = tmp_path / "r.duckdb"
    if kind == "directory":
        db.mkdir()
    elif kind == "sqlite":
        sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    elif kind == "random":
        db.write_bytes(os.urandom(1000))
    elif kind == "foreign":
        foreign_db(db)
    elif kind == "newer":
        newer_db(db)
    elif kind == "empty-duckdb":
        duckdb.connect(str(db)).close()
    before = digest(db) if db.is_file() else None
    rc, lines = cli(capsys, "query", "SELECT 1", "--db", db)
    assert rc == 2 and lines == [expect.format(db=db)]
    assert (digest(db) if db.is_file() else None) == before


def test_no_connection_loads_extensions(tmp_path):
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        got = store._fetch("SELECT current_setting('autoinstall_known_extensions'), "
                           "current_setting('autoload_known_extensions')")[1]
        assert got == [(False, False)]
    con = open_read_only(db)
    try:
        assert con.execute("SELECT current_setting('autoinstall_known_extensions'), "
                           "current_setting('autoload_known_extensions'), current_setting('enable_external_access'), "
                           "current_setting('allow_community_extensions'), current_setting('lock_configuration')"
                           ).fetchall() == [(False, False, False, False, True)]
    finally:
        con.close()


# -- resume, local files, cache -------------------------------------------------------------------

def test_resume_with_nothing_to_resume(tmp_path, sweep, capsys):
    db = tmp_path / "r.duckdb"
    rc, lines = cli(capsys, "run", sweep, "--db", db, "--resume")
    assert rc == 2 and lines == [f"--resume: {db} has no earlier run of sweep 'hostile'; nothing to resume "
                                 "(run without --resume to start one)"]
    assert not db.exists()


def test_resume_of_another_sweeps_file(tmp_path, sweep, capsys):
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        store.start_run("someone-else", "{}", None)
    rc, lines = cli(capsys, "run", sweep, "--db", db, "--resume")
    assert rc == 2 and lines == [f"--resume: {db} has no earlier run of sweep 'hostile'; nothing to resume "
                                 "(run without --resume to start one)"]


def test_cache_is_a_file(tmp_path, sweep, capsys, monkeypatch):
    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    rc, lines = cli(capsys, "run", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2 and lines == [f"FLEETBENCH_CACHE={tmp_path / 'cache'}: {tmp_path / 'cache'} is not a folder"]


def test_empty_cache_variable_means_the_default(tmp_path, monkeypatch):
    from fleetbench.agent import models
    from fleetbench.agent.backends import tensorrt
    from fleetbench.agent.backends.onnxruntime import cuda as ort_cuda
    monkeypatch.setenv("FLEETBENCH_CACHE", "")
    monkeypatch.chdir(tmp_path)
    home = Path.home() / ".cache" / "fleetbench"
    assert models.weights_cache_dir() == home / "weights"     # not ./weights in the working directory
    assert tensorrt.cache_root().parent == home and ort_cuda.ort_trt_cache().parent == home


def _images(root: Path, classes: int) -> Path:
    from PIL import Image
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (c * 20, i, 0)).save(root / f"c{c:02d}" / f"{i}.png")
    return root


def test_image_folder_with_more_classes_than_the_model(tmp_path, capsys):
    _images(tmp_path / "imgs", 12)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("{kind: synthetic, limit: 8}", f"{{kind: imagefolder, path: {tmp_path / 'imgs'}}}"))
    rc, lines = cli(capsys, "run", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2 and lines == [f"{sweep}: dataset.path: {tmp_path / 'imgs'}: 12 class folders but "
                                 "models[0].num_classes is 10 (labels 10..11 would be outside the model's classes)"]


def test_agent_fails_a_job_whose_labels_exceed_num_classes(tmp_path, quick_measure):
    """On a node the folder is read by the agent: a failed row at `load`, not silently wrong scores."""
    from fleetbench.agent.runner import run_job
    from fleetbench.shared.job import Job
    from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, ModelSpec
    _images(tmp_path / "imgs", 3)
    job = Job(sweep="t", model=ModelSpec(name="m", source="timm:test_resnet", num_classes=2, input_size=(3, 32, 32)),
              dataset=DatasetSpec(kind="imagefolder", path=str(tmp_path / "imgs"), calibration=1),
              compression=CompressionSpec(method="none"), backend="pytorch", device="cpu", batch_size=1,
              measure=quick_measure, node_key="n")
    row = run_job(job)
    assert (row.status, row.stage) == ("failed", "load")
    assert row.error == (f"{tmp_path / 'imgs'}: 3 class folders but num_classes is 2: labels 2..2 are outside "
                         "the model's classes")


def test_checkpoint_is_a_directory(tmp_path, capsys):
    (tmp_path / "ckpt.safetensors").mkdir()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("    num_classes: 10\n", f"    checkpoint: {tmp_path / 'ckpt.safetensors'}\n"
                                                          "    num_classes: 10\n"))
    rc, lines = cli(capsys, "validate", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2 and lines == [f"{sweep}: models[0].checkpoint: {tmp_path / 'ckpt.safetensors'}: no such file"]


def test_onnx_external_data_outside_its_folder(tmp_path, capsys):
    """`validate` refuses what `run` refuses: ONNX external data must stay inside the model's folder."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    ext = w.external_data.add()
    ext.key, ext.value = "location", "../secret.bin"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    model = tmp_path / "m" / "model.onnx"
    model.write_bytes(helper.make_model(graph).SerializeToString())
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("source: timm:test_resnet", f"source: onnx:{model}"))
    for cmd in ("validate", "run"):
        rc, lines = cli(capsys, cmd, sweep, "--db", tmp_path / "r.duckdb")
        assert rc == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"{sweep}: models[0].source: {model}: cannot read ONNX model (ValidationError: ")
        assert "points outside the directory" in lines[0]


def test_validate_without_address_says_targets_are_unchecked(tmp_path, sweep, capsys):
    assert main(["validate", str(sweep), "--db", str(tmp_path / "r.duckdb")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "targets: not checked against a fleet (give --address to check them against a running cluster)"


def test_bad_db_refused_fast_without_ray(tmp_path, sweep):
    """The figure for docs/reliability.md: `coordinator run` to the refusal of a bad database, in a fresh process."""
    db = foreign_db(tmp_path / "r.duckdb")
    code = ("import sys, time; t = time.perf_counter(); from fleetbench.coordinator.cli import main; "
            f"rc = main(['run', {str(sweep)!r}, '--db', {str(db)!r}]); "
            "print(rc, 'ray' in sys.modules, round(time.perf_counter() - t, 3))")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    rc, ray_imported, inner = p.stdout.split()
    assert (rc, ray_imported) == ("2", "False"), p.stderr
    assert p.stderr.strip().count("\n") == 0 and "another application" in p.stderr
    print(f"bad --db refused in {float(inner):.2f} s in-process, {wall:.2f} s with interpreter start; no Ray")


def test_small_file_size_limit_refused_before_ray(tmp_path, sweep):
    """`ulimit -f` too small for Ray: one line and exit 2 at once, not a traceback after Ray's timeout."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    code = ("import sys; from fleetbench.coordinator.cli import main; "
            f"rc = main(['run', {str(sweep)!r}, '--db', {str(tmp_path / 'r.duckdb')!r}]); print(rc, 'ray' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, preexec_fn=limit)
    assert p.stdout.split() == ["2", "False"], p.stderr
    assert p.stderr == ("coordinator: the file-size limit (ulimit -f) is 1024 KiB: Ray, the engine caches and the "
                        "results database need files of at least 1024 MiB; raise it (ulimit -f unlimited)\n")
