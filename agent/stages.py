"""What a job's stages share, used by the job's process (agent/runner.py) and by the measuring process
(agent/measureproc.py): the stage boundary where foreign exceptions become a StageError, and the typed
record each stage returns (its fields are Result columns of the same names)."""
from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from fleetbench.shared.errors import FleetError, StageError, one_line

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage(name: str, on_stage: Optional[Callable[[str], object]] = None) -> Iterator[None]:
    """The one boundary per stage where foreign exceptions become our StageError."""
    if on_stage is not None:
        on_stage(name)
    try:
        yield
    except FleetError:
        raise
    except MemoryError as e:
        raise StageError(name, f"out of memory: {e}") from e
    except Exception as e:
        log.debug("stage %s failed:\n%s", name, traceback.format_exc())
        raise StageError(name, one_line(e)) from e


def default_threads() -> int:
    """Physical cores in this process's affinity mask, capped by its cgroup CPU quota (agent/limits.py)."""
    from fleetbench.agent.limits import default_threads as allowed
    return allowed()


def threads_reason(threads: int, usable: int) -> Optional[str]:
    """Why a job may not run `threads` threads where its process may keep `usable` CPUs busy (agent/limits.py);
    None when it may. More threads than CPUs would time the scheduler, not the engine."""
    if threads <= usable:
        return None
    return (f"measure.threads {threads} > {usable} usable CPUs on this node (its affinity mask and CPU quota): "
            f"set measure.threads to at most {usable}, or leave it out")


@dataclass(frozen=True)
class Compressed:
    """The compress stage: the sparsity a prune reached (None for other methods)."""

    sparsity: Optional[float]


@dataclass(frozen=True)
class Exported:
    """The export stage (Result columns of the same names)."""

    export_s: float
    cache_hit: Optional[bool]
    size_mb: float
    size_compressed_mb: float


@dataclass(frozen=True)
class Built:
    """The build stage: what the engine says it computes in, and how long it took."""

    build_s: float
    dtype: str
    threads: Optional[int]
    provider: Optional[str]
    cpus_allowed: Optional[str] = None   # the CPUs the engine's process could run on, and its CPU quota
    cpu_quota: Optional[float] = None


@dataclass(frozen=True)
class Measured:
    """The measure stage beside its timed windows: the first call, device-resident time, streams in flight."""

    first_ms: float
    latency_device_p50_ms: Optional[float] = None
    streams: Optional[int] = None   # throughput scenario: requests kept in flight


@dataclass(frozen=True)
class Timed:
    """The timed windows (`timed`): latency figures, p50 interval, validity verdict, energy, raw samples."""

    latency_mean_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_std_ms: float
    latency_min_ms: float
    latency_p50_ci_low_ms: Optional[float]
    latency_p50_ci_high_ms: Optional[float]
    iterations: int
    measure_s: float
    throughput_ips: float
    repeats: int
    window_p50s_ms: list[float]
    window_iters: list[int]
    samples_ms: list[float]
    valid: bool
    validity: Optional[str]
    cv_pct: Optional[float]
    other_cpu_cores: Optional[float]
    cpu_steal_pct: Optional[float]
    window_start: str
    window_end: str
    energy_j_per_item: Optional[float]


@dataclass(frozen=True)
class Efficiency:
    """FLOPs per item of the fp32 model, the GFLOP/s achieved and their share of this node's GEMM peak."""

    gflops: Optional[float]
    achieved_gflops_s: Optional[float] = None
    peak_gflops_s: Optional[float] = None
    efficiency_pct: Optional[float] = None


@dataclass(frozen=True)
class Memory:
    """RAM and VRAM of the engine: over its build and timed windows (not the evaluation data)."""

    ram_peak_mb: float
    ram_delta_mb: float
    vram_peak_mb: Optional[float] = None
    vram_source: Optional[str] = None


@dataclass(frozen=True)
class Provenance:
    """Where the job's inputs and quality came from, and its seconds per stage on the node."""

    reused: Optional[str]
    quality_from: Optional[str]
    stage_s: Optional[str]
