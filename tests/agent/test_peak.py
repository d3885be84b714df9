"""FLOPs per item and the node's GEMM peak: counted and measured for real, on the demo model."""
import json
import sys

import pytest

from fleetbench.agent import peak
from fleetbench.agent.runner import run_job
from fleetbench.shared.sweep import MeasureSpec
from tests.agent.test_runner import make_job
from tests.fixtures.fake_gpu import FakeGpu, fake_pynvml


def test_flops_of_a_known_layer():
    import torch
    lin = torch.nn.Linear(100, 10)
    assert peak.model_flops(lin, (100,)) == 2 * 100 * 10
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert peak.model_flops(conv, (3, 16, 16)) == 2 * 3 * 9 * 8 * 16 * 16


def test_gemm_peak_is_plausible_and_cached_only_when_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    rate = peak.gemm_gflops("fp32", threads=1, n=256, seconds=0.2)
    assert rate > 0.5        # any x86 core does several GFLOP/s in fp32
    got, notes = peak.node_peak("fp32", 1, "cpu", max_other_cores=1e9)   # any load counts as quiet here
    assert got > 0 and notes == []
    cached = json.loads((tmp_path / "peaks.json").read_text())
    assert list(cached.values()) == [got]
    assert peak.node_peak("fp32", 1, "cpu", 1e9) == (got, [])           # from the cache now
    (tmp_path / "peaks.json").unlink()
    got, notes = peak.node_peak("fp32", 1, "cpu", max_other_cores=-1)  # every machine is too busy for this
    assert got > 0 and "not cached" in notes[0] and not (tmp_path / "peaks.json").exists()
    assert peak.node_peak("fp64", 1, "cpu", 1e9) == (None, ["peak: no GEMM probe for dtype fp64"])


def test_a_row_shows_its_share_of_the_peak(demo_model_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    spec = MeasureSpec(warmup_iters=2, min_iters=20, min_duration_s=0.2, max_duration_s=10, threads=1,
                       max_other_cpu_cores=4096)
    r = run_job(make_job(demo_model_spec, spec, backend="onnxruntime", batch_size=8))
    assert r.status == "ok", r.error
    assert 0.001 < r.gflops < 1           # a small ResNet on 32x32 inputs (8.2 MFLOPs)
    assert r.achieved_gflops_s == pytest.approx(r.gflops * r.throughput_ips)
    assert r.peak_gflops_s > r.achieved_gflops_s        # the GEMM peak is above what a small model reaches
    assert 0 < r.efficiency_pct < 100
    assert (r.energy_j_per_item or 0) > 0 or "energy_j_per_item left empty" in r.notes   # RAPL where readable


def test_gpu_peak_is_timed_on_the_rows_device_and_kept_under_that_gpu_fake(tmp_path, monkeypatch):
    """FAKE GPUs: two NVML devices (tests/fixtures/fake_gpu.py) and torch's CUDA calls recorded; the matrix
    multiply itself runs on the CPU. A cuda:1 row's peak is timed on cuda:1 and kept under that GPU's UUID."""
    import torch
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([FakeGpu(uuid="GPU-aaa"), FakeGpu(uuid="GPU-bbb")]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    seen = []
    randn = torch.randn

    def on_device(*size, device=None, **kw):
        seen.append(("tensor", str(device)))
        return randn(*size, **kw)

    monkeypatch.setattr(torch, "randn", on_device)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(("sync", str(device))))
    got, notes = peak.node_peak("fp32", 1, "cuda:1", max_other_cores=1e9)
    assert got > 0 and notes == []
    assert ("tensor", "cuda:1") in seen and {device for _, device in seen} == {"cuda:1"}
    keys = json.loads((tmp_path / "peaks.json").read_text())
    assert [k.split("|")[1] for k in keys] == ["cuda:1:GPU-bbb"]
