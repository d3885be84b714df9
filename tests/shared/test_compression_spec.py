"""Compression entries: every method and its parameter, and the errors that name the entry."""
import pytest

from fleetbench.shared.errors import SweepError
from fleetbench.shared.sweep import CompressionSpec, parse_sweep

BASE = {
    "name": "t",
    "models": [{"name": "m", "source": "timm:resnet18", "num_classes": 10, "input_size": [3, 32, 32]}],
    "backends": ["pytorch"],
}


def error_of(entries) -> str:
    with pytest.raises(SweepError) as e:
        parse_sweep({**BASE, "compression": entries}, "sweep.yaml")
    return str(e.value)


@pytest.mark.parametrize("text,method,param", [
    ("none", "none", None), ("fp16", "fp16", None), ("bf16", "bf16", None),
    ("int8-dynamic", "int8-dynamic", None), ("int8-static", "int8-static", None),
    ("prune-50", "prune", 50.0), ("prune-12.5", "prune", 12.5), ("prune-channels-30", "prune-channels", 30.0),
    ("cluster-32", "cluster", 32),
])
def test_every_method_parses_and_round_trips(text, method, param):
    spec = CompressionSpec.parse(text)
    assert spec.method == method
    assert (spec.percent if method.startswith("prune") else spec.clusters) == param
    assert spec.name == text
    assert CompressionSpec.parse(spec.name) == spec


def test_mapping_form_with_layers():
    spec = CompressionSpec.parse({"method": "prune", "percent": 40, "layers": "linear"})
    assert spec.name == "prune-40@linear"


@pytest.mark.parametrize("entry,expect", [
    ("cluster-1", "compression[1]: clusters must be in [2, 65536]"),
    ("cluster-2.5", "compression[1]: cluster count must be an integer"),
    ("prune-0", "compression[1]: percent must be in (0, 100)"),
    ("prune-channels-100", "compression[1]: percent must be in (0, 100)"),
    ("prune", "compression[1]: unknown method 'prune'"),
    ("int4", "compression[1]: unknown method 'int4'"),
    ({"method": "prune", "clusters": 4}, "compression[1]: prune needs percent"),
    ({"method": "cluster", "clusters": 8, "percent": 5}, "compression[1]: cluster does not take percent"),
    ({"method": "fp16", "layers": "conv"}, "compression[1]: fp16 does not take layers"),
    ({"method": "cluster", "clusters": 8, "layers": "attention"}, "compression[1]"),
    ({"method": "cluster", "k": 8}, "compression[1]"),
    (32, "compression[1]: expected a string"),
])
def test_invalid_entries_name_their_index(entry, expect):
    assert expect in error_of(["none", entry])


def test_duplicate_after_canonicalisation():
    assert "compression: duplicate entry" in error_of(["cluster-32", {"method": "cluster", "clusters": 32}])


def test_compression_example_validates_with_every_method():
    from fleetbench.shared.sweep import load_sweep
    s = load_sweep("examples/compression.yaml")
    methods = {c.method for c in s.compression}
    assert methods == {"none", "fp16", "bf16", "int8-dynamic", "int8-static", "prune", "prune-channels", "cluster"}
    assert s.models[0].input_size == (3, 224, 224)
