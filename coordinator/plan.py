"""From a sweep and the fleet's profiles to jobs. Pure: no Ray here, so it is tested on its own.

A combination a node cannot do (its backend or device is missing there) is not an error: it is
planned as an `unsupported` row carrying the probe's reason, written without dispatching anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fleetbench.shared.errors import SweepError
from fleetbench.shared.job import Job, NodeProfile, Result
from fleetbench.shared.sweep import DatasetSpec, Sweep


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)          # to dispatch
    unsupported: list[Result] = field(default_factory=list)  # decided here, stored as they are
    nodes: list[NodeProfile] = field(default_factory=list)   # the selected nodes

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.unsupported)


def select_nodes(targets: list[str], nodes: list[NodeProfile]) -> list[NodeProfile]:
    """Nodes matching any target; a target matching no node is an error that names it."""
    chosen: dict[str, NodeProfile] = {}
    for i, target in enumerate(targets):
        kind, _, value = target.partition(":")
        if target == "all":
            hits = nodes
        elif kind == "kind":
            hits = [n for n in nodes if value in n.kinds]
        else:
            hits = [n for n in nodes if value in (n.hostname, n.node_key)
                    or (len(value) >= 6 and n.node_id.startswith(value))]
        if not hits:
            fleet = ", ".join(f"{n.node_key}[{'+'.join(n.kinds)}]" for n in nodes) or "none"
            raise SweepError(f"targets[{i}]: {target!r} matches no node (fleet: {fleet})")
        for n in hits:
            chosen.setdefault(n.node_id or n.node_key, n)
    return list(chosen.values())


def primary_kind(node: NodeProfile, backend: str, device: str) -> str:
    """The hardware kind a row is filed under: the backend says which kind its device belongs to."""
    from fleetbench.agent.backends import get
    return get(backend).hw_kind(device, node.kinds)


def plan(sweep: Sweep, nodes: list[NodeProfile], weights: Optional[dict[str, str]] = None) -> Plan:
    """Every (node, model, compression, backend, device, batch size) of the sweep.

    `weights` maps model name to the checkpoint's content hash (part of the job id).
    """
    weights = weights or {}
    out = Plan(nodes=select_nodes(sweep.targets, nodes))
    for node in out.nodes:
        for model in sweep.models:
            for comp in sweep.compression:
                for backend in sweep.backends:
                    have = node.backend_devices(backend)
                    devices = have if sweep.devices == ["auto"] else sweep.devices
                    reason = node.refused or (None if have else node.unavailable_reason(backend))
                    for device in devices or ["cpu"]:
                        for bs, scenario in ((b, s) for b in sweep.batch_sizes for s in sweep.scenarios):
                            job = Job(sweep=sweep.name, scenario=scenario, model=model, dataset=sweep.dataset,
                                      compression=comp, backend=backend, device=device, batch_size=bs,
                                      measure=sweep.measure,
                                      node_key=node.node_key, node_id=node.node_id, hostname=node.hostname,
                                      host_id=node.host_id,
                                      hw_kind=primary_kind(node, backend, device),
                                      weights_sha256=weights.get(model.name), timeout_s=sweep.timeout_s)
                            why = reason or (None if device in have else
                                             f"{backend}: no device {device!r} on {node.node_key} "
                                             f"(has: {', '.join(have) or 'none'})")
                            if why:
                                out.unsupported.append(Result.for_job(job, status="unsupported", error=why))
                            else:
                                out.jobs.append(job)
    return out


def checkpoint_path(model_checkpoint: Optional[str], source: str, sweep_dir: Path) -> Optional[Path]:
    """The local file to ship to agents for a model, if any (checkpoint, or the onnx: source).

    A relative path is taken from the working directory, else from the sweep file's folder.
    """
    scheme, _, target = source.partition(":")
    name = model_checkpoint or (target if scheme == "onnx" else None)
    if name is None:
        return None
    return resolve_local(name, sweep_dir)


def dataset_folder(ds: DatasetSpec, sweep_dir: Path) -> Path:
    """An imagefolder dataset's folder (the schema requires its path), resolved as `resolve_local` does."""
    if not ds.path:
        raise SweepError("dataset.path: imagefolder needs path:")
    return resolve_local(ds.path, sweep_dir)


def resolve_local(name: str, sweep_dir: Path) -> Path:
    p = Path(name).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    beside = sweep_dir / p
    return beside.resolve() if beside.exists() else p.resolve()
