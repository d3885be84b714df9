"""The fleet on real Ray: several nodes on 127.0.0.1 (ray.cluster_utils.Cluster), each labelled as a
kind, token authentication on, joined with `--address`; real DuckDB files.

One cluster (n-cpu, n-intel) serves the module; the node-loss test adds and removes its own node.
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import DEMO_CHECKPOINT, ROOT

pytestmark = pytest.mark.slow
MEASURE = {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}
DIGITS = {"name": "digits", "source": "timm:test_resnet", "num_classes": 10, "input_size": [3, 32, 32]}


def host_kinds(label: str) -> list[str]:
    """The kinds the probe gives a node labelled `label` on THIS machine (an Intel CPU adds `intel`)."""
    from fleetbench.agent.probe import cpu_info, detect_kinds
    return detect_kinds(cpu_info()[0], [], label)


def node_args(kind: str, name: str, host: str | None = None) -> dict:
    """A benchmark node; `host` names its machine (fleet.host), so nodes on this one machine can act as
    separate machines (without it, they share this machine's machine-id)."""
    labels = {"fleet.kind": kind, "fleet.node": name, **({"fleet.host": host} if host else {})}
    return {"resources": {"bench_slot": 1}, "labels": labels, "num_cpus": 1}


@dataclass
class Fleet:
    cluster: object
    cache: Path

    @property
    def address(self) -> str:
        return self.cluster.address


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two benchmark nodes on loopback, with token auth; workers inherit this environment."""
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    import fleetbench.coordinator  # noqa: F401  (sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is used)
    cache = tmp_path_factory.mktemp("fleet-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("FLEETBENCH_CACHE", str(cache))
        mp.setenv("FLEETBENCH_NULL_MS", "1")
        reset_auth_token_state()
        from ray._raylet import AuthenticationMode, get_authentication_mode
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        cluster = Cluster(initialize_head=True, head_node_args=node_args("cpu", "n-cpu", "machine-a"))
        try:
            cluster.add_node(**node_args("intel", "n-intel", "machine-b"))
            cluster.wait_for_nodes()
            yield Fleet(cluster, cache)
        finally:
            import ray
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    reset_auth_token_state()


def write_sweep(path: Path, **over) -> Path:
    spec = {"name": path.stem, "models": [DIGITS], "dataset": {"kind": "digits", "limit": 32},
            "backends": ["null"], "batch_sizes": [1], "measure": MEASURE, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db: Path, sql: str = "SELECT * FROM results") -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def node_ids(fleet: Fleet) -> dict[str, str]:
    """fleet.node label -> Ray node id, for the live nodes."""
    out = {}
    for n in fleet.cluster.list_all_nodes():
        out[n._ray_params.labels["fleet.node"]] = n.node_id
    return out


def assert_one_at_a_time_per_node(results: list[dict]) -> None:
    by_node: dict[str, list] = {}
    for r in results:
        if r["started_at"] and r["finished_at"]:
            by_node.setdefault(r["node_id"], []).append((r["started_at"], r["finished_at"]))
    for spans in by_node.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"two jobs overlapped on one node: {spans}"


def overlaps(a: list[dict], b: list[dict]) -> bool:
    return any(x["started_at"] < y["finished_at"] and y["started_at"] < x["finished_at"] for x in a for y in b)


def coordinator_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kw)


def test_one_sweep_lands_rows_from_every_node_and_a_second_reuses_engines(fleet, tmp_path):
    """--address joins the cluster; every node benchmarks, in parallel, one job at a time per node;
    a checkpoint that exists only beside the sweep file reaches the agents through the object store;
    a second identical job on a node skips its export (engine cache)."""
    from fleetbench.coordinator.run import run_sweep
    shutil.copy(DEMO_CHECKPOINT, tmp_path / "only-here.safetensors")   # not under any worker's cwd
    model = {**DIGITS, "checkpoint": "only-here.safetensors"}
    sweep = write_sweep(tmp_path / "fleet.yaml", models=[model], backends=["null", "torchscript"])
    db = tmp_path / "r.duckdb"
    counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False)
    assert counts["ok"] == 4, counts

    ids = node_ids(fleet)
    got = rows(db)
    assert len(got) == 4 and len({r["job_id"] for r in got}) == 4
    assert {r["node_id"] for r in got} == {ids["n-cpu"], ids["n-intel"]}
    assert {r["hw_kind"] for r in got if r["node_id"] == ids["n-intel"]} == {"intel"}
    cpu_kind = "intel" if "intel" in host_kinds("cpu") else "cpu"   # the CPU node of an Intel host is intel
    assert {r["hw_kind"] for r in got if r["node_id"] == ids["n-cpu"]} == {cpu_kind}
    ts = [r for r in got if r["backend"] == "torchscript"]
    assert all(r["top1_agreement"] >= 0.99 and r["accuracy"] >= 0.9 for r in ts)   # the real weights
    assert all(r["cache_hit"] is False and r["export_s"] > 0 for r in ts)
    assert all(r["cache_hit"] is None for r in got if r["backend"] == "null")
    assert_one_at_a_time_per_node(got)
    assert overlaps([r for r in got if r["node_id"] == ids["n-cpu"]],
                    [r for r in got if r["node_id"] == ids["n-intel"]]), "nodes did not work in parallel"
    sha = [p.name for p in (fleet.cache / "weights").iterdir()]
    assert len(sha) == 1 and sha[0].endswith(".safetensors")

    nodes = rows(db, "SELECT node_id, node_key, kinds, labels FROM nodes ORDER BY node_key")
    assert [(n["node_key"], n["kinds"]) for n in nodes] == [("n-cpu", host_kinds("cpu")),
                                                             ("n-intel", host_kinds("intel"))]
    assert [n["node_id"] for n in nodes] == [ids["n-cpu"], ids["n-intel"]]
    assert json.loads(nodes[1]["labels"]) == {"fleet.kind": "intel", "fleet.node": "n-intel",
                                              "fleet.host": "machine-b"}

    # the same sweep again, on the intel node only: same job ids there, engines from the cache
    again = write_sweep(tmp_path / "fleet.yaml", models=[model], backends=["torchscript"], targets=["node:n-intel"])
    counts = run_sweep(str(again), db=str(db), address=fleet.address, progress=False)
    assert counts["ok"] == 1, counts
    runs = [r["run_id"] for r in rows(db, "SELECT run_id FROM sweeps ORDER BY started_at")]
    second = rows(db, f"SELECT * FROM results WHERE run_id = '{runs[1]}'")
    assert {r["node_id"] for r in second} == {ids["n-intel"]}
    [hit] = second
    assert hit["job_id"] == next(r["job_id"] for r in ts if r["node_id"] == ids["n-intel"])
    assert hit["cache_hit"] is True and hit["export_s"] == 0 and hit["build_s"] > 0
    assert hit["top1_agreement"] >= 0.99 and hit["size_mb"] == next(r["size_mb"] for r in ts)
    assert len(rows(db, f"SELECT * FROM nodes WHERE run_id = '{runs[1]}'")) == 1   # one row per node per run


def test_nodes_command_and_a_selector_matching_nothing(fleet, tmp_path):
    listing = coordinator_cli("nodes", "--address", fleet.address, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    fleet_json = json.loads(listing.stdout)
    assert sorted((n["node_key"], n["kinds"]) for n in fleet_json) == [
        ("n-cpu", host_kinds("cpu")), ("n-intel", host_kinds("intel"))]

    db = tmp_path / "never.duckdb"
    sweep = write_sweep(tmp_path / "nowhere.yaml", targets=["all", "kind:nvidia"])
    env = {**os.environ, "RAY_ADDRESS": fleet.address}   # RAY_ADDRESS works as --address does
    run = coordinator_cli("run", sweep, "--db", db, "--no-progress", env=env)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "targets[1]: 'kind:nvidia' matches no node" in run.stderr
    assert f"n-cpu[{'+'.join(host_kinds('cpu'))}]" in run.stderr and "n-intel[cpu+intel]" in run.stderr
    assert not db.exists(), "nothing may be written before the sweep is valid"
    val = coordinator_cli("validate", sweep, "--address", fleet.address, "--db", db)   # agrees with run
    assert val.returncode == 2 and "targets[1]: 'kind:nvidia' matches no node" in val.stderr, val.stderr
    ok = coordinator_cli("validate", write_sweep(tmp_path / "one.yaml", targets=["node:n-cpu"]),
                         "--address", fleet.address, "--db", db)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1].endswith(": 1 of 2 node(s) selected"), ok.stdout
    assert not db.exists()


def test_nodes_sharing_a_machine_take_turns_and_the_fleet_listing_says_so(fleet, tmp_path):
    """A second node on n-cpu's machine: its jobs and n-cpu's are never timed at the same moment."""
    from fleetbench.coordinator.run import run_sweep
    twin = fleet.cluster.add_node(**node_args("cpu", "n-twin", "machine-a"))
    fleet.cluster.wait_for_nodes()
    try:
        listing = coordinator_cli("nodes", "--address", fleet.address)
        assert listing.returncode == 0, listing.stderr
        line = next(ln for ln in listing.stdout.splitlines() if ln.strip().startswith("n-twin"))
        assert "shared with n-cpu" in line, listing.stdout
        sweep = write_sweep(tmp_path / "twins.yaml", batch_sizes=[1, 2, 3], targets=["node:n-cpu", "node:n-twin"],
                            measure={**MEASURE, "min_duration_s": 0.3})
        db = tmp_path / "r.duckdb"
        counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False)
        assert counts["ok"] == 6, counts
        got = rows(db)
        assert {r["host_id"] for r in got} == {"machine-a"}
        spans = sorted((r["window_start"], r["window_end"]) for r in got)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"two timed windows overlapped on one machine: {spans}"
        assert not any("same host" in (r["validity"] or "") for r in got)
        hosts = rows(db, "SELECT node_key, host_id FROM nodes ORDER BY node_key")
        assert [(h["node_key"], h["host_id"]) for h in hosts] == [("n-cpu", "machine-a"), ("n-twin", "machine-a")]
    finally:
        fleet.cluster.remove_node(twin)


def test_repeat_interleaved_runs_a_nodes_jobs_in_rounds_and_stores_one_row_each(fleet, tmp_path):
    from fleetbench.coordinator.run import run_sweep
    sweep = write_sweep(tmp_path / "rounds.yaml", batch_sizes=[1, 2], targets=["node:n-cpu"],
                        measure={**MEASURE, "repeats": 3})
    db = tmp_path / "r.duckdb"
    counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False, interleaved=True)
    assert counts["ok"] == 2, counts
    got = rows(db)
    assert len(got) == 2 and all(r["repeats"] == 3 and len(r["window_p50s_ms"]) == 3 for r in got)
    samples = rows(db, "SELECT job_id, len(samples_ms) AS n FROM samples")
    assert {s["job_id"]: s["n"] for s in samples} == {r["job_id"]: r["iterations"] for r in got}
    # each row's windows span the whole sweep: the rounds of the two jobs alternated
    a, b = sorted(got, key=lambda r: r["window_start"])
    assert a["window_start"] < b["window_start"] < a["window_end"] < b["window_end"]


def test_a_worker_that_dies_gives_a_failed_row_with_its_stage(fleet, tmp_path):
    from fleetbench.coordinator.run import run_sweep
    models = [{"name": name, "source": f"python:tests.fixtures.faulty_models:{name}", "num_classes": 10,
               "input_size": [3, 16, 16]} for name in ("dies_in_load", "dies_in_measure")]
    sweep = write_sweep(tmp_path / "faulty.yaml", models=models, backends=["pytorch", "null"],
                        targets=["node:n-cpu"])
    db = tmp_path / "r.duckdb"
    counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False)
    assert counts["failed"] == 2 and counts["ok"] == 2, counts
    by = {(r["model"], r["backend"]): r for r in rows(db)}
    for model, stage in (("dies_in_load", "load"), ("dies_in_measure", "measure")):
        r = by[(model, "pytorch")]
        assert (r["status"], r["stage"]) == ("failed", stage), r
        assert r["error"].startswith("worker process died") and "\n" not in r["error"]
        assert by[(model, "null")]["status"] == "ok"      # the node goes on after a dead worker


def test_a_job_that_hangs_is_cancelled_at_its_timeout_and_the_node_goes_on(fleet, tmp_path):
    from fleetbench.coordinator.run import run_sweep
    model = {"name": "hangs", "source": "python:tests.fixtures.faulty_models:hangs_in_load", "num_classes": 10,
             "input_size": [3, 16, 16]}
    sweep = write_sweep(tmp_path / "hang.yaml", models=[model], backends=["pytorch", "null"],
                        targets=["node:n-intel"], timeout_s=10)
    db = tmp_path / "r.duckdb"
    t = time.monotonic()
    counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False)
    assert time.monotonic() - t < 240   # a guard against waiting out the hang, not a speed goal (a loaded CI box is slow)
    by = {r["backend"]: r for r in rows(db)}
    assert (by["pytorch"]["status"], by["pytorch"]["stage"]) == ("failed", "load")
    assert by["pytorch"]["error"] == "timed out after 10 s in stage load"
    assert by["null"]["status"] == "ok" and counts["ok"] == 1


def test_a_node_that_leaves_mid_sweep_fails_only_its_unfinished_jobs(fleet, tmp_path, monkeypatch):
    from fleetbench.coordinator import store as store_mod
    from fleetbench.coordinator.run import run_sweep
    doomed = fleet.cluster.add_node(**node_args("cpu", "n-gone"))
    fleet.cluster.wait_for_nodes()
    removed: list[str] = []
    put = store_mod.Store.put_result

    def put_then_pull_the_plug(self, result):
        put(self, result)
        if result.node_id == doomed.node_id and result.status == "ok" and not removed:
            removed.append(result.job_id)
            fleet.cluster.remove_node(doomed, allow_graceful=False)   # as a machine that crashes

    monkeypatch.setattr(store_mod.Store, "put_result", put_then_pull_the_plug)
    measure = {**MEASURE, "min_duration_s": 0.3}
    sweep = write_sweep(tmp_path / "loss.yaml", batch_sizes=[1, 2, 3, 4, 5], measure=measure,
                        targets=["node:n-gone", "node:n-cpu"])
    db = tmp_path / "r.duckdb"
    t = time.monotonic()
    counts = run_sweep(str(sweep), db=str(db), address=fleet.address, progress=False)
    assert time.monotonic() - t < 300   # likewise a guard, not a speed goal
    got = rows(db)
    assert len(got) == 10 and len({r["job_id"] for r in got}) == 10     # one row per planned job
    gone = [r for r in got if r["node_id"] == doomed.node_id]
    assert len(gone) == 5
    assert [r["status"] for r in gone if r["job_id"] in removed] == ["ok"]   # the completed row is intact
    lost = [r for r in gone if r["job_id"] not in removed]
    assert all(r["status"] == "failed" and "node n-gone left the cluster" in r["error"] for r in lost), lost
    assert all(r["status"] == "ok" for r in got if r["node_id"] != doomed.node_id)
    assert counts["ok"] == 6 and counts["failed"] == 4
    assert_one_at_a_time_per_node(got)


def test_resume_after_the_coordinator_is_killed_runs_only_what_is_missing(fleet, tmp_path, monkeypatch):
    from fleetbench.coordinator.run import run_sweep
    measure = {**MEASURE, "min_duration_s": 0.5}
    sweep = write_sweep(tmp_path / "killed.yaml", batch_sizes=[1, 2, 3, 4, 5, 6], measure=measure)
    db = tmp_path / "r.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "fleetbench.coordinator.cli", "run", str(sweep), "--db", str(db),
                             "--address", fleet.address], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        stored, seen = 0, ""
        deadline = time.monotonic() + 180
        while stored < 3 and time.monotonic() < deadline and proc.poll() is None:
            chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
            seen += chunk
            done = re.findall(r"(\d+)/12", seen)    # the progress bar, updated after each stored row
            stored = max(map(int, done), default=0)
        assert 3 <= stored < 12, seen[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = {r["job_id"]: r for r in rows(db) if r["status"] == "ok"}
    assert len(before) >= 3 and len(before) < 12

    monkeypatch.setenv("RAY_ADDRESS", fleet.address)
    counts = run_sweep(str(sweep), db=str(db), resume=True, progress=False)
    assert counts["ok (resumed)"] == len(before)
    assert counts["ok"] == 12 - len(before), counts
    after = rows(db)
    assert len(after) == 12 and len({r["job_id"] for r in after}) == 12
    assert all(r["status"] == "ok" for r in after)
    for r in after:   # the rows stored before the kill are the same rows, not re-measured
        if r["job_id"] in before:
            assert r["started_at"] == before[r["job_id"]]["started_at"]
    assert len({r["run_id"] for r in after}) == 1
    assert_one_at_a_time_per_node(after)


def _blocks_so_far(db: Path) -> int:
    """race_blocks rows stored so far (0 while the coordinator holds the file)."""
    from fleetbench.coordinator.store import query
    from fleetbench.shared.errors import StoreError
    try:
        return query(db, "SELECT count(*) FROM race_blocks")[1][0][0]
    except StoreError:
        return 0


def test_a_race_on_two_nodes_is_killed_mid_race_and_resumed_to_its_answer(fleet, tmp_path, monkeypatch):
    """search: race on the demo model over both nodes: quality steps, timing rounds, finals; the
    coordinator is killed mid-race and --resume finishes it from the stored blocks, re-running none."""
    from fleetbench.coordinator.report import race_answer
    from fleetbench.coordinator.report.data import connect
    from fleetbench.coordinator.run import run_sweep
    sweep = write_sweep(tmp_path / "race.yaml", models=[{**DIGITS, "checkpoint": str(DEMO_CHECKPOINT)}],
                        dataset={"kind": "digits", "limit": 200}, backends=["onnxruntime", "openvino"],
                        compression=["none", "int8-dynamic"], measure={**MEASURE, "min_duration_s": 0.05},
                        search={"strategy": "race", "block_s": 0.05, "chunk": 100, "min_rounds": 2,
                                "max_rounds": 2, "quality_bound": 0.05})
    db = tmp_path / "r.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "fleetbench.coordinator.cli", "run", str(sweep), "--db", str(db),
                             "--address", fleet.address], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and _blocks_so_far(db) < 5:
            time.sleep(0.5)
        assert proc.poll() is None, "the race ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = {(r["config_id"], r["round"]): r["finished_at"] for r in rows(db, "SELECT * FROM race_blocks")}
    assert len(before) >= 5

    monkeypatch.setenv("RAY_ADDRESS", fleet.address)
    run_sweep(str(sweep), db=str(db), resume=True, progress=False)
    got = rows(db)
    assert len(got) == 8 and len({r["run_id"] for r in got}) == 1      # 2 nodes x 2 backends x 2 compressions
    assert {r["status"] for r in got} <= {"ok", "eliminated", "unsupported"}, [r["error"] for r in got]
    blocks = rows(db, "SELECT * FROM race_blocks")
    for key, finished in before.items():     # what ran before the kill was kept, not run again
        assert [b["finished_at"] for b in blocks if (b["config_id"], b["round"]) == key] == [finished]
    for r in got:
        mine = sorted((b for b in blocks if b["config_id"] == r["job_id"]), key=lambda b: b["round"])
        if r["status"] == "unsupported":
            continue
        assert mine[0]["phase"] == "quality" and json.loads(mine[0]["evidence"])["n"] >= 100
        assert all(b["samples_ms"] for b in mine if b["phase"] != "final")
        if r["status"] == "eliminated":   # its evidence, and the blocks it ran
            assert r["stage"] in ("quality", "speed") and r["error"].startswith(("slower than", "quality outside"))
        else:
            assert mine[-1]["phase"] == "final" and r["latency_p50_ms"] > 0
    by_node = {n: [r for r in got if r["node_id"] == n] for n in {r["node_id"] for r in got}}
    assert len(by_node) == 2 and all(any(r["status"] == "ok" for r in mine) for mine in by_node.values())
    con = connect(db)
    try:
        summary, answer = race_answer.tables(con, got[0]["run_id"])
    finally:
        con.close()
    assert sorted(row[0] for row in summary) == ["n-cpu", "n-intel"]
    raced = {b["config_id"] for b in blocks}
    ids = node_ids(fleet)
    for row in summary:   # raced, out at quality, out at speed, measured in full
        mine = [r for r in by_node[ids[row[0]]] if r["job_id"] in raced]
        assert int(row[1]) == len(mine) and int(row[4]) == sum(r["status"] == "ok" for r in mine)
        assert int(row[2]) + int(row[3]) == sum(r["status"] == "eliminated" for r in mine)
    assert len(answer) == 2 and all(row[3] in row[4] for row in answer)   # the winner heads its tie group
    from fleetbench.coordinator.report.write import report
    report(str(db), md=str(tmp_path / "r.md"), quiet=True)
    md = (tmp_path / "r.md").read_text()
    assert "## Race" in md and "| n-cpu |" in md and "| n-intel |" in md
