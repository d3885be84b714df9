"""What this process may use of the machine: the CPUs in its affinity mask (a cpuset cgroup, `taskset`, a
container's CPU set all show there) and the cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`, the tightest on the way up to the hierarchy's root). A KubeRay pod with `cpu: 8` on a
32-core host may use 8 CPUs, not 32: thread defaults and checks read these, never the host's core count.
Plain Python (no psutil, no torch): the job process, the measuring process and the coordinator's checks
share it."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class CpuLimits:
    """The CPUs a process may run on and the CPU time it may use."""

    affinity: tuple[int, ...]      # logical CPUs in its affinity mask
    cores: int                     # physical cores those CPUs belong to
    quota: Optional[float]         # cgroup CPU quota in CPUs (1.5: 150 ms per 100 ms); None: no quota

    @property
    def usable(self) -> int:
        """Logical CPUs it can keep busy at once: the mask, capped by the quota (at least 1)."""
        return _capped(len(self.affinity), self.quota)

    @property
    def threads(self) -> int:
        """The default thread count: one per physical core in the mask, capped by the quota (at least 1)."""
        return _capped(self.cores, self.quota)

    @property
    def affinity_list(self) -> str:
        """The mask as the kernel writes a CPU list ("0-3,8")."""
        return cpu_list(self.affinity)


def _capped(n: int, quota: Optional[float]) -> int:
    if quota is not None:
        n = min(n, math.floor(quota + 1e-9))
    return max(1, n)


def cpu_limits(pid: int = 0) -> CpuLimits:
    """The limits of process `pid` (0: this one)."""
    affinity = tuple(sorted(os.sched_getaffinity(pid)))
    proc = Path("/proc/self" if pid == 0 else f"/proc/{pid}")
    return CpuLimits(affinity, physical_cores(affinity), cgroup_quota(proc))


def usable_cpus() -> int:
    """Logical CPUs this process may keep busy: its affinity mask capped by its cgroup CPU quota."""
    return cpu_limits().usable


def default_threads() -> int:
    """Physical cores in this process's affinity mask, capped by its cgroup CPU quota."""
    return cpu_limits().threads


def physical_cores(cpus: Iterable[int]) -> int:
    """Distinct (package, core) pairs among `cpus` (hyperthread siblings count once)."""
    cores = set()
    for cpu in cpus:
        top = SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            cores.add(((top / "physical_package_id").read_text().strip(), (top / "core_id").read_text().strip()))
        except OSError:   # no topology exposed (some containers): count the logical CPU
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def cpu_list(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(set(cpus)):
        if run and cpu != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(cpu)
    if run:
        out.append(_span(run))
    return ",".join(out)


def parse_cpu_list(text: str) -> set[int]:
    """"0-3,8" -> {0, 1, 2, 3, 8}; an empty or malformed list -> set()."""
    out: set[int] = set()
    try:
        for part in filter(None, text.strip().split(",")):
            first, _, last = part.partition("-")
            out.update(range(int(first), int(last or first) + 1))
    except ValueError:
        return set()
    return out


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def cgroup_quota(proc: Path = Path("/proc/self")) -> Optional[float]:
    """The tightest CPU quota (in CPUs) over the process's cgroups and their ancestors, v1 and v2; None if none."""
    try:
        groups = _cgroups((proc / "cgroup").read_text())
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for root, point, fstype, options in _cgroup_mounts(mounts):
        if fstype == "cgroup2" and "" in groups:
            quotas += _walk(point, root, groups[""], _v2_quota)
        elif fstype == "cgroup" and "cpu" in options and "cpu" in groups:
            quotas += _walk(point, root, groups["cpu"], _v1_quota)
    return min(quotas, default=None)


def _cgroups(text: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {controller: path}; the v2 hierarchy under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def _cgroup_mounts(lines: list[str]) -> Iterable[tuple[str, Path, str, set[str]]]:
    """(root inside the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            yield fields[3], Path(fields[4]), tail[0], set(tail[2].split(","))


def _walk(point: Path, root: str, path: str, read) -> list[float]:
    """Each quota from the process's cgroup folder up to the mount point."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return []
    if rel.startswith(".."):   # the process's cgroup is outside what this mount shows
        return []
    point = point.resolve()
    folder = (point / rel).resolve()
    out = []
    while True:
        quota = read(folder)
        if quota is not None:
            out.append(quota)
        if folder == point or point not in folder.parents:
            return out
        folder = folder.parent


def _v2_quota(folder: Path) -> Optional[float]:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> Optional[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
