"""`coordinator run --dry-run`: the plan per node, asked of the node's own cache, with nothing run."""
import io

import duckdb  # noqa: F401  (the store is never opened: nothing may be written)
import pytest
import yaml

from tests.conftest import DEMO_CHECKPOINT

pytestmark = pytest.mark.slow


def test_dry_run_counts_preparations_and_sees_what_a_job_left_in_the_cache(tmp_path, monkeypatch):
    from fleetbench.agent.runner import run_job
    from fleetbench.coordinator.dryrun import dry_run
    from fleetbench.shared.job import Job
    from fleetbench.shared.sweep import load_sweep

    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))   # before Ray starts: workers inherit it
    spec = {"name": "dry", "models": [{"name": "digits", "source": "timm:test_resnet", "checkpoint": str(DEMO_CHECKPOINT),
                                       "num_classes": 10, "input_size": [3, 32, 32]}],
            "dataset": {"kind": "digits", "limit": 16}, "compression": ["none", "cluster-16"],
            "backends": ["onnxruntime", "openvino"], "batch_sizes": [1, 8],
            "measure": {"warmup_iters": 1, "min_iters": 3, "min_duration_s": 0, "max_duration_s": 1}}
    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = io.StringIO()
    [(node_key, first)] = dry_run(str(path), out=out).items()
    text = out.getvalue()
    assert "dry run: nothing is prepared or measured" in text and f"node {node_key}" in text
    assert first["measurements"] == 8
    # one dataset and reference; one compressed model; one ONNX per network (dynamic batch axis) for both
    # engines; one artifact per engine and network (shared by both batch sizes); predictions per row
    assert first["preparations"] == {"dataset": (1, 0), "reference": (1, 0), "compressed": (1, 0), "onnx": (2, 0),
                                     "engines": (4, 0), "predictions": (8, 0)}
    assert not (tmp_path / "r.duckdb").exists()

    sweep = load_sweep(str(path))
    job = Job(sweep="dry", model=sweep.models[0], dataset=sweep.dataset, compression=sweep.compression[0],
              backend="onnxruntime", device="cpu", batch_size=1, measure=sweep.measure, node_key=node_key)
    assert run_job(job).status == "ok"
    [second] = dry_run(str(path), out=io.StringIO()).values()
    assert second["preparations"]["dataset"] == (1, 1) and second["preparations"]["reference"] == (1, 1)
    assert second["preparations"]["engines"] == (4, 1) and second["preparations"]["predictions"] == (8, 1)
    assert second["preparations"]["onnx"] == (2, 1)   # openvino still needs the shared fp32 export: cached
