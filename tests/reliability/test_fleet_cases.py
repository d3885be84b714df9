"""deploy/start-node.sh for real: a test fleet of two nodes on this one machine (--local, own ports
and temp folders), one node stopped alone, the head stopped by SIGTERM, private token and temp
folders; and `coordinator cache prune` on every node of a cluster. Every Ray process started here is
stopped here, by its node's temp folder (never `ray stop`)."""
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "deploy" / "start-node.sh"



def ray_bin(folder: Path) -> str:
    """The `ray` executable of this interpreter's Ray (a wrapper when the venv has none)."""
    import ray
    found = Path(ray.__file__).parents[4] / "bin" / "ray"
    if found.is_file():
        return str(found)
    folder.mkdir(exist_ok=True)
    path = folder / "ray"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; from ray.scripts.scripts import main; "
                    f"sys.argv[0] = \"ray\"; sys.exit(main())' \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def free_base() -> int:
    """A port base whose BASE..BASE+999 range nobody listens on."""
    used = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    for base in range(31000, 60000, 1000):
        if not used & set(range(base, base + 1000)):
            return base
    raise RuntimeError("no free port range")


def under(folder: Path) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"{folder}/" in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def short(tmp_path):
    """A short folder for Ray's temp files (its socket paths must stay under 108 bytes)."""
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def env(tmp_path, short):
    home = tmp_path / "home"
    home.mkdir()
    e = {**os.environ, "HOME": str(home), "RAY_BIN": ray_bin(tmp_path / "bin"), "FLEET_TEMP_ROOT": str(short / "ray"),
         "FLEETBENCH_CACHE": str(tmp_path / "cache"), "RAY_AUTH_TOKEN": secrets.token_hex(32),
         "FLEET_STOP_GRACE_S": "3"}
    e.pop("RAY_ADDRESS", None)
    e.pop("RAY_AUTH_TOKEN_PATH", None)
    yield e
    for name in ("w1", "h1"):   # whatever a failed test left running
        subprocess.run([str(SCRIPT), "stop", "--name", name], env=e, capture_output=True, timeout=120)


def node(env, *args, timeout=300):
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def test_two_nodes_on_one_host_then_stop_exactly_one(env, short):
    gcs, head_base, worker_base = free_base(), None, None
    head_base = gcs + 100
    worker_base = gcs + 500
    h = node(env, "head", "cpu", "--name", "h1", "--local", "--port", gcs, "--ports", head_base)
    assert h.returncode == 0, h.stderr[-3000:]
    w = node(env, "cpu", "--address", f"127.0.0.1:{gcs}", "--name", "w1", "--local", "--ports", worker_base)
    assert w.returncode == 0, w.stderr[-3000:]
    temp = short / "ray"
    assert stat.S_IMODE(temp.stat().st_mode) == 0o700          # nobody else reaches the nodes' files
    assert under(temp / "h1") and under(temp / "w1")
    seen = subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", "nodes", "--address",
                           f"127.0.0.1:{gcs}", "--format", "csv"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**env, "RAY_AUTH_MODE": "token"})
    assert seen.returncode == 0, seen.stderr[-3000:]
    assert "h1" in seen.stdout and "w1" in seen.stdout

    w_pids, h_pids = under(temp / "w1"), under(temp / "h1")
    stop = node(env, "stop", "--name", "w1")
    assert stop.returncode == 0 and "node w1 stopped" in stop.stderr
    assert under(temp / "w1") == []
    assert all(psutil.pid_exists(p) for p in h_pids)               # the head is untouched
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in w_pids)
    stop = node(env, "stop", "--name", "h1")
    assert stop.returncode == 0 and under(temp / "h1") == []


def test_a_blocking_head_stops_on_sigterm_and_its_token_is_private(env, short):
    env = {**env}
    del env["RAY_AUTH_TOKEN"]                  # the head generates one, in this test's HOME
    base = free_base()
    proc = subprocess.Popen([str(SCRIPT), "head", "cpu", "--name", "h1", "--local", "--port", str(base),
                             "--ports", str(base + 100), "--block"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    temp = short / "ray" / "h1"
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(under(temp)) < 3:
        time.sleep(1)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    pids = under(temp)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 143
    assert under(temp) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_an_nvidia_node_without_a_gpu_is_refused_unless_forced(env):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    r = node(env, "nvidia", "--address", "h:6379", "--name", "g1", "--num-gpus", "1", "--dry-run")
    assert r.returncode == 1
    assert r.stderr.startswith("start-node.sh: error: kind nvidia: --num-gpus 1 but this machine shows 0 GPU(s)")
    forced = node(env, "nvidia", "--address", "h:6379", "--name", "g1", "--num-gpus", "1", "--force", "--dry-run")
    assert forced.returncode == 0 and "--num-gpus 1" in forced.stdout


def test_every_port_moves_with_ports_and_the_temp_folder_is_per_node(env):
    r = node(env, "head", "cpu", "--name", "h1", "--ports", "40000", "--port", "39999", "--dry-run")
    assert r.returncode == 0, r.stderr
    for flag, port in (("--port", 39999), ("--node-manager-port", 40000), ("--object-manager-port", 40001),
                       ("--runtime-env-agent-port", 40002), ("--dashboard-agent-grpc-port", 40003),
                       ("--metrics-export-port", 40004), ("--dashboard-agent-listen-port", 40005),
                       ("--ray-client-server-port", 40006), ("--min-worker-port", 40100),
                       ("--max-worker-port", 40999)):
        assert f" {flag} {port} " in r.stdout + " ", flag
    assert f"--temp-dir {env['FLEET_TEMP_ROOT']}/h1 " in r.stdout
    moved = node({**env, "FLEET_RAY_CLIENT_SERVER_PORT": "11001"}, "head", "--name", "h1", "--dry-run")
    assert "--ray-client-server-port 11001" in moved.stdout
    assert node(env, "stop").returncode == 2


def test_cache_prune_runs_on_every_node_of_a_cluster(tmp_path):
    """`coordinator cache prune --address`: one task per node, each pruning its own cache."""
    from ray.cluster_utils import Cluster

    import fleetbench.coordinator  # noqa: F401
    cache = tmp_path / "cache"
    old = cache / "engines" / ("0" * 32)
    old.mkdir(parents=True)
    (cache / ".fleetbench-cache").write_text("")   # a cache folder fleetbench made, and one entry of it
    (old / "manifest.json").write_text(json.dumps({"kind": "engines", "key": "0" * 32}))
    long_ago = time.time() - 90 * 86400
    for p in (old / "manifest.json", old):
        os.utime(p, (long_ago, long_ago))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEETBENCH_CACHE", str(cache))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_ADDRESS", raising=False)
        from ray._private.authentication_test_utils import reset_auth_token_state
        reset_auth_token_state()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            r = subprocess.run([sys.executable, "-m", "fleetbench.coordinator.cli", "cache", "prune",
                                "--older-than", "30", "--address", cluster.address], cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
        finally:
            cluster.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2                                   # one line per node
    assert sorted(int(line.split("removed ")[1].split()[0]) for line in lines) == [0, 1]
    assert not old.exists()
