"""The fleet on hosts with a network between them: network namespaces on one bridge (tests/fleet_hosts.py),
nodes started by deploy/start-node.sh as the deploy guide says, the coordinator on a host of its own.

One fleet (head, w1, coord) serves the module; the tests run in file order and the later ones add a host
(w2, from another checkout) and cut w1's cable.
"""
import os
import re
import select
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.fleet_hosts import other_checkout

pytestmark = pytest.mark.slow
MEASURE = {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}
DIGITS = {"name": "digits", "source": "timm:test_resnet", "num_classes": 10, "input_size": [3, 32, 32]}


def write_sweep(path: Path, **over) -> Path:
    spec = {"name": path.stem, "models": [DIGITS], "dataset": {"kind": "digits", "limit": 32},
            "backends": ["null"], "batch_sizes": [1], "measure": MEASURE, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM results ORDER BY batch_size")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def test_each_host_has_its_own_address_cpu_home_and_only_the_fleet_network(host_fleet):
    hosts = host_fleet.hosts
    assert set(hosts) == {"head", "w1", "coord"}
    assert len({h.ip for h in hosts.values()}) == 3 and all(h.ip.startswith("10.213.") for h in hosts.values())
    for h in hosts.values():
        env = host_fleet.run(h.name, "sh", "-c", "echo $HOME; ip -4 -o addr show; ip route; "
                             "grep Cpus_allowed_list /proc/self/status; env", timeout=30).stdout
        home, addrs, cpus = env.splitlines()[0], re.findall(r"inet (\S+)/", env), re.findall(r"Cpus_allowed_list:\s*(\S+)", env)
        assert home == str(host_fleet.root / h.name / "home")
        assert addrs == ["127.0.0.1", h.ip]                       # its own address, nothing of the machine's
        assert "default" not in env                                # no route out of the fleet's bridge
        assert cpus == [h.cpu]                                     # one CPU
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env      # (=0 would keep a worker from joining)
    for cg in host_fleet.cgroups("w1"):                            # where the machine allows cgroups
        if (cg / "cpu.cfs_quota_us").exists():
            assert (cg / "cpu.cfs_quota_us").read_text().strip() == "100000"
        if (cg / "cpuset.cpus").exists():
            assert (cg / "cpuset.cpus").read_text().strip() == hosts["w1"].cpu
    reach = host_fleet.run("w1", "python", "-c", f"import socket; socket.create_connection(('{hosts['head'].ip}', 6379), 5)",
                           timeout=30)
    assert reach.returncode == 0, reach.stderr


def test_a_coordinator_on_a_host_that_is_no_node_refuses_at_once_naming_where_to_run(host_fleet, tmp_path):
    """The coordinator host has the token file but no RAY_AUTH_MODE: the token is used (no auth error); the
    run is refused before any job is planned, in one line that says where to run it."""
    sweep = write_sweep(host_fleet.root / "coord" / "offnode.yaml")
    t = time.monotonic()
    done = host_fleet.run("coord", "coordinator", "run", sweep, "--db", host_fleet.root / "coord" / "r.duckdb",
                          "--address", host_fleet.head_address, timeout=120)
    took = time.monotonic() - t
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"coordinator: --address {host_fleet.head_address}: this machine is not a node")
    assert f"ssh {host_fleet.hosts['head'].ip}" in last
    assert "uthentication" not in done.stderr and "planned" not in done.stdout
    # a guard against the old silent wait (400 s until killed), not a speed goal: ~3 s on a quiet machine,
    # more on a loaded one where the coordinator's host has one CPU
    assert took < 60, f"refused after {took:.1f} s"
    client = host_fleet.run("coord", "coordinator", "run", sweep, "--address",
                            f"ray://{host_fleet.hosts['head'].ip}:10001", timeout=60)
    assert client.returncode == 1 and "cannot run over Ray Client" in client.stderr


def test_a_node_from_another_checkout_gets_unsupported_rows_naming_the_difference(host_fleet, tmp_path):
    venv = other_checkout(host_fleet.root / "other")
    host_fleet.add("w2", venv=str(venv))
    try:
        sweep = write_sweep(host_fleet.root / "head" / "skew.yaml")
        db = host_fleet.root / "head" / "skew.duckdb"
        done = host_fleet.run("head", "coordinator", "run", sweep, "--db", db, "--address", host_fleet.head_address,
                              "--no-progress", timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        warned = [line for line in done.stderr.splitlines() if "node w2 differs" in line]
        assert len(warned) == 1 and "fleetbench-code" in warned[0], done.stderr[-3000:]
        got = rows(db)
        assert sorted(r["hostname"] for r in got) == ["head", "w1", "w2"]
        by_status = sorted((r["status"], r["error"] or "") for r in got)
        assert len(by_status) == 3
        assert [s for s, _ in by_status] == ["ok", "ok", "unsupported"], by_status
        reason = by_status[-1][1]
        assert reason.startswith("node w2 differs from the coordinator: fleetbench-code ") and "ray" not in reason
    finally:
        host_fleet.stop_node("w2")


def test_a_slow_lossy_link_gives_the_same_rows(host_fleet):
    """100 ms delay and 1% loss on w1's link (tc netem), where the kernel has netem."""
    add = host_fleet.run("w1", "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "100ms", "loss", "1%",
                         timeout=30)
    if add.returncode != 0:
        pytest.skip(f"no netem in this kernel ('tc qdisc add ... netem': {add.stderr.strip()[:200]}): a slow, lossy "
                    "link cannot be made here")
    try:
        sweep = write_sweep(host_fleet.root / "head" / "slow.yaml", batch_sizes=[1, 2], targets=["node:w1"])
        db = host_fleet.root / "head" / "slow.duckdb"
        done = host_fleet.run("head", "coordinator", "run", sweep, "--db", db, "--address", host_fleet.head_address,
                              "--no-progress", timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [(r["hostname"], r["status"]) for r in rows(db)] == [("w1", "ok"), ("w1", "ok")]
    finally:
        host_fleet.run("w1", "tc", "qdisc", "del", "dev", "eth0", "root", timeout=30)


def test_a_cut_cable_mid_sweep_fails_that_hosts_jobs_and_resume_runs_exactly_those(host_fleet):
    measure = {**MEASURE, "min_duration_s": 5, "max_duration_s": 6}
    sweep = write_sweep(host_fleet.root / "head" / "cut.yaml", batch_sizes=[1, 2, 3], measure=measure,
                        targets=["node:w1"])
    db = host_fleet.root / "head" / "cut.duckdb"
    run = ["coordinator", "run", sweep, "--db", db, "--address", host_fleet.head_address]
    proc = host_fleet.popen("head", *run)
    seen, deadline = "", time.monotonic() + 400
    try:
        while "[1/3] w1:" not in seen and proc.poll() is None and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        assert "[1/3] w1:" in seen and " ok " in seen, seen[-3000:]
        time.sleep(3)     # the next job (it waited for w1's slot) has begun: it loads, then measures for 5 s
        host_fleet.link("w1", up=False)
        out, err = proc.communicate(timeout=300)
    except BaseException:
        os.killpg(proc.pid, 9)
        raise
    finally:
        host_fleet.link("w1", up=True)
    assert proc.returncode == 1, (seen + err)[-3000:]                   # failed rows
    first = rows(db)
    assert len(first) == 3 and len({r["job_id"] for r in first}) == 3
    assert [r["status"] for r in first] == ["ok", "failed", "failed"], first
    errors = [(r["stage"], r["error"]) for r in first[1:]]
    assert all("w1" in e for _, e in errors), errors
    assert errors[0][0] is not None, errors                      # the job in flight when the cable was cut
    # w1 is back on the network, but the cluster declared its node dead: restart it as a user would
    host_fleet.stop_node("w1")
    host_fleet._script("start", "w1")
    again = host_fleet.run("head", *run, "--resume", "--no-progress", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 to run" in again.stdout, again.stdout[-2000:]
    after = rows(db)
    assert [r["status"] for r in after] == ["ok"] * 3
    assert after[0]["started_at"] == first[0]["started_at"]    # the row stored before the cut is kept


def test_the_head_restarted_mid_sweep_ends_the_run_with_the_resume_command_and_loses_nothing(host_fleet):
    """Ray alone would retry the lost GCS for 60 s and then end the coordinator without a word."""
    measure = {**MEASURE, "min_duration_s": 2, "max_duration_s": 3}
    sweep = write_sweep(host_fleet.root / "head" / "restart.yaml", batch_sizes=[1, 2, 3], measure=measure,
                        targets=["node:w1"])
    db = host_fleet.root / "head" / "restart.duckdb"
    run = ["coordinator", "run", sweep, "--db", db, "--address", host_fleet.head_address]
    proc = host_fleet.popen("head", *run)
    seen, deadline = "", time.monotonic() + 400
    try:
        while "[1/3] w1:" not in seen and proc.poll() is None and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        assert "[1/3] w1:" in seen, seen[-3000:]
        host_fleet.stop_node("head")
        _, err = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, 9)
        raise
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith(
        f"coordinator: the cluster's head ({host_fleet.head_address}) does not answer"), (seen + err)[-3000:]
    assert last.endswith(f"run the missing jobs with: coordinator run {sweep} --db {db} "
                         f"--address {host_fleet.head_address} --resume"), last
    stored = [r for r in rows(db) if r["status"] == "ok"]
    assert 1 <= len(stored) < 3
    # w1's node belongs to the old cluster: stop it first (`ray start --head` refuses an address that any
    # process on the machine still names as its GCS), then the head, then w1
    host_fleet.stop_node("w1")
    host_fleet._script("start", "head")
    host_fleet._script("start", "w1")
    again = host_fleet.run("head", *run, "--resume", "--no-progress", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{3 - len(stored)} to run" in again.stdout, again.stdout[-2000:]
    after = rows(db)
    assert [r["status"] for r in after] == ["ok"] * 3 and len({r["run_id"] for r in after}) == 1
    assert {r["job_id"]: r["started_at"] for r in stored}.items() <= {r["job_id"]: r["started_at"] for r in after}.items()


def leftovers(name: str, root: Path) -> list[str]:
    """What a fleet called `name` left on the machine: namespaces, cgroups, its folder, processes using it."""
    found = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith(f"{name}-")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/fleetbench-{name}") if p.is_dir()]
    found += [str(root)] if root.exists() else []
    ps = subprocess.run(["pgrep", "-af", f"{root}/"], capture_output=True, text=True).stdout
    return found + [line for line in ps.splitlines() if "pgrep" not in line]


def test_an_up_that_fails_half_way_removes_what_it_made(tmp_path):
    """The script's own trap: a head whose `ray` fails leaves no namespace, cgroup or folder behind."""
    from tests.fleet_hosts import SCRIPT, unavailable
    if unavailable():
        pytest.skip(f"a fleet of hosts as network namespaces {unavailable()}")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ray").write_text("#!/bin/sh\necho 'ray: refusing on purpose' >&2\nexit 1\n")
    (tmp_path / "bin" / "ray").chmod(0o755)
    env = {**os.environ, "FLEET_NAME": "fbfail"}
    done = subprocess.run([SCRIPT, "up", "--venv", tmp_path], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "host head: start-node.sh failed" in done.stderr and "refusing on purpose" in done.stderr
    assert leftovers("fbfail", Path("/tmp/fbfail")) == []


def test_down_removes_every_namespace_cgroup_folder_and_process_of_the_fleet(host_fleet):
    """Last in the module: the fixture's own teardown, checked (it runs again after this, finding nothing)."""
    assert leftovers(host_fleet.name, host_fleet.root)             # the fleet is there, nodes running
    host_fleet.down()
    assert leftovers(host_fleet.name, host_fleet.root) == []
