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
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)   # the fake GPUs are all the node has
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
    assert g is None and "CUDA device 5" in reason
    assert (gpu.device_index("cuda"), gpu.device_index("cuda:3"), gpu.device_index("cpu")) == (0, 3, 0)


def test_process_vram_fake_nvml_counts_only_this_process(nvml):
    nvml([FakeGpu(procs=[FakeProc(ME, 300 * MB), FakeProc(ME + 1, 9000 * MB)]),
          FakeGpu(procs=[FakeProc(ME, 50 * MB)])])
    assert gpu.process_vram_mb(index=0) == pytest.approx(300)
    assert gpu.process_vram_mb(index=1) == pytest.approx(50)
    assert gpu.process_vram_mb() == pytest.approx(350)          # every GPU this process touches
    assert gpu.process_vram_mb(index=0, pid=ME + 1) == pytest.approx(9000)


@pytest.mark.parametrize("procs", [
    [FakeProc(ME + 1, 100 * MB)],       # a container without the host PID namespace: NVML lists host pids only
    [FakeProc(ME, None)],               # NVML_VALUE_NOT_AVAILABLE
])
def test_process_vram_fake_nvml_falls_back_to_the_device_delta_and_says_so(nvml, procs):
    fake = nvml([FakeGpu(procs=procs, used_mb=1000)])
    watch = gpu.ProcessVram(index=0)
    assert watch.sample() == pytest.approx(0) and watch.source == "nvml-device-delta"
    fake.gpus[0].used_mb = 1600
    assert watch.peak() == pytest.approx(600) and "no memory for pid" in watch.reason
    watch.close()


def test_process_vram_never_mixes_the_two_figures_in_one_peak(nvml):
    fake = nvml([FakeGpu(procs=[], used_mb=1000)])
    watch = gpu.ProcessVram(index=0)
    fake.gpus[0].used_mb = 9000                       # delta 8000 while NVML lists no process...
    assert watch.peak() == pytest.approx(8000) and watch.source == "nvml-device-delta"
    fake.gpus[0].procs = [FakeProc(ME, 300 * MB)]     # ...then lists this one: the peak restarts with it
    assert watch.peak() == pytest.approx(300) and watch.source == "nvml-process"
    watch.close()


@pytest.mark.parametrize("visible, index, expect", [
    ("", 1, ("index", 1)),                              # unset: CUDA and NVML agree
    ("2,3", 1, ("index", 3)),                           # deploy/start-node.sh: CUDA device 1 is NVML GPU 3
    ("GPU-aaa,GPU-bbb", 1, ("uuid", "GPU-bbb")),
    ("MIG-xyz", 0, ("uuid", "MIG-xyz")),
])
def test_cuda_to_nvml_honours_cuda_visible_devices(visible, index, expect):
    assert gpu.cuda_to_nvml(index, visible=visible) == expect


def test_cuda_to_nvml_prefers_the_runtime_uuid_and_rejects_invisible_devices():
    assert gpu.cuda_to_nvml(0, visible="3", cuda_uuid="1234-abcd") == ("uuid", "GPU-1234-abcd")
    with pytest.raises(ValueError, match="not visible"):
        gpu.cuda_to_nvml(2, visible="0,1")


def test_process_vram_fake_nvml_watches_the_gpu_cuda_visible_devices_names(nvml, monkeypatch):
    nvml([FakeGpu(procs=[FakeProc(ME, 100 * MB)]), FakeGpu(procs=[FakeProc(ME, 40 * MB)]),
          FakeGpu(uuid="GPU-third", procs=[FakeProc(ME, 7 * MB)])])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu.process_vram_mb(index=0) == pytest.approx(40)          # CUDA 0 is NVML 1, not NVML 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-third,0")
    assert gpu.process_vram_mb(index=0) == pytest.approx(7)           # by UUID
    assert gpu.process_vram_mb(index=1) == pytest.approx(100)


def test_nvidia_gpu_fake_nvml_is_the_cuda_device_not_the_nvml_index(nvml, monkeypatch):
    nvml([FakeGpu(name="A"), FakeGpu(name="B"), FakeGpu(name="C", uuid="GPU-c")])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert gpu.nvidia_gpu(0)[0]["name"] == "C" and gpu.nvidia_gpu(1)[0]["name"] == "B"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-c")
    assert gpu.nvidia_gpu(0)[0]["name"] == "C"
    assert "not visible" in gpu.nvidia_gpu(1)[2]


def test_fake_pynvml_refuses_names_nvidia_ml_py_lacks(nvml):
    fake = nvml([FakeGpu()])
    with pytest.raises(AttributeError, match="not in nvidia-ml-py"):
        _ = fake.nvmlDeviceGetProcessMemory


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
