"""fleetbench.agent.gpu against a FAKE NVML (no GPU here): device listing, per-process VRAM, the peak sampler."""
import os
import sys
import time

import pytest

from fleetbench.agent import gpu
from tests.fixtures.fake_gpu import MB, FakeGpu, FakeProc, fake_pynvml

ME = os.getpid()


@pytest.fixture
def nvml(monkeypatch):
    def install(gpus, **kw):
        fake = fake_pynvml(gpus, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake
    return install


def test_nvidia_gpus_fake_nvml_lists_every_device(nvml):
    fake = nvml([FakeGpu(), FakeGpu(name="NVIDIA Fake T4", cc=(7, 5), total_mb=15360)])
    gpus, driver, reason = gpu.nvidia_gpus()
    assert reason is None and driver == "575.57.08"
    assert [(g["index"], g["name"], g["compute_capability"]) for g in gpus] == [
        (0, "NVIDIA Fake H200", "9.0"), (1, "NVIDIA Fake T4", "7.5")]
    assert gpus[1]["memory_mb"] == pytest.approx(15360)
    assert fake.calls["init"] == fake.calls["shutdown"] == 1


def test_nvidia_gpus_fake_nvml_init_failure_is_a_reason_not_an_error(nvml):
    nvml([], init_error="Driver Not Loaded")
    gpus, driver, reason = gpu.nvidia_gpus()
    assert gpus == [] and "no NVIDIA GPU found" in reason and "Driver Not Loaded" in reason


def test_nvidia_gpus_without_pynvml_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import fails as if not installed
    gpus, _, reason = gpu.nvidia_gpus()
    assert gpus == [] and "fleetbench[nvidia]" in reason


def test_nvidia_gpu_fake_nvml_by_index(nvml):
    nvml([FakeGpu(), FakeGpu(name="B")])
    assert gpu.nvidia_gpu(1)[0]["name"] == "B"
    g, _, reason = gpu.nvidia_gpu(5)
    assert g is None and "index 5" in reason
    assert (gpu.device_index("cuda"), gpu.device_index("cuda:3"), gpu.device_index("cpu")) == (0, 3, 0)


def test_process_vram_fake_nvml_counts_only_this_process(nvml):
    nvml([FakeGpu(procs=[FakeProc(ME, 300 * MB), FakeProc(ME + 1, 9000 * MB)]),
          FakeGpu(procs=[FakeProc(ME, 50 * MB)])])
    assert gpu.process_vram_mb(index=0) == pytest.approx(300)
    assert gpu.process_vram_mb(index=1) == pytest.approx(50)
    assert gpu.process_vram_mb() == pytest.approx(350)          # every GPU this process touches
    assert gpu.process_vram_mb(index=0, pid=ME + 1) == pytest.approx(9000)


@pytest.mark.parametrize("procs, why", [
    ([FakeProc(ME + 1, 100 * MB)], "no memory for pid"),      # e.g. a container's PID namespace
    ([FakeProc(ME, None)], "no memory for pid"),               # NVML_VALUE_NOT_AVAILABLE
])
def test_process_vram_fake_nvml_unknown_is_none_with_reason(nvml, procs, why):
    nvml([FakeGpu(procs=procs)])
    watch = gpu.ProcessVram(index=0)
    assert watch.sample() is None and why in watch.reason
    watch.close()


def test_process_vram_without_nvml_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    watch = gpu.ProcessVram(index=0).start()
    assert watch.peak() is None and "NVML unavailable" in watch.reason
    watch.close()


def test_process_vram_sampler_fake_nvml_keeps_the_peak_and_shuts_nvml_down(nvml):
    fake = nvml([FakeGpu(procs=[FakeProc(ME, 100 * MB)])])
    watch = gpu.ProcessVram(index=0, interval_s=0.002).start()
    fake.gpus[0].procs = [FakeProc(ME, 800 * MB)]       # a transient high-water mark...
    deadline = time.time() + 5
    while (watch.peak_mb or 0) < 800 and time.time() < deadline:
        time.sleep(0.005)
    fake.gpus[0].procs = [FakeProc(ME, 200 * MB)]       # ...that the sampler must not forget
    assert watch.peak() == pytest.approx(800)
    assert watch.sample() == pytest.approx(200)
    watch.close()
    assert fake.calls["init"] == fake.calls["shutdown"] == 1
    assert watch.peak() == pytest.approx(800)           # still readable after close (no more NVML calls)
