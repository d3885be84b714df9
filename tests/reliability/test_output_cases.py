"""Hostile cases for what commands write and read: no output lands on the results database, a device, a
FIFO, a socket, a directory, a symlink or an existing file (without --force); a failing stdout or disk is
one line and a non-zero exit; bad SQL input and un-exportable columns are one line; numbers given to
`best` and `compare` are finite and in range. Every refusal: exit 2, one line, the target untouched."""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleetbench.coordinator.cli import main
from fleetbench.coordinator.store import Store
from fleetbench.shared.job import Result
from tests.conftest import ROOT


def put_run(store: Store, sweep: str = "demo", p50: float = 2.0) -> str:
    run = store.start_run(sweep, "{}", None)
    store.put_result(Result(job_id="j1", sweep=sweep, model="m", compression="none", backend="pytorch",
                            device="cpu", batch_size=1, node_id="n", hostname="h", hw_kind="cpu",
                            status="ok", run_id=run, latency_p50_ms=p50, f1_macro=0.9))
    store.finish_run(run, "done")
    return run


@pytest.fixture(scope="module")
def made_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("made") / "R.duckdb"
    with Store(path) as store:
        put_run(store)
    return path


@pytest.fixture
def db(made_db, tmp_path) -> Path:
    """A results database of one run (copied: making one takes about a second)."""
    path = tmp_path / "R.duckdb"
    shutil.copyfile(made_db, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *args) -> tuple[int, str, list[str]]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err.splitlines()


def proc(*args, **kw) -> subprocess.CompletedProcess:
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=ROOT,
                          timeout=120, **kw)


# -- item: never onto the results database -------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["query", "SELECT 1 AS x", "--output", "{db}"],
    ["query", "SELECT 1 AS x", "--output", "{db}", "--force"],
    ["report", "--html", "{db}", "--force"],
    ["report", "--md", "{db}"],
])
def test_no_command_writes_onto_its_own_database(db, capsys, args):
    before = digest(db)
    rc, out, err = run_cli(capsys, *[a.format(db=db) for a in args], "--db", db)
    flag = next(a for a in args if a.startswith("--") and a not in ("--force",))
    assert rc == 2 and err == [f"coordinator: {flag} {db}: is the results database (--db); refused, nothing was "
                               "written"]
    assert digest(db) == before and out == ""


def test_a_hard_link_or_a_relative_spelling_of_the_database_is_the_database(db, capsys, monkeypatch):
    link = db.parent / "alias.duckdb"
    os.link(db, link)
    before = digest(db)
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--output", link, "--force")
    assert rc == 2 and err == [f"coordinator: --output {link}: is the results database (--db); refused, nothing "
                               "was written"]
    monkeypatch.chdir(db.parent)
    rc, _, err = run_cli(capsys, "report", "--db", db, "--html", "./sub/../R.duckdb", "--force")
    assert rc == 2 and err == ["coordinator: --html sub/../R.duckdb: is the results database (--db); refused, "
                               "nothing was written"]
    assert digest(db) == before


@pytest.mark.parametrize("side", ["writer", "wal", "wants-read"])
def test_the_databases_side_files_are_not_outputs(db, capsys, side):
    target = Path(f"{db}.{side}")
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--output", target)
    assert rc == 2 and err == [f"coordinator: --output {target}: is the results database (--db); refused, "
                               "nothing was written"]
    assert not target.exists()


# -- item: never onto what is not a regular file ---------------------------------------------------------

def test_a_device_stays_a_device(db, capsys):
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--output", "/dev/full", "--force")
    assert rc == 2 and err == ["coordinator: --output /dev/full: is a character device, not a regular file; "
                               "refused, nothing was written"]
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)


@pytest.mark.parametrize("cmd", [["report", "--md"], ["query", "SELECT 1 AS x", "--output"]])
def test_dev_stdout_a_symlink_is_refused_and_stays_a_symlink(db, capsys, cmd):
    before = os.readlink("/dev/stdout")
    rc, out, err = run_cli(capsys, *cmd, "/dev/stdout", "--db", db, "--force")
    assert rc == 2 and err == [f"coordinator: {cmd[-1]} /dev/stdout: is a symbolic link, not a regular file; "
                               "refused, nothing was written"]
    assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == before and out == ""


def test_a_symlink_to_a_regular_file_is_refused_and_the_target_kept(db, capsys, tmp_path):
    target = tmp_path / "mine.csv"
    target.write_text("precious\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--format", "csv", "-o", link, "--force")
    assert rc == 2 and err == [f"coordinator: --output {link}: is a symbolic link, not a regular file; refused, "
                               "nothing was written"]
    assert link.is_symlink() and target.read_text() == "precious\n"


def test_a_fifo_is_refused_without_blocking_on_it(db, capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, _, err = run_cli(capsys, "report", "--db", db, "--html", fifo, "--force")
    assert rc == 2 and err == [f"coordinator: --html {fifo}: is a FIFO, not a regular file; refused, nothing was "
                               "written"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_socket_is_refused_and_kept(db, capsys, tmp_path):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--output", path)
    assert rc == 2 and err == [f"coordinator: --output {path}: is a socket, not a regular file; refused, nothing "
                               "was written"]
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("cmd", [["query", "SELECT 1 AS x", "--output"], ["report", "--html"], ["report", "--md"]])
def test_a_directory_is_one_line_not_a_traceback(db, capsys, tmp_path, cmd):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    rc, _, err = run_cli(capsys, *cmd, folder, "--db", db)
    assert rc == 2 and err == [f"coordinator: {cmd[-1]} {folder}: is a directory, not a regular file; refused, "
                               "nothing was written"]
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


# -- item: never over an existing file unless --force -----------------------------------------------------

def test_an_existing_file_is_kept_unless_force(db, capsys, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: mine\n")
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--format", "csv", "--output", sweep)
    assert rc == 2 and err == [f"coordinator: --output {sweep}: exists; give --force to replace it"]
    assert sweep.read_text() == "name: mine\n"
    rc, _, _ = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--format", "csv", "--output", sweep, "--force")
    assert rc == 0 and sweep.read_text() == "x\n1\n"


def test_the_sql_file_being_read_is_never_the_output_even_with_force(db, capsys, tmp_path):
    sql = tmp_path / "q.sql"
    sql.write_text("SELECT 1 AS x")
    rc, _, err = run_cli(capsys, "query", "-f", sql, "--db", db, "--format", "csv", "-o", sql, "--force")
    assert rc == 2 and err == [f"coordinator: --output {sql}: is the file -f reads; refused, nothing was written"]
    assert sql.read_text() == "SELECT 1 AS x"


def test_report_refuses_an_existing_md_before_writing_the_html(db, capsys, tmp_path):
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    md.write_text("mine")
    rc, _, err = run_cli(capsys, "report", "--db", db, "--html", html, "--md", md, "--quiet")
    assert rc == 2 and err == [f"coordinator: --md {md}: exists; give --force to replace it"]
    assert md.read_text() == "mine" and not html.exists()


def test_one_file_for_two_outputs_is_refused(db, capsys, tmp_path):
    same = tmp_path / "r.txt"
    rc, _, err = run_cli(capsys, "report", "--db", db, "--html", same, "--md", same)
    assert rc == 2 and err == [f"coordinator: --md {same}: the same file as --html; give each output its own file"]
    assert not same.exists()


def test_output_in_a_missing_folder_is_one_line(db, capsys, tmp_path):
    target = tmp_path / "nope" / "o.csv"
    rc, _, err = run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--output", target)
    assert rc == 2 and err == [f"coordinator: --output {target}: no such directory {target.parent}"]


def test_a_new_output_gets_the_umask_mode_and_a_forced_one_keeps_its_own(db, capsys, tmp_path):
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    old.write_text("x")
    old.chmod(0o640)
    umask = os.umask(0o022)
    try:
        assert run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--format", "csv", "-o", new)[0] == 0
        assert run_cli(capsys, "query", "SELECT 1 AS x", "--db", db, "--format", "csv", "-o", old, "--force")[0] == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o644 and stat.S_IMODE(old.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.duckdb", "new.csv", "old.csv"]


def test_a_write_that_fails_for_space_keeps_the_old_file_and_leaves_no_temp(db, tmp_path):
    target = tmp_path / "rows.csv"
    target.write_text("old rows\n")
    before = digest(target)

    def small_files():   # EFBIG past 4 KiB, as a full disk fails a write (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    r = proc("query", "SELECT range AS n FROM range(20000)", "--db", db, "--format", "csv", "-o", target, "--force",
             preexec_fn=small_files)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert r.stderr.decode().splitlines() == [f"coordinator: {target}: cannot write (File too large); nothing was "
                                              "changed"]
    assert digest(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["R.duckdb", "rows.csv"]


# -- a standard output that cannot be written -------------------------------------------------------------

def test_stdout_on_a_full_device_is_one_line_and_exit_1(db):
    with open("/dev/full", "w") as full:
        r = proc("runs", "--db", db, stdout=full)
    assert r.returncode == 1 and r.stderr.decode().splitlines() == [
        "coordinator: cannot write the output: No space left on device"]


@pytest.mark.parametrize("cmd", [["query", "SELECT * FROM results"], ["best"], ["report"]])
def test_every_reading_command_on_a_full_stdout_is_one_line(db, capsys, monkeypatch, cmd):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        rc = main([*cmd, "--db", str(db)])
    assert rc == 1 and capsys.readouterr().err.splitlines() == [
        "coordinator: cannot write the output: No space left on device"]


def test_stdout_whose_reader_left_is_one_line_and_exit_1(db, capsys, monkeypatch):
    read, write = os.pipe()
    os.close(read)   # the reader is gone before the first byte
    with os.fdopen(write, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        rc = main(["query", "SELECT range AS n FROM range(20000)", "--db", str(db), "--format", "csv"])
        assert rc == 1 and capsys.readouterr().err.splitlines() == [
            "coordinator: cannot write the output: Broken pipe"]


# -- what query reads --------------------------------------------------------------------------------------

def test_a_binary_sql_file_is_one_line(db, capsys, tmp_path):
    blob = tmp_path / "q.sql"
    blob.write_bytes(b"SELECT 1\xff\xfe")
    rc, _, err = run_cli(capsys, "query", "-f", blob, "--db", db)
    assert rc == 2 and err == [f"coordinator: {blob}: not UTF-8 text (byte 0xff at offset 8); give the SQL as UTF-8"]
    blob.write_bytes(b"SELECT 1\x00\x00")
    rc, _, err = run_cli(capsys, "query", "-f", blob, "--db", db)
    assert rc == 2 and err == [f"coordinator: {blob}: holds a NUL byte at offset 8: a binary file, not SQL"]


def test_invalid_utf8_on_stdin_is_one_line(db, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"SELECT '\xc3(' AS x")))
    rc, _, err = run_cli(capsys, "query", "--db", db)
    assert rc == 2 and err == ["coordinator: stdin: not UTF-8 text (byte 0xc3 at offset 8); give the SQL as UTF-8"]


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_duplicate_column_names_are_refused_where_a_format_keys_by_name(db, capsys, tmp_path, fmt):
    out = tmp_path / f"o.{fmt}"
    rc, stdout, err = run_cli(capsys, "query", "SELECT 1 AS a, 2 AS a, 3 AS b", "--db", db, "--format", fmt,
                              "--output", out)
    assert rc == 2 and err == [f"coordinator: --format {fmt}: column name(s) 'a' given more than once; give each "
                               "column its own name (AS ...)"]
    assert not out.exists()


def test_a_hugeint_parquet_cannot_hold_is_one_line_and_a_uuid_is_exported(db, capsys, tmp_path):
    import pyarrow.parquet as pq
    out = tmp_path / "o.parquet"
    rc, _, err = run_cli(capsys, "query", "SELECT 170141183460469231731687303715884105727::HUGEINT AS h", "--db", db,
                         "--format", "parquet", "--output", out)
    assert rc == 2 and len(err) == 1 and err[0].startswith("coordinator: --format parquet: column 'h' cannot be "
                                                           "written to Parquet (")
    assert err[0].endswith("convert it in the SQL, e.g. CAST(h AS VARCHAR)") and not out.exists()
    rc, _, _ = run_cli(capsys, "query", "SELECT '6f1e1a0e-4b3f-4c59-9f34-6a4f0c2b9d11'::UUID AS u, 7::HUGEINT AS h",
                       "--db", db, "--format", "parquet", "--output", out)
    table = pq.read_table(out).to_pylist()
    assert rc == 0 and len(table) == 1 and str(table[0]["u"]).replace("-", "").endswith("6a4f0c2b9d11") \
        and table[0]["h"] == 7


def test_json_of_a_uuid_is_its_text(db, capsys):
    rc, out, _ = run_cli(capsys, "query", "SELECT '6f1e1a0e-4b3f-4c59-9f34-6a4f0c2b9d11'::UUID AS u", "--db", db,
                         "--format", "json")
    assert rc == 0 and json.loads(out) == [{"u": "6f1e1a0e-4b3f-4c59-9f34-6a4f0c2b9d11"}]


# -- numbers given to best and compare; runs and jobs that do not exist ----------------------------------

@pytest.mark.parametrize("args, line", [
    (["best", "--max-f1-drop", "nan"], "coordinator best: argument --max-f1-drop: 'nan' is not a finite number "
                                       "(e.g. 0.1 or 10%)"),
    (["best", "--max-f1-drop", "2"], "coordinator best: argument --max-f1-drop: '2': a quality drop is at most 1 "
                                     "(100%)"),
    (["best", "--max-size-mb", "-1"], "coordinator best: argument --max-size-mb: '-1': expected a finite size above "
                                      "0 MB"),
    (["best", "--max-size-mb", "inf"], "coordinator best: argument --max-size-mb: 'inf': expected a finite size "
                                       "above 0 MB"),
    (["best", "--batch-size", "-3"], "coordinator best: argument --batch-size: '-3': a batch size is 1 or more"),
    (["best", "--batch-size", "0"], "coordinator best: argument --batch-size: '0': a batch size is 1 or more"),
    (["compare", "A", "B", "--fail-above", "nan"], "coordinator compare: argument --fail-above: 'nan' is not a "
                                                   "finite number (e.g. 0.1 or 10%)"),
    (["compare", "A", "B", "--fail-above", "inf%"], "coordinator compare: argument --fail-above: 'inf%' is not a "
                                                    "finite number (e.g. 0.1 or 10%)"),
    (["compare", "A", "B", "--fail-above=-5%"], "coordinator compare: argument --fail-above: '-5%' must not be "
                                                "negative"),
    (["compare", "A", "B", "--max-f1-drop=-inf"], "coordinator compare: argument --max-f1-drop: '-inf' is not a "
                                                     "finite number (e.g. 0.1 or 10%)"),
    (["report", "--max-f1-drop", "NaN%"], "coordinator report: argument --max-f1-drop: 'NaN%' is not a finite number "
                                          "(e.g. 0.1 or 10%)"),
])
def test_numbers_are_finite_and_in_range(db, capsys, args, line):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--db", str(db)])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and err == [f"{line} (see: {' '.join(line.split(':')[0].split())} --help)"]


def test_a_run_compared_with_itself_is_refused(db, capsys):
    with Store(db) as store:
        run = store.latest_run("demo")
    rc, out, err = run_cli(capsys, "compare", run, run, "--db", db)
    assert rc == 2 and out == "" and err == [f"coordinator: compare: RUN_A and RUN_B are the same run ({run}); give "
                                             "two different runs"]


def test_logs_of_an_unknown_job_or_run_exits_2(db, capsys):
    with Store(db) as store:
        run = store.latest_run("demo")
    rc, out, err = run_cli(capsys, "logs", "last", "--job", "NOSUCH", "--db", db)
    assert rc == 2 and out == "" and err == [
        f"coordinator: {db}: run {run}: no job 'NOSUCH' (its jobs: coordinator query \"SELECT job_id, model, status "
        f"FROM results WHERE run_id = '{run}'\" --db {db})"]
    rc, out, err = run_cli(capsys, "logs", "last", "--job", "j", "--db", db)   # a known job with no log
    assert rc == 0 and out.strip() == f"run {run}: no logs stored for job j"
    rc, _, err = run_cli(capsys, "logs", "nosuchrun", "--db", db)
    assert rc == 2 and err == [f"coordinator: {db}: run 'nosuchrun': no such run"]


# -- the coordinator's own database and the command it prints --------------------------------------------

def test_a_second_coordinator_on_one_db_is_refused_before_it_reaches_ray(db, capsys, tmp_path):
    import ray
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nmodels: [{name: m, source: 'timm:test_resnet', num_classes: 10, "
                     "input_size: [3, 16, 16]}]\ndataset: {kind: synthetic, limit: 8}\nbackends: ['null']\n")
    before = digest(db)
    from fleetbench.coordinator.store import writer_lock
    with writer_lock(db):   # what the first coordinator holds from before Ray starts to its end
        rc, out, err = run_cli(capsys, "run", sweep, "--db", db, "--address", "127.0.0.1:9", "--no-progress")
    assert rc == 2 and out == "" and err == [f"coordinator: --db {db}: results database is busy: another "
                                             "coordinator is writing it; try again when it ends"]
    assert not ray.is_initialized() and digest(db) == before   # no cluster joined (port 9 has none), no write


@pytest.mark.parametrize("name", ["my runs/r.duckdb", "it's $HOME/`x`.duckdb", "-rf;echo hi.duckdb"])
def test_the_printed_resume_command_survives_a_shell(tmp_path, name):
    from fleetbench.coordinator.run import resume_command
    sweep, db = str(tmp_path / "a b" / "sweep one.yaml"), str(tmp_path / name)
    command = resume_command([sweep], db, "ray://head:10001")
    argv = subprocess.run(["bash", "-c", 'shift; printf "%s\\n" "$@"', "_", *["x"]], capture_output=True)
    assert argv.returncode == 0
    words = subprocess.run(["bash", "-c", f'set -- {command}; printf "%s\\n" "$@"'], capture_output=True,
                           text=True).stdout.splitlines()
    assert words == ["coordinator", "run", sweep, "--db", db, "--address", "ray://head:10001", "--resume"]
