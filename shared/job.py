"""Job, Result and NodeProfile: the records that travel between coordinator and agents."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec, SearchSpec
from fleetbench.shared.vocab import HwKind, Status

# For a job's process to start and report its first stage (a launcher's imports of torch and timm on a slow
# or busy node included). The agent waits this long, and the coordinator this long and its grace.
STARTUP_S = 300.0


@dataclass(frozen=True)
class Job:
    """One measurement: (model, compression, backend, device, batch size) on one node."""

    sweep: str
    model: ModelSpec
    dataset: DatasetSpec
    compression: CompressionSpec
    backend: str
    device: str
    batch_size: int
    measure: MeasureSpec
    scenario: str = "latency"      # latency: one request at a time | throughput: the engine kept saturated
    node_key: str = "local"        # stable name of the node (label fleet.node or hostname)
    node_id: str = ""              # Ray's hex node id (changes when a node restarts)
    hostname: str = ""
    hw_kind: str = HwKind.CPU
    host_id: str = ""              # the machine (machine-id): several Ray nodes may share one host
    weights_sha256: Optional[str] = None   # content hash of the checkpoint file, when there is one
    timeout_s: float = 900.0
    phase: str = "full"            # full | quality (a block, then quality sequentially) | block: a race's step
    search: Optional[SearchSpec] = None   # the race's rules (phase quality and block)

    @property
    def job_id(self) -> str:
        """Content hash of what determines the measurement: the resume key and engine-cache key."""
        key = {
            "model": self.model.model_dump(mode="json"),
            "weights": self.weights_sha256,
            "dataset": self.dataset.model_dump(mode="json"),
            "compression": self.compression.name,
            "backend": self.backend,
            "device": self.device,
            "batch_size": self.batch_size,
            "scenario": self.scenario,
            "measure": self.measure.model_dump(mode="json"),
            "node": self.node_key,
        }
        if self.phase != "full":   # a race's step; a full job keeps the id it has in an exhaustive sweep
            key["phase"] = self.phase
            key["search"] = self.search.model_dump(mode="json") if self.search else None
        blob = json.dumps(key, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        return (f"{self.model.name}/{self.compression.name}/{self.backend}:{self.device}"
                f"/bs{self.batch_size}/{self.scenario}@{self.node_key}")


@dataclass
class Result:
    """One row of the `results` table. Figures are None where not measured."""

    job_id: str
    sweep: str
    model: str
    compression: str
    backend: str
    device: str
    batch_size: int
    node_id: str
    hostname: str
    hw_kind: str
    host_id: str = ""
    scenario: str = "latency"
    status: str = Status.OK
    stage: Optional[str] = None
    error: Optional[str] = None
    run_id: Optional[str] = None
    dtype: Optional[str] = None
    threads: Optional[int] = None
    cpus_allowed: Optional[str] = None               # CPUs the engine's process could run on ("0-3,8": its affinity)
    cpu_quota: Optional[float] = None                # and its cgroup CPU quota in CPUs (NULL: none)
    provider: Optional[str] = None
    latency_mean_ms: Optional[float] = None
    latency_p50_ms: Optional[float] = None
    latency_p90_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    latency_std_ms: Optional[float] = None
    latency_min_ms: Optional[float] = None
    latency_p50_ci_low_ms: Optional[float] = None    # 95% interval of the p50 (shared.stats.p50_with_ci)
    latency_p50_ci_high_ms: Optional[float] = None
    valid: Optional[bool] = None                     # ok rows: did the window pass every validity rule
    validity: Optional[str] = None                   # the reasons it did not ('; '-joined), NULL when valid
    cv_pct: Optional[float] = None                   # largest coefficient of variation of a window's samples
    other_cpu_cores: Optional[float] = None          # most cores other processes used during a window
    cpu_steal_pct: Optional[float] = None            # most CPU steal during a window
    repeats: Optional[int] = None                    # timed windows
    window_p50s_ms: Optional[list[float]] = None     # each window's p50
    window_iters: Optional[list[int]] = None         # each window's sample count (splits samples_ms)
    gflops: Optional[float] = None                   # the fp32 model's GFLOPs per item (torch.utils.flop_counter)
    achieved_gflops_s: Optional[float] = None        # gflops x throughput_ips
    peak_gflops_s: Optional[float] = None            # this node's GEMM peak for the row's dtype and threads
    efficiency_pct: Optional[float] = None           # achieved / peak
    energy_j_per_item: Optional[float] = None        # RAPL (CPU package) or NVML (GPU) joules per item; NULL: see notes
    window_start: Optional[str] = None               # wall clock of the first window's start, last one's end
    window_end: Optional[str] = None
    first_ms: Optional[float] = None
    latency_device_p50_ms: Optional[float] = None   # GPU engines: inputs already on the device, no copies
    streams: Optional[int] = None                    # throughput scenario: requests kept in flight
    iterations: Optional[int] = None
    measure_s: Optional[float] = None
    throughput_ips: Optional[float] = None
    ram_peak_mb: Optional[float] = None
    ram_delta_mb: Optional[float] = None
    vram_peak_mb: Optional[float] = None
    vram_source: Optional[str] = None
    size_mb: Optional[float] = None
    size_compressed_mb: Optional[float] = None
    sparsity: Optional[float] = None
    accuracy: Optional[float] = None
    precision_macro: Optional[float] = None
    recall_macro: Optional[float] = None
    f1_macro: Optional[float] = None
    top1_agreement: Optional[float] = None
    eval_samples: Optional[int] = None
    export_s: Optional[float] = None
    build_s: Optional[float] = None
    cache_hit: Optional[bool] = None
    wall_s: Optional[float] = None
    stage_s: Optional[str] = None        # JSON: the job's seconds per stage on its node (prepare and measure)
    reused: Optional[str] = None         # what the job took from the node's cache and what it made there
    quality_from: Optional[str] = None   # evaluated in this job, or predictions reused (and from what)
    notes: Optional[str] = None
    race: Optional[str] = None           # JSON: a race's evidence (sequential quality counts, the speed test)
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    samples_ms: Optional[list[float]] = None         # every timed sample in order (all windows): the `samples` table

    @classmethod
    def for_job(cls, job: Job, **kw: Any) -> "Result":
        return cls(job_id=job.job_id, sweep=job.sweep, model=job.model.name,
                   compression=job.compression.name, backend=job.backend, device=job.device,
                   batch_size=job.batch_size, node_id=job.node_id, hostname=job.hostname,
                   hw_kind=job.hw_kind, host_id=job.host_id, scenario=job.scenario, **kw)

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SIDE_FIELDS = ("samples_ms",)   # stored in their own table, not as `results` columns
RESULT_COLUMNS = tuple(f.name for f in dataclasses.fields(Result) if f.name not in SIDE_FIELDS)


@dataclass
class NodeProfile:
    """What a node is and can do, as its agent probe saw it."""

    hostname: str
    kinds: list[str]
    cpu_model: str
    cores: int
    logical_cpus: int
    isa_flags: list[str]
    ram_mb: float
    node_id: str = ""
    node_key: str = ""
    host_id: str = ""                 # machine-id of the host: nodes with the same one share a machine
    labels: dict[str, str] = field(default_factory=dict)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    driver: Optional[str] = None
    openvino_devices: list[str] = field(default_factory=list)
    versions: dict[str, Optional[str]] = field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: Optional[str] = None     # why the coordinator runs nothing here (its code or versions differ)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NodeProfile":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def backend_devices(self, backend: str) -> list[str]:
        info = self.backends.get(backend) or {}
        return list(info.get("devices") or []) if info.get("available") else []

    def unavailable_reason(self, backend: str) -> str:
        info = self.backends.get(backend)
        if info is None:
            return f"{backend}: not probed on this node"
        return info.get("reason") or f"{backend}: not available on this node"
