"""Every validity rule on synthetic samples and synthetic /proc/stat readings; NVML throttling on a FAKE NVML."""
import dataclasses
import os
import sys

import numpy as np
import pytest

from fleetbench.agent import measure, validity
from fleetbench.agent.measuring import timed
from fleetbench.shared.job import Job, Result
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
from tests.fixtures.fake_gpu import FakeGpu, fake_pynvml

SPEC = MeasureSpec(min_iters=50, min_duration_s=1.0, max_duration_s=5, p99_min_samples=100, max_cv_pct=10,
                   max_other_cpu_cores=0.25, max_steal_pct=5)
STEADY = list(np.random.default_rng(0).normal(0.010, 0.0002, 200))    # 10 ms, cv 2%, 2 s
QUIET = validity.Interference(other_cpu_cores=0.05, steal_pct=0.0)


def window(samples=STEADY, duration=None, cpu=QUIET, gpu=()):
    return validity.Window(samples_s=samples, duration_s=sum(samples) if duration is None else duration,
                           cpu=cpu, gpu_reasons=gpu, started=1000.0, ended=1000.0 + sum(samples))


def stat(user, nice, system, idle, iowait=0, irq=0, softirq=0, steal=0):
    return (f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\n"
            f"cpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n")


def test_a_clean_window_is_valid():
    assert validity.judge(window(), SPEC) == []
    assert validity.judge_tail(200, SPEC) == []


def test_min_iters_and_min_duration_each_fire():
    short = STEADY[:20]
    assert validity.judge(window(short, duration=2.0), SPEC) == ["min_iters not reached (20 < 50)"]
    assert validity.judge(window(STEADY[:60], duration=0.6), SPEC) == ["min_duration_s not reached (0.60 s < 1 s)"]


def test_a_loop_cut_at_max_duration_is_marked_not_hidden():
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

        def work(self):
            self.t += 0.25    # a slow engine: 20 calls fit the 5 s cap, min_iters wants 50
    clock = Clock()
    samples = measure.time_loop(clock.work, SPEC, clock=clock, warmup=False)
    assert len(samples) == 20
    reasons = validity.judge(window(samples, duration=5.0), SPEC)
    assert reasons == ["min_iters not reached (20 < 50)"]
    assert validity.judge_tail(len(samples), SPEC) == ["p99 from 20 samples (needs 100)"]


def test_cv_bound():
    rng = np.random.default_rng(1)
    noisy = list(rng.lognormal(np.log(0.010), 0.5, 200))
    [reason] = validity.judge(window(noisy), SPEC)
    assert reason.startswith("cv ") and reason.endswith("% > 10%")
    assert validity.cv_pct(noisy) > 40 and validity.cv_pct(STEADY) < 3
    assert validity.cv_pct([0.01]) is None


def test_proc_stat_parsing_and_interference_from_synthetic_readings():
    text = stat(1000, 10, 200, 5000, iowait=30, irq=5, softirq=5, steal=40)
    busy, idle, steal = validity.parse_proc_stat(text, hz=100)
    assert (busy, idle, steal) == (pytest.approx(12.2), pytest.approx(50.3), pytest.approx(0.4))
    with pytest.raises(ValueError):
        validity.parse_proc_stat("intr 1\n")
    # 2 s on 2 CPUs = 400 ticks: 380 busy, of which this process used 1.9 s; others 1.9 s -> 0.95 cores
    a = validity.CpuTimes(*validity.parse_proc_stat(stat(1000, 0, 0, 5000), hz=100), own_s=10.0, wall=50.0)
    b = validity.CpuTimes(*validity.parse_proc_stat(stat(1300, 0, 80, 5020), hz=100), own_s=11.9, wall=52.0)
    got = validity.interference(a, b)
    assert got.other_cpu_cores == pytest.approx(0.95)
    assert got.steal_pct == pytest.approx(0.0)
    [reason] = validity.judge(window(cpu=got), SPEC)
    assert reason == "other processes used 0.95 cores during the window (> 0.25)"
    # the job alone: all busy time is its own
    c = validity.CpuTimes(*validity.parse_proc_stat(stat(1190, 0, 0, 5210), hz=100), own_s=11.9, wall=52.0)
    assert validity.interference(a, c).other_cpu_cores == pytest.approx(0.0)


def test_steal_from_synthetic_readings():
    a = validity.CpuTimes(*validity.parse_proc_stat(stat(1000, 0, 0, 5000, steal=100), hz=100), own_s=0, wall=0)
    b = validity.CpuTimes(*validity.parse_proc_stat(stat(1150, 0, 0, 5200, steal=150), hz=100), own_s=1.5, wall=2)
    got = validity.interference(a, b)
    assert got.steal_pct == pytest.approx(100 * 50 / 400)
    assert validity.judge(window(cpu=got), SPEC) == ["cpu steal 12% > 5%"]


def test_real_proc_stat_reading_moves_forward():
    a = validity.read_cpu()
    sum(i * i for i in range(200_000))
    b = validity.read_cpu()
    assert b.busy_s >= a.busy_s and b.own_s > a.own_s and b.wall > a.wall


def test_gpu_throttle_reasons_fake_nvml(monkeypatch):
    gpu = FakeGpu(throttle=[0x0, 0x20 | 0x4], sm_mhz=[1980, 1410])
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([gpu]))
    watch = validity.GpuWatch(0)
    watch.read()
    watch.read()
    reasons = watch.window_reasons()
    assert reasons == ["GPU clocks throttled: power cap, thermal (software) (SM 1410 of 1980 MHz)"]
    watch.read()          # the next window: no reason (idle and app-clock bits are not interference)
    gpu.throttle.append(0x1 | 0x2)
    watch.read()
    assert watch.window_reasons() == []
    watch.close()
    assert validity.judge(window(gpu=tuple(reasons)), SPEC) == reasons


def test_gpu_watch_without_nvml_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error="Driver Not Loaded"))
    watch = validity.GpuWatch(0)
    watch.read()
    assert watch.window_reasons() == [] and "Driver Not Loaded" in watch.reason


def make_job(spec=SPEC):
    model = ModelSpec(name="m", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32))
    return Job(sweep="t", model=model, dataset=DatasetSpec(), compression=CompressionSpec(method="none"),
               backend="pytorch", device="cpu", batch_size=2, measure=spec)


def record(windows, job):
    """The row `timed` makes of `windows` for `job`, and its notes."""
    rec, notes = timed(windows, job)
    return Result.for_job(job, **dataclasses.asdict(rec)), notes


def test_record_windows_fills_the_row_from_several_windows():
    job = make_job()
    slow = [s * 1.5 for s in STEADY[:100]]
    res, _ = record([window(STEADY[:100]), window(slow, cpu=validity.Interference(0.9, 0.0))], job)
    assert res.repeats == 2 and res.window_iters == [100, 100] and res.iterations == 200
    assert res.samples_ms == pytest.approx([s * 1e3 for s in STEADY[:100] + slow])
    assert res.window_p50s_ms == pytest.approx([np.median(STEADY[:100]) * 1e3, np.median(slow) * 1e3])
    assert res.latency_p50_ms == pytest.approx(np.mean(res.window_p50s_ms))   # median of two
    assert res.latency_p50_ci_low_ms == pytest.approx(min(res.window_p50s_ms))
    assert res.latency_p50_ci_high_ms == pytest.approx(max(res.window_p50s_ms))
    assert res.valid is False
    assert res.validity == "window 2: other processes used 0.90 cores during the window (> 0.25)"
    assert res.other_cpu_cores == pytest.approx(0.9) and res.cv_pct < 3
    assert res.throughput_ips == pytest.approx(2 * 200 / (sum(STEADY[:100]) + sum(slow)))


def test_record_windows_one_clean_window_is_valid_with_an_interval_from_its_samples():
    job = make_job()
    res, _ = record([window()], job)
    assert res.valid is True and res.validity is None and res.repeats == 1
    assert res.latency_p50_ci_low_ms < res.latency_p50_ms < res.latency_p50_ci_high_ms


def test_the_busiest_other_processes_are_named_and_this_one_never():
    before = {1: ("init", 100), 42: ("spin", 1000), 43: ("ray::raylet", 50), 77: ("me", 0), 90: ("old", 5)}
    after = {1: ("init", 101), 42: ("spin", 1196), 43: ("ray::raylet", 60), 77: ("me", 400), 91: ("new", 80),
             90: ("reused", 50)}
    top = validity.top_others(before, after, wall_s=2.0, hz=100, me=77)
    assert top == (("spin", 42, pytest.approx(0.98)), ("ray::raylet", 43, pytest.approx(0.05)),
                   ("init", 1, pytest.approx(0.005)))
    cpu = validity.Interference(other_cpu_cores=1.1, steal_pct=0.0, top=top)
    assert validity.judge(window(cpu=cpu), SPEC) == [
        "other processes used 1.10 cores during the window (> 0.25): spin pid 42 0.98, ray::raylet pid 43 0.05"]
    real = validity.process_ticks()
    assert os.getpid() in real and all(t >= 0 for _, t in real.values())
