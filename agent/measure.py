"""Honest measurement: a latency loop that keeps every sample, and a peak-RSS sampler."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from fleetbench.agent import validity
from fleetbench.agent.energy import EnergyMeter
from fleetbench.shared.sweep import MeasureSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    iterations: int
    window_s: float

    def throughput(self, batch_size: int) -> float:
        """Items per second over the timed window: every sample counts."""
        return batch_size * self.iterations / self.window_s if self.window_s > 0 else float("nan")


def summarize(samples_s: list[float] | np.ndarray) -> LatencyStats:
    """Statistics over every kept sample (seconds in, milliseconds out)."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(mean_ms=float(a.mean()), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0, min_ms=float(a.min()),
                        iterations=int(a.size), window_s=float(a.sum() / 1e3))


def warm_up(fn: Callable[[], object], iters: int) -> None:
    for _ in range(iters):
        fn()


def time_loop(fn: Callable[[], object], spec: MeasureSpec,
              clock: Callable[[], float] = time.perf_counter, warmup: bool = True) -> list[float]:
    """Warm up, then time `fn` until both min_iters and min_duration_s are met, capped by max_duration_s.

    Returns every sample in seconds. `fn` must be synchronous (it returns when the work is done).
    A window cut short by max_duration_s is not hidden: `validity.judge` marks it.
    """
    if warmup:
        warm_up(fn, spec.warmup_iters)
    samples: list[float] = []
    with samplers_asleep():
        start = clock()
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            samples.append(t1 - t0)
            elapsed = t1 - start
            if len(samples) >= spec.min_iters and elapsed >= spec.min_duration_s:
                break
            if elapsed >= spec.max_duration_s:
                log.warning("timing stopped at max_duration_s %g s with %d of min_iters %d samples",
                            spec.max_duration_s, len(samples), spec.min_iters)
                break
    return samples


# Timed loops and the RSS sampler: while any timed loop runs, every PeakRSS thread sleeps on _AWAKE
# (no wake-up preempts a sub-millisecond engine); the kernel's high-water mark still sees the window's peak.
_AWAKE = threading.Event()
_AWAKE.set()
_quiet_lock = threading.Lock()
_quiet = 0


@contextlib.contextmanager
def samplers_asleep(settle_s: float = 0.006) -> Iterator[None]:
    """No PeakRSS sampler wakes while the block runs; `settle_s` (over one sampling interval) lets a
    sampler that is mid-sleep park before the block starts."""
    global _quiet
    with _quiet_lock:
        _quiet += 1
        _AWAKE.clear()
    time.sleep(settle_s)
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet -= 1
            if _quiet == 0:
                _AWAKE.set()


def timed_window(fn: Callable[[], object], spec: MeasureSpec,
                 gpu: Optional[validity.GpuWatch] = None, meter: Optional[EnergyMeter] = None) -> validity.Window:
    """One timed window (no warm-up) with the machine's CPU and GPU state and energy read around it."""
    if gpu is not None:
        gpu.read()
    joules = meter.read() if meter is not None else None
    procs_before = validity.process_ticks()
    before, started = validity.read_cpu(), time.time()
    t0 = time.perf_counter()
    samples = time_loop(fn, spec, warmup=False)
    duration = time.perf_counter() - t0
    after, ended = validity.read_cpu(), time.time()
    joules_after = meter.read() if meter is not None else None
    procs_after = validity.process_ticks()
    gpu_reasons: tuple[str, ...] = ()
    if gpu is not None:
        gpu.read()
        gpu_reasons = tuple(gpu.window_reasons())
    cpu = validity.interference(before, after) if before and after else None
    if cpu is not None and before and after:
        top = validity.top_others(procs_before, procs_after, after.wall - before.wall)
        cpu = dataclasses.replace(cpu, top=top)
    return validity.Window(samples_s=samples, duration_s=duration, cpu=cpu, gpu_reasons=gpu_reasons,
                           started=started, ended=ended, pid=os.getpid(),
                           energy_j=joules_after - joules if joules is not None and joules_after is not None else None,
                           energy_reason=meter.reason if meter is not None else None)


def concurrent_loop(fn: Callable[[], object] | Sequence[Callable[[], object]], spec: MeasureSpec,
                    streams: int) -> tuple[list[float], float]:
    """`streams` threads call `fn` (or stream i calls `fn[i]`: one engine context per thread) back to back
    until, together, min_iters calls and min_duration_s are reached (capped by max_duration_s). Returns
    every call's latency under load (seconds, in order of completion) and the wall time: the throughput
    scenario's window."""
    fns = [fn] * streams if callable(fn) else list(fn)
    if len(fns) != streams:
        raise ValueError(f"{len(fns)} callables for {streams} streams")
    samples: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    go = threading.Barrier(streams + 1)
    errors: list[BaseException] = []

    def worker(call: Callable[[], object]) -> None:
        go.wait()
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                with lock:
                    samples.append(t1 - t0)
        except BaseException as e:   # surfaces in the caller
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=worker, args=(f,), name=f"stream-{i}", daemon=True) for i, f in enumerate(fns)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    while not stop.wait(0.01):
        elapsed = time.perf_counter() - start
        if (len(samples) >= spec.min_iters and elapsed >= spec.min_duration_s) or elapsed >= spec.max_duration_s:
            stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return samples, time.perf_counter() - start


# A throughput driver's loop: given the window's rules, keep the engine busy until they are met and return
# every request's latency under load (seconds) and the window's wall time.
Loop = Callable[[MeasureSpec], tuple[list[float], float]]


def driven_window(loop: Loop, spec: MeasureSpec, warmup_calls: int) -> validity.Window:
    """Warm up through the driver itself (`warmup_calls` requests), then one timed window of it with the
    machine's CPU state read around it; RSS samplers sleep through the window."""
    loop(spec.model_copy(update={"min_iters": max(1, warmup_calls), "min_duration_s": 0}))
    with samplers_asleep():
        before, started = validity.read_cpu(), time.time()
        samples, wall = loop(spec)
        after, ended = validity.read_cpu(), time.time()
    cpu = validity.interference(before, after) if before and after else None
    return validity.Window(samples_s=samples, duration_s=wall, cpu=cpu, started=started, ended=ended,
                           pid=os.getpid(), energy_reason="energy: not read in the throughput scenario")


def throughput_window(fn: Callable[[], object] | Sequence[Callable[[], object]], spec: MeasureSpec,
                      streams: int) -> validity.Window:
    """The generic throughput driver: `streams` threads calling the engine concurrently (concurrent_loop)."""
    return driven_window(lambda s: concurrent_loop(fn, s, streams), spec, max(streams, spec.warmup_iters))


def measure_windows(fn: Callable[[], object], spec: MeasureSpec, windows: int,
                    gpu_index: Optional[int] = None) -> list[validity.Window]:
    """Warm up once, then `windows` timed windows back to back in this process."""
    warm_up(fn, spec.warmup_iters)
    gpu = validity.GpuWatch(gpu_index) if gpu_index is not None else None
    meter = EnergyMeter(gpu_index)
    try:
        return [timed_window(fn, spec, gpu, meter) for _ in range(windows)]
    finally:
        meter.close()
        if gpu is not None:
            gpu.close()


def rss_mb() -> float:
    """Current resident set size of this process, from /proc (cheap enough to sample every few ms)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        import psutil
        return psutil.Process().memory_info().rss / 2**20


def hwm_mb() -> float:
    """This process's own peak RSS since start or the last reset (VmHWM of its address space). Not
    ru_maxrss: that keeps the peak of the process it was forked from across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's high-water mark to the current RSS, so a peak covers one window.

    Linux only (/proc/self/clear_refs, value 5); returns False where that is refused, and the
    kernel peak then covers the whole process life (an upper bound).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Samples RSS from a thread every `interval_s` while active; `peak_mb` also consults the
    kernel's peak (VmHWM), which catches spikes shorter than the sampling interval."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.sampled_peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        self.sampled_peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            _AWAKE.wait()   # asleep, not polling, through every timed loop
            self.sampled_peak_mb = max(self.sampled_peak_mb, rss_mb())
            self.samples += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sampled_peak_mb = max(self.sampled_peak_mb, rss_mb())

    @property
    def peak_mb(self) -> float:
        return max(self.sampled_peak_mb, hwm_mb())
