"""FLOPs per item and the node's GEMM peak: counted and measured for real, on the demo model."""
import json

import pytest

from fleetbench.agent import peak
from fleetbench.agent.runner import run_job
from fleetbench.shared.sweep import MeasureSpec
from tests.agent.test_runner import make_job


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
