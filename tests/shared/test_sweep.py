import pytest

from fleetbench.shared.errors import SweepError
from fleetbench.shared.sweep import CompressionSpec, load_sweep, parse_sweep

BASE = {
    "name": "t",
    "models": [{"name": "m", "source": "timm:resnet18", "num_classes": 10, "input_size": [3, 32, 32]}],
    "backends": ["pytorch", "onnxruntime"],
}


def sweep(**over):
    d = {**BASE, **over}
    return parse_sweep(d, "sweep.yaml")


def error_of(**over) -> str:
    with pytest.raises(SweepError) as e:
        sweep(**over)
    return str(e.value)


def test_valid_sweep_has_defaults():
    s = sweep()
    assert s.batch_sizes == [1] and s.targets == ["all"] and s.dataset.kind == "digits"
    assert [c.name for c in s.compression] == ["none"]
    assert s.measure.min_iters == 50 and s.measure.threads is None


def test_demo_sweep_file_validates():
    s = load_sweep("examples/sweep.yaml")
    assert s.backends == ["pytorch", "onnxruntime", "openvino"]
    assert [c.name for c in s.compression] == ["none", "int8-static", "cluster-32"]   # before and after
    assert s.batch_sizes == [1]


def test_unknown_scheme_names_its_path():
    msg = error_of(models=[{**BASE["models"][0], "source": "tim:resnet18"}])
    assert "sweep.yaml: models[0].source: unknown scheme 'tim'" in msg


def test_unknown_key_is_an_error_with_path():
    assert "models[0].colour: unknown key" in error_of(models=[{**BASE["models"][0], "colour": "red"}])
    assert "measure.warmup: unknown key" in error_of(measure={"warmup": 3})
    assert "bogus: unknown key" in error_of(bogus=1)


def test_missing_required_field():
    assert "models[0].num_classes: required" in error_of(models=[{"name": "m", "source": "timm:x"}])


def test_unknown_backend_lists_valid_ones():
    msg = error_of(backends=["pytorch", "onnx"])
    assert "backends[1]: unknown backend 'onnx'" in msg and "onnxruntime" in msg


@pytest.mark.parametrize("entry,expect", [
    ("cluster-0", "compression[0]: clusters must be in [2, 65536]"),
    ("prune-150", "compression[0]: percent must be in (0, 100)"),
    ("quantize", "compression[0]: unknown method 'quantize'"),
    ({"method": "cluster"}, "compression[0]: cluster needs clusters"),
    ({"method": "fp16", "clusters": 3}, "compression[0]: fp16 takes no parameter"),
])
def test_invalid_compression_names_the_entry(entry, expect):
    assert expect in error_of(compression=[entry])


def test_compression_forms_parse_to_canonical_names():
    s = sweep(compression=["none", "fp16", "int8-static", "prune-50", "prune-channels-25", "cluster-32",
                           {"method": "cluster", "clusters": 16, "layers": "conv"}])
    assert [c.name for c in s.compression] == ["none", "fp16", "int8-static", "prune-50", "prune-channels-25",
                                               "cluster-32", "cluster-16@conv"]
    assert CompressionSpec.parse("cluster-32").clusters == 32


@pytest.mark.parametrize("over,expect", [
    ({"targets": ["kind:tpu"]}, "targets[0]: unknown kind 'tpu'"),
    ({"targets": ["gpu"]}, "targets[0]: bad target 'gpu'"),
    ({"batch_sizes": [1, 0]}, "batch_sizes[1]: must be greater than 0, got 0"),
    ({"batch_sizes": [1, 1]}, "duplicate entry 1"),
    ({"measure": {"min_duration_s": 5, "max_duration_s": 1}}, "measure: max_duration_s must be >= min_duration_s"),
    ({"dataset": {"kind": "imagefolder"}}, "dataset: imagefolder needs path"),
    ({"dataset": {"kind": "mnist"}}, "dataset.kind"),
    ({"models": []}, "models: "),
])
def test_other_invalid_fields(over, expect):
    assert expect in error_of(**over)


def test_checkpoint_and_pretrained_conflict():
    m = {**BASE["models"][0], "checkpoint": "a.safetensors", "pretrained": True}
    assert "models[0]: give either checkpoint or pretrained" in error_of(models=[m])


def test_duplicate_model_names():
    assert "duplicate name 'm'" in error_of(models=[BASE["models"][0], BASE["models"][0]])


def test_bad_files(tmp_path):
    with pytest.raises(SweepError, match="missing.yaml: no such file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SweepError, match=r"bad.yaml:2:1: invalid YAML"):
        load_sweep(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(SweepError, match="expected a mapping"):
        load_sweep(scalar)


def test_job_id_is_stable_and_content_based(demo_model_spec, quick_measure):
    from fleetbench.shared.job import Job
    s = sweep()
    kw = dict(sweep="t", model=demo_model_spec, dataset=s.dataset, compression=s.compression[0],
              backend="pytorch", device="cpu", batch_size=1, measure=quick_measure, node_key="a")
    a, b = Job(**kw), Job(**{**kw, "node_id": "different-ray-id"})
    assert a.job_id == b.job_id  # the Ray node id changes on restart; the measurement does not
    assert Job(**{**kw, "batch_size": 8}).job_id != a.job_id
    assert Job(**{**kw, "node_key": "b"}).job_id != a.job_id
    assert Job(**{**kw, "weights_sha256": "ff"}).job_id != a.job_id
