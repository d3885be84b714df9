"""Connecting to Ray (embedded one-node cluster or an existing one) and discovering the fleet."""
from __future__ import annotations

import logging
import os
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from shared.errors import FleetError
from shared.job import NodeProfile

log = logging.getLogger(__name__)
SLOT = "bench_slot"
PROBE_TIMEOUT_S = 180.0


def connect(address: Optional[str] = None) -> str:
    """Join `address` (or RAY_ADDRESS); without either, start the embedded local cluster on 127.0.0.1."""
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:
            raise FleetError(f"--address {address}: cannot join the Ray cluster ({type(e).__name__}: {e})") from e
        return address
    ray.init(address="local", _node_ip_address="127.0.0.1", resources={SLOT: 1}, **common)
    return "embedded"


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


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
    from agent.probe import probe
    return probe(labels).to_dict()


def fleet_labels(node: dict) -> dict[str, str]:
    return {k: v for k, v in (node.get("Labels") or {}).items() if k.startswith("fleet.")}


def discover() -> list[NodeProfile]:
    """Probe every alive node in its own process, pinned to it. A node that fails its probe is skipped."""
    nodes = alive_nodes()
    refs = {}
    for n in nodes:
        pin = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        refs[n["NodeID"]] = _probe.options(scheduling_strategy=pin).remote(fleet_labels(n))
    profiles = []
    for n in nodes:
        try:
            prof = NodeProfile.from_dict(ray.get(refs[n["NodeID"]], timeout=PROBE_TIMEOUT_S))
        except Exception as e:
            log.warning("node %s failed its probe and is left out: %s", n["NodeID"][:12], e)
            continue
        prof.node_id = n["NodeID"]
        profiles.append(prof)
    _unique_keys(profiles)
    return sorted(profiles, key=lambda p: (p.node_key, p.node_id))


def _unique_keys(profiles: list[NodeProfile]) -> None:
    """Two nodes on one host without a fleet.node label get their Ray id appended to stay apart."""
    keys = [p.node_key for p in profiles]
    for p in profiles:
        if keys.count(p.node_key) > 1:
            p.node_key = f"{p.node_key}-{p.node_id[:8]}"
