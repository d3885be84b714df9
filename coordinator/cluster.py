"""Connecting to Ray (embedded one-node cluster or an existing one) and discovering the fleet.

A benchmark node is a Ray node with the custom resource `bench_slot` (deploy/start-node.sh gives it
1). A node without it (a head started with `start-node.sh head none`) runs no benchmarks and is left
out of the fleet; only when no node has the slot (a plain `ray start` cluster) is every node used,
each job then taking all of its node's CPUs so that benchmarks still run one at a time per node.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fleetbench.shared.errors import FleetError
from fleetbench.shared.job import NodeProfile

log = logging.getLogger(__name__)
SLOT = "bench_slot"
PROBE_TIMEOUT_S = 180.0   # for all probes together, not per node


def connect(address: Optional[str] = None) -> str:
    """Join `address` (or RAY_ADDRESS); without either, start the embedded local cluster on 127.0.0.1.

    Token authentication: the embedded cluster turns it on (Ray's default); to join a cluster that
    has it on, this process needs the cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or
    RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token, as `ray start` nodes do.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:
            raise FleetError(f"--address {address}: cannot join the Ray cluster ({type(e).__name__}: {e})") from e
        return address
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", resources={SLOT: 1}, **common)
    except Exception as e:
        from fleetbench.shared.errors import one_line
        raise FleetError(f"cannot start the embedded Ray cluster ({one_line(e)}); check free space in the "
                         "temp folder and the file-size limit (ulimit -f)") from e
    return "embedded"


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def bench_nodes(nodes: list[dict]) -> list[dict]:
    """The nodes that run benchmarks: those with a bench slot, or every node when none has one."""
    slotted = [n for n in nodes if (n.get("Resources") or {}).get(SLOT)]
    return slotted or nodes


def node_options(node: dict) -> dict:
    """Scheduling options that pin a task to this node and take its one benchmark slot."""
    opts = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
    total = node.get("Resources", {})
    if total.get(SLOT):
        opts.update(num_cpus=0, resources={SLOT: 1})
    else:  # a node started without the slot: taking all its CPUs also means one benchmark at a time
        opts.update(num_cpus=total.get("CPU", 1))
    return opts


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _probe(labels: dict) -> dict:
    from fleetbench.agent.probe import probe
    return probe(labels).to_dict()


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
        refs[_probe.options(scheduling_strategy=pin).remote(fleet_labels(n))] = node_id
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
    return sorted(profiles, key=lambda p: (p.node_key, p.node_id))


def _unique_keys(profiles: list[NodeProfile]) -> None:
    """Two nodes on one host without a fleet.node label get their Ray id appended to stay apart."""
    keys = [p.node_key for p in profiles]
    for p in profiles:
        if keys.count(p.node_key) > 1:
            p.node_key = f"{p.node_key}-{p.node_id[:8]}"
