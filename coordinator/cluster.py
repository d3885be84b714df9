"""Connecting to Ray (embedded one-node cluster or an existing one) and discovering the fleet.

A benchmark node is a Ray node with the custom resource `bench_slot` (deploy/start-node.sh gives it
1). A node without it (a head started with `start-node.sh head none`) runs no benchmarks and is left
out of the fleet; only when no node has the slot (a plain `ray start` cluster) is every node used,
each job then taking all of its node's CPUs so that benchmarks still run one at a time per node.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fleetbench.shared.errors import ClusterError
from fleetbench.shared.job import NodeProfile

log = logging.getLogger(__name__)
SLOT = "bench_slot"
PROBE_TIMEOUT_S = 180.0   # for all probes together, not per node


def connect(address: Optional[str] = None, dispatch: bool = False) -> str:
    """Join `address` (or RAY_ADDRESS); without either, start the embedded local cluster on 127.0.0.1.

    Token authentication: the embedded cluster turns it on (Ray's default); to join a cluster that
    has it on, this process needs the cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or
    RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token, as `ray start` nodes do: where a token is found and the
    mode is not set, it is set here. `dispatch`: this process will run jobs, so it must be on a node
    of the cluster (a Ray driver streams results through its own node's raylet and object store).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        if dispatch and address.startswith("ray://"):
            raise ClusterError(f"--address {address}: a sweep cannot run over Ray Client (ray://: it cannot stream "
                             "job rows); run the coordinator on a node of the cluster with --address HOST:6379")
        token = _token_mode()
        try:
            ray.init(address=address, **common)
        except Exception as e:
            raise ClusterError(f"--address {address}: cannot join the Ray cluster ({type(e).__name__}: {e})"
                             + _token_hint(token)) from e
        if dispatch:
            _check_local_node(address)
        _tighten_token()
        return address
    try:
        # worker_niceness 0: Ray runs its workers at nice 15 by default, so every other process (Ray's own
        # daemons included) would preempt the job being timed; a runtime's own benchmark runs at nice 0
        ray.init(address="local", _node_ip_address="127.0.0.1", resources={SLOT: 1},
                 _temp_dir=str(private_temp()), _system_config={"worker_niceness": 0}, **common)
    except Exception as e:
        from fleetbench.shared.errors import one_line
        raise ClusterError(f"cannot start the embedded Ray cluster ({one_line(e)}); check free space in the "
                         "temp folder and the file-size limit (ulimit -f)") from e
    _start_reaper()
    _tighten_token()
    return "embedded"


def token_source() -> Optional[str]:
    """Where Ray would find this process's token (its own order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.stat().st_size else None


def _token_mode() -> Optional[str]:
    """Ray 2.60 sends no token to a cluster given by address unless RAY_AUTH_MODE=token: set it where a token
    is found and the mode is unset. Returns the token's source, or None when none was found."""
    source = token_source()
    if source and not os.environ.get("RAY_AUTH_MODE"):
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")                          # Ray read the mode at import: read it again
        AuthenticationTokenLoader.instance().reset_cache()
        log.info("using the Ray token from %s (RAY_AUTH_MODE=token)", source)
    return source


def _token_hint(source: Optional[str]) -> str:
    if os.environ.get("RAY_AUTH_MODE", "disabled") == "token" and source:
        return f"; the token from {source} may not be this cluster's"
    if source is None:
        return ("; if the cluster uses token authentication (deploy/start-node.sh turns it on), copy the head's "
                "~/.ray/auth_token to ~/.ray/auth_token here (or set RAY_AUTH_TOKEN_PATH to it) and set RAY_AUTH_MODE=token")
    return ""


def local_addresses() -> set[str]:
    import psutil
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def _check_local_node(address: str) -> None:
    """Refuse a driver that Ray attached to another machine's raylet: its jobs would run, but their rows
    would never come back (this machine is not a node of the cluster)."""
    mine = ray.get_runtime_context().get_node_id()
    ip = next((n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == mine), None)
    if ip is None or ip in local_addresses():
        return
    ray.shutdown()
    raise ClusterError(f"--address {address}: this machine is not a node of that Ray cluster (Ray attached it to "
                     f"the node at {ip}, across the network): run the coordinator on the head or another node, "
                     f"e.g. ssh {ip} and run the same command there (deploy/README.md, 'Run a sweep')")


def private_temp() -> Path:
    """Ray's temp folder for the embedded cluster: /tmp/ray-<uid>/embedded under a 0700 parent
    (Ray makes its own folders world-writable; the private parent keeps other users out)."""
    import tempfile
    parent = Path(tempfile.gettempdir()) / f"ray-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(parent)
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        raise ClusterError(f"{parent}: Ray temp folder is not a folder of this user; remove it or set TMPDIR")
    os.chmod(parent, 0o700)
    return parent / "embedded"


def _tighten_token() -> None:
    """Ray writes ~/.ray/auth_token readable by everyone: make it this user's only."""
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if not path:
            continue
        try:
            p = Path(path)
            if p.is_file() and not p.is_symlink() and p.stat().st_uid == os.getuid():
                os.chmod(p, 0o600)
        except OSError as e:
            log.debug("cannot tighten %s: %s", path, e)


def _start_reaper() -> None:
    """Kill the embedded cluster's processes should this process be killed outright (coordinator/reaper.py)."""
    import subprocess
    import sys
    global _reaper
    try:
        _reaper = subprocess.Popen([sys.executable, "-m", "fleetbench.coordinator.reaper", str(os.getpid())],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
    except OSError as e:
        log.warning("cannot watch the embedded Ray cluster (it may outlive a killed coordinator): %s", e)


_reaper = None


def disconnect() -> None:
    global _reaper
    if ray.is_initialized():
        ray.shutdown()
    if _reaper is not None:   # the embedded cluster is stopped: its watcher is no longer needed
        _reaper.terminate()
        try:
            _reaper.wait(timeout=10)
        except Exception:
            pass
        _reaper = None


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def bench_nodes(nodes: list[dict]) -> list[dict]:
    """The nodes that run benchmarks: those with a bench slot, or every node when none has one."""
    slotted = [n for n in nodes if (n.get("Resources") or {}).get(SLOT)]
    return slotted or nodes


# Agent tasks request no GPUs, yet must see every GPU of their node (the node's own CUDA_VISIBLE_DEVICES, as
# deploy/start-node.sh set it for `ray start`). Whether Ray blanks CUDA_VISIBLE_DEVICES for a task with zero
# GPUs depends on its version (older: yes; 2.5x: no, unless RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1), so say it:
# Ray leaves the variable alone in these workers.
GPU_VISIBILITY_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def node_options(node: dict) -> dict:
    """Scheduling options that pin a task to this node and take its one benchmark slot; the task sees the
    node's GPUs (GPU_VISIBILITY_ENV)."""
    opts = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            "runtime_env": {"env_vars": dict(GPU_VISIBILITY_ENV)}}
    total = node.get("Resources", {})
    if total.get(SLOT):
        opts.update(num_cpus=0, resources={SLOT: 1})
    else:  # a node started without the slot: taking all its CPUs also means one benchmark at a time
        opts.update(num_cpus=total.get("CPU", 1))
    return opts


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _probe(labels: dict) -> dict:
    from fleetbench.agent.cache import code_version
    from fleetbench.agent.probe import probe
    out = probe(labels).to_dict()
    out["versions"]["fleetbench-code"] = code_version()   # this node's code, not the coordinator's
    return out


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _prune(older_than_s: float, adopt: bool = False) -> tuple[str, str, int, str]:
    import socket

    from fleetbench.agent.cache import NotACache, base_dir, prune
    try:
        return socket.gethostname(), str(base_dir()), len(prune(older_than_s, adopt_folder=adopt)), ""
    except NotACache as e:
        return socket.gethostname(), str(base_dir()), 0, str(e)


def prune_caches(older_than_s: float, timeout_s: float = 120.0,
                 adopt: bool = False) -> list[tuple[str, str, int, str]]:
    """Prune the caches of every alive node, one task pinned to each: (hostname, cache, removed, why
    refused or "") per node."""
    refs = [_prune.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(older_than_s, adopt) for n in alive_nodes()]
    ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    out = []
    for ref in ready:
        try:
            out.append(ray.get(ref))
        except Exception as e:
            log.warning("a node failed to prune its cache: %s", e)
    for ref in late:
        log.warning("a node did not prune its cache within %g s", timeout_s)
        ray.cancel(ref, force=True)
    return sorted(out)


def fleet_labels(node: dict) -> dict[str, str]:
    return {k: v for k, v in (node.get("Labels") or {}).items() if k.startswith("fleet.")}


def discover(timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeProfile]:
    """Probe every benchmark node in its own process, pinned to it, all at once.

    A node whose probe fails or does not answer within `timeout_s` (all probes together) is left out.
    """
    nodes = {n["NodeID"]: n for n in bench_nodes(alive_nodes())}
    refs = {}
    for node_id, n in nodes.items():
        pin = NodeAffinitySchedulingStrategy(node_id, soft=False)
        refs[_probe.options(scheduling_strategy=pin, runtime_env={"env_vars": dict(GPU_VISIBILITY_ENV)})
             .remote(fleet_labels(n))] = node_id
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    profiles = []
    for ref in ready:
        node_id = refs[ref]
        try:
            prof = NodeProfile.from_dict(ray.get(ref))
        except Exception as e:
            log.warning("node %s failed its probe and is left out: %s", node_id[:12], e)
            continue
        prof.node_id = node_id
        profiles.append(prof)
    for ref in late:
        log.warning("node %s did not answer its probe within %g s and is left out", refs[ref][:12], timeout_s)
        ray.cancel(ref, force=True)
    _unique_keys(profiles)
    mine = own_versions()
    for p in profiles:
        p.refused = version_skew(p, mine)
        if p.refused:
            log.warning("%s: it runs no job of this sweep", p.refused)
    return sorted(profiles, key=lambda p: (p.node_key, p.node_id))


SAME_VERSIONS = ("fleetbench-code", "ray", "python")   # what every node must share with the coordinator


def own_versions() -> dict[str, Optional[str]]:
    from fleetbench.agent.cache import code_version
    from fleetbench.agent.probe import versions
    return {**versions(), "fleetbench-code": code_version()}


def version_skew(node: NodeProfile, mine: dict[str, Optional[str]]) -> Optional[str]:
    """One line naming the node and what differs from the coordinator's (None: nothing differs)."""
    diffs = [f"{k} {node.versions.get(k) or 'unknown'} (coordinator: {mine.get(k) or 'unknown'})"
             for k in SAME_VERSIONS if node.versions.get(k) != mine.get(k)]
    return f"node {node.node_key} differs from the coordinator: {', '.join(diffs)}" if diffs else None


def _unique_keys(profiles: list[NodeProfile]) -> None:
    """Two nodes on one host without a fleet.node label get their Ray id appended to stay apart."""
    keys = [p.node_key for p in profiles]
    for p in profiles:
        if keys.count(p.node_key) > 1:
            p.node_key = f"{p.node_key}-{p.node_id[:8]}"
