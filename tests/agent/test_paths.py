"""The one function that resolves the node's cache folder."""
from pathlib import Path

from fleetbench.agent.paths import cache_dir


def test_cache_dir_reads_fleetbench_cache_and_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    assert cache_dir("engines") == tmp_path / "engines"
    monkeypatch.setenv("FLEETBENCH_CACHE", "~/fb")
    assert cache_dir() == Path.home() / "fb"


def test_an_empty_fleetbench_cache_means_the_default_not_the_working_directory(monkeypatch):
    monkeypatch.setenv("FLEETBENCH_CACHE", "")
    assert cache_dir("weights") == Path.home() / ".cache" / "fleetbench" / "weights"
    monkeypatch.delenv("FLEETBENCH_CACHE")
    assert cache_dir("tensorrt") == Path.home() / ".cache" / "fleetbench" / "tensorrt"


def test_every_cache_user_goes_through_cache_dir(monkeypatch, tmp_path):
    from fleetbench.agent import cache, models
    from fleetbench.agent.backends import tensorrt
    from fleetbench.agent.backends.onnxruntime import cuda
    monkeypatch.setenv("FLEETBENCH_CACHE", "")
    home = Path.home() / ".cache" / "fleetbench"
    assert cache.cache_root() == home / "engines" and tensorrt.cache_root() == home / "tensorrt"
    assert cuda.ort_trt_cache() == home / "ort-tensorrt" and models.weights_cache_dir() == home / "weights"
