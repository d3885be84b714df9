"""Is a timed window to be trusted? Each rule is a measured quantity against a threshold of `measure:`.

Rules (the reasons they give go to the row's `validity`; `valid` is true when there are none):
- the window met both `min_iters` and `min_duration_s` (the loop stops at `max_duration_s` either way);
- a p99 needs `p99_min_samples` samples (with fewer, it is one of the few largest samples);
- the (robust: 1.4826 x MAD / median) coefficient of variation of the samples is at most `max_cv_pct`;
- interference: CPU time that other processes used on the node during the window (all CPUs' busy
  time from /proc/stat minus this process's own, from getrusage), at most `max_other_cpu_cores`;
- CPU steal (time the hypervisor gave this VM's CPUs to others) at most `max_steal_pct` of the window;
- NVIDIA: the clock throttle reasons NVML reports at the window's start and end (thermal, power,
  hardware slowdown), and the SM clock against its maximum.

/proc/stat counts the whole machine (inside a container too), so a second Ray node on the same host
shows up here as interference.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from fleetbench.shared.sweep import MeasureSpec

# /proc/stat "cpu" fields: user nice system idle iowait irq softirq steal guest guest_nice (guest is in user)
_BUSY = (0, 1, 2, 5, 6)
_IDLE = (3, 4)
_STEAL = 7


@dataclass(frozen=True)
class CpuTimes:
    """One reading: the machine's CPU ticks (/proc/stat) and this process's own CPU seconds."""

    busy_s: float
    idle_s: float
    steal_s: float
    own_s: float
    wall: float


def parse_proc_stat(text: str, hz: Optional[int] = None) -> tuple[float, float, float]:
    """(busy, idle, steal) seconds summed over all CPUs, from the text of /proc/stat."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [int(v) for v in parts[1:]] + [0] * 10
            return (sum(ticks[i] for i in _BUSY) / hz, sum(ticks[i] for i in _IDLE) / hz, ticks[_STEAL] / hz)
    raise ValueError("/proc/stat has no aggregate 'cpu' line")


def own_cpu_s() -> float:
    """CPU seconds used by this process (every thread) and by its children that have ended."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_cpu() -> Optional[CpuTimes]:
    """A reading now, or None where /proc/stat cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as f:
            busy, idle, steal = parse_proc_stat(f.read())
    except (OSError, ValueError):
        return None
    return CpuTimes(busy, idle, steal, own_cpu_s(), time.monotonic())


def process_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (name, user + system ticks) of every process now, from /proc/<pid>/stat (~10 ms)."""
    out: dict[int, tuple[str, int]] = {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:   # it ended meanwhile
            continue
        close = text.rindex(")")
        fields = text[close + 2:].split()
        out[pid] = (text[text.index("(") + 1:close], int(fields[11]) + int(fields[12]))
    return out


def top_others(before: dict, after: dict, wall_s: float, n: int = 3, hz: Optional[int] = None,
               me: Optional[int] = None) -> tuple[tuple[str, int, float], ...]:
    """The `n` other processes that used most CPU between two `process_ticks` readings: (name, pid, cores).
    Processes that started and ended inside the window are not seen."""
    hz, me = hz or os.sysconf("SC_CLK_TCK"), os.getpid() if me is None else me
    if wall_s <= 0:
        return ()
    used = [(name, pid, (ticks - before[pid][1]) / hz / wall_s) for pid, (name, ticks) in after.items()
            if pid != me and pid in before and before[pid][0] == name and ticks > before[pid][1]]
    return tuple(sorted(used, key=lambda u: -u[2])[:n])


@dataclass(frozen=True)
class Interference:
    other_cpu_cores: float    # mean cores busy with other processes during the window
    steal_pct: float          # steal as % of all CPU time of the window
    top: tuple[tuple[str, int, float], ...] = ()   # the busiest of them: (name, pid, cores)


def interference(a: CpuTimes, b: CpuTimes) -> Optional[Interference]:
    """What happened on the machine between two readings, apart from this process."""
    wall = b.wall - a.wall
    total = (b.busy_s - a.busy_s) + (b.idle_s - a.idle_s) + (b.steal_s - a.steal_s)
    if wall <= 0 or total <= 0:
        return None
    others = (b.busy_s - a.busy_s) - (b.own_s - a.own_s)
    return Interference(other_cpu_cores=max(0.0, others) / wall,
                        steal_pct=100.0 * (b.steal_s - a.steal_s) / total)


# NVML clocks-event (throttle) reason bits that slow a benchmark down; idle, application-clock
# setting and display clock are not interference.
NVML_THROTTLE = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)",
                 0x40: "thermal (hardware)", 0x80: "power brake"}


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in NVML_THROTTLE.items() if mask & bit]


class GpuWatch:
    """NVML throttle reasons and SM clock of one GPU, read at the window's start and end. Never raises."""

    def __init__(self, index: int = 0):
        self.index = index
        self.masks: list[int] = []
        self.clocks: list[int] = []
        self.max_clock: Optional[int] = None
        self.reason: Optional[str] = None
        self._nvml: Any = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.max_clock = int(pynvml.nvmlDeviceGetMaxClockInfo(self._handle, pynvml.NVML_CLOCK_SM))
            self._nvml = pynvml
        except Exception as e:
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})"

    def read(self) -> None:
        if self._nvml is None:
            return
        nv = self._nvml
        try:
            get = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nv.nvmlDeviceGetCurrentClocksThrottleReasons
            self.masks.append(int(get(self._handle)))
            self.clocks.append(int(nv.nvmlDeviceGetClockInfo(self._handle, nv.NVML_CLOCK_SM)))
        except Exception as e:
            self.reason = f"NVML: {e}"

    def close(self) -> None:
        if self._nvml is not None:
            from fleetbench.agent.gpu import nvml_shutdown
            nvml_shutdown(self._nvml)
            self._nvml = None

    def window_reasons(self) -> list[str]:
        """The throttle reasons read since the last call (one window), then forget them."""
        mask = 0
        for m in self.masks:
            mask |= m
        clocks, self.masks, self.clocks = self.clocks, [], []
        names = throttle_names(mask)
        if not names:
            return []
        clock = f" (SM {min(clocks)} of {self.max_clock} MHz)" if clocks and self.max_clock else ""
        return [f"GPU clocks throttled: {', '.join(names)}{clock}"]


@dataclass(frozen=True)
class Window:
    """One timed window: its samples (seconds) and what the machine did meanwhile."""

    samples_s: Sequence[float]
    duration_s: float
    cpu: Optional[Interference] = None
    gpu_reasons: tuple[str, ...] = ()
    started: float = 0.0      # wall clock (time.time()) at the window's start and end
    ended: float = 0.0
    pid: int = 0              # the process that timed it
    energy_j: Optional[float] = None    # joules the window used (agent.energy), None where not reported
    energy_reason: Optional[str] = None


def cv_pct(samples: Sequence[float]) -> Optional[float]:
    """Robust coefficient of variation, in %: 1.4826 x MAD / median (equals std / mean for a normal
    distribution). The classic std / mean is ruled by a handful of scheduler spikes: sub-millisecond
    engines on an idle machine measured 35-197 % with it, so every row would be judged unsteady; the
    tail is judged apart (p99 and its sample count)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size < 2:
        return None
    median = float(np.median(a))
    if median <= 0:
        return None
    return float(100.0 * 1.4826 * np.median(np.abs(a - median)) / median)


def judge_tail(n_samples: int, spec: MeasureSpec) -> list[str]:
    """A p99 over fewer than `p99_min_samples` samples is one of the few largest: say so."""
    if n_samples < spec.p99_min_samples:
        return [f"p99 from {n_samples} samples (needs {spec.p99_min_samples})"]
    return []


def judge(w: Window, spec: MeasureSpec) -> list[str]:
    """The reasons this window cannot be trusted (empty: valid)."""
    reasons = []
    n = len(w.samples_s)
    if n < spec.min_iters:
        reasons.append(f"min_iters not reached ({n} < {spec.min_iters})")
    if w.duration_s < spec.min_duration_s:
        reasons.append(f"min_duration_s not reached ({w.duration_s:.2f} s < {spec.min_duration_s:g} s)")
    cv = cv_pct(w.samples_s)
    if cv is not None and cv > spec.max_cv_pct:
        reasons.append(f"cv {cv:.0f}% > {spec.max_cv_pct:g}%")
    if w.cpu is not None:
        if w.cpu.other_cpu_cores > spec.max_other_cpu_cores:
            who = ", ".join(f"{name} pid {pid} {cores:.2f}" for name, pid, cores in w.cpu.top if cores >= 0.01)
            reasons.append(f"other processes used {w.cpu.other_cpu_cores:.2f} cores during the window "
                           f"(> {spec.max_other_cpu_cores:g})" + (f": {who}" if who else ""))
        if w.cpu.steal_pct > spec.max_steal_pct:
            reasons.append(f"cpu steal {w.cpu.steal_pct:.0f}% > {spec.max_steal_pct:g}%")
    reasons.extend(w.gpu_reasons)
    return reasons
