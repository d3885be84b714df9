"""Values that become names and files that must be models: what `validate` and the rows say.

A compression's name is its exact value (`prune-99.9999999`, never `prune-100`); an `onnx:` model that
holds no graph (an empty file, another kind of file) is refused in one line before Ray starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from fleetbench.coordinator.plan import plan
from fleetbench.shared.job import Job, NodeProfile, Result
from fleetbench.shared.sweep import CompressionSpec, parse_sweep

from .test_db_cases import cli
from .test_sweep_cases import GOOD


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    from fleetbench.coordinator import cluster

    def refuse(*a, **k):
        raise AssertionError("Ray was started for a sweep that is refused")
    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.mark.parametrize("entry,name", [
    ("prune-99.9999999", "prune-99.9999999"),
    ("prune-50", "prune-50"),
    ("prune-12.5", "prune-12.5"),
    ("prune-channels-33.3333333", "prune-channels-33.3333333"),
    ({"method": "prune", "percent": 33.333333333333336}, "prune-33.333333333333336"),
    ({"method": "prune", "percent": 99.99999999999, "layers": "conv"}, "prune-99.99999999999@conv"),
    ("prune-0.000000001", "prune-0.000000001"),
])
def test_a_compression_name_is_its_exact_value(entry, name):
    spec = CompressionSpec.parse(entry)
    assert spec.name == name and float(name.removeprefix(spec.method + "-").split("@")[0]) == spec.percent


def test_prune_just_under_100_is_stored_and_reported_as_given(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("compression: [none]", "compression: [none, prune-99.9999999]"))
    rc, _ = cli(capsys, "validate", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 0
    s = parse_sweep({"name": "t", "models": [{"name": "m", "source": "timm:test_resnet", "num_classes": 10}],
                     "backends": ["onnxruntime"], "compression": ["prune-99.9999999"]})
    node = NodeProfile(hostname="h", kinds=["cpu"], cpu_model="c", cores=2, logical_cpus=2, isa_flags=[], ram_mb=1.0,
                       node_id="a" * 56, node_key="n", backends={"onnxruntime": {"available": True, "devices": ["cpu"]}})
    job: Job = plan(s, [node]).jobs[0]
    assert Result.for_job(job).compression == "prune-99.9999999"


def test_close_percents_are_two_entries_not_a_duplicate(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("compression: [none]", "compression: [prune-12.3456781, prune-12.3456789]"))
    rc, lines = cli(capsys, "validate", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 0 and lines == []


def onnx_sweep(tmp_path: Path, model: Path) -> Path:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(GOOD.replace("source: timm:test_resnet", f"source: onnx:{model}"))
    return sweep


@pytest.mark.parametrize("cmd", ["validate", "run"])
def test_empty_onnx_file_is_refused_before_ray(tmp_path, capsys, cmd):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    sweep = onnx_sweep(tmp_path, model)
    rc, lines = cli(capsys, cmd, sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2
    assert lines == [f"{sweep}: models[0].source: {model}: not an ONNX model: it holds no graph (an empty file)"]
    assert not (tmp_path / "r.duckdb").exists()


def test_onnx_source_is_checked_whatever_its_suffix(tmp_path, capsys):
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x08\x07")      # a valid protobuf (ir_version 7) that holds no graph
    sweep = onnx_sweep(tmp_path, model)
    rc, lines = cli(capsys, "validate", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2 and lines == [f"{sweep}: models[0].source: {model}: not an ONNX model: it holds no graph (2 bytes)"]


def test_text_file_named_onnx_is_refused(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_text("this is a README, not a model\n")
    sweep = onnx_sweep(tmp_path, model)
    rc, lines = cli(capsys, "validate", sweep, "--db", tmp_path / "r.duckdb")
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"{sweep}: models[0].source: {model}: cannot read ONNX model (DecodeError: ")
