"""Hostile cases for models that lie about their output, datasets smaller than the sweep says, thread counts
above what the node has, and cache keys that must follow the code a model is made by. Each asserts the exact
outcome: the row's status, stage and the numbers in its error or notes. Ray-free (agent.runner.run_job, and
the coordinator's own checks that run before Ray starts)."""
from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest

from fleetbench.agent import codekey, prepare
from fleetbench.agent.data import digits_split
from fleetbench.agent.limits import usable_cpus
from fleetbench.agent.runner import run_job
from fleetbench.agent.stages import threads_reason
from fleetbench.shared.errors import SweepError
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
from tests.conftest import DEMO_CHECKPOINT

QUICK = MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=1)
SYNTHETIC = DatasetSpec(kind="synthetic", limit=8)


def job_of(source, backend="pytorch", batch_size=1, dataset=SYNTHETIC, method="none", measure=QUICK, **model):
    spec = ModelSpec(name="m", source=source, num_classes=10, input_size=model.pop("input_size", (3, 16, 16)),
                     **model)
    return Job(sweep="t", model=spec, dataset=dataset, compression=CompressionSpec(method=method), backend=backend,
               device="cpu", batch_size=batch_size, measure=measure, node_key="local")


def lying(name, **kw):
    return run_job(job_of(f"python:tests.fixtures.bad_models:{name}", **kw))


# ---- models that lie: the reference pass at `load` checks every model's output before anything is timed ----

@pytest.mark.parametrize("model, error", [
    ("narrow", "OutputError: the model gives 5 logits per image but num_classes is 10"),
    ("wide", "OutputError: the model gives 12 logits per image but num_classes is 10"),
    ("class_ids", "OutputError: the model gives 1 logits per image but num_classes is 10"),
    ("as_tuple", "OutputError: the model returns a tuple of 2, not one array of logits (batch, num_classes): "
                 "wrap it to return the logits alone"),
    ("as_dict", "OutputError: the model returns a dict of 1, not one array of logits (batch, num_classes): "
                "wrap it to return the logits alone"),
    ("complex_logits", "OutputError: the model's output has dtype complex64, not real-valued logits"),
    ("bool_logits", "OutputError: the model's output has dtype bool, not real-valued logits"),
    ("batch_mean", "OutputError: the model's output has shape (1, 10) for a batch of 64 images: "
                   "its first axis must be the batch"),
    ("all_nan", "the fp32 model gives non-finite logits (NaN or inf) for 8 of 8 images"),
])
def test_a_model_whose_output_is_not_logits_fails_at_load(model, error):
    r = lying(model)
    assert (r.status, r.stage, r.error) == ("failed", "load", error)
    assert r.latency_p50_ms is None and r.iterations is None          # nothing was timed


def test_some_infinite_logits_fail_at_load_with_their_count():
    job = job_of("python:tests.fixtures.bad_models:some_inf")
    x = prepare.dataset(job).eval_x()
    bad = int((x[:, 0, 0, 0] > 0).sum())
    assert 0 < bad < len(x)                                           # some, not all
    r = run_job(job)
    assert (r.status, r.stage, r.error) == (
        "failed", "load", f"the fp32 model gives non-finite logits (NaN or inf) for {bad} of {len(x)} images")


def test_a_batch_axis_dropped_at_batch_size_1_fails_at_measure_before_timing():
    r = lying("batch_first_missing", batch_size=1)
    assert (r.status, r.stage, r.error) == (
        "failed", "measure", "OutputError: the model's output has shape (10,) for a batch of 1 images: "
                             "its first axis must be the batch")
    assert r.latency_p50_ms is None


def test_bf16_logits_are_read_as_numbers():
    job = job_of("python:tests.fixtures.bad_models:half_logits")
    data = prepare.dataset(job)
    ref = prepare.reference(job, None, data, threads=1)
    assert len(ref.pred) == 8 and ref.pred.min() >= 0 and ref.pred.max() < 10


def test_logits_that_overflow_an_fp16_engine_fail_at_evaluate_with_their_count():
    import torch

    from tests.fixtures.bad_models import overflows_in_fp16
    job = job_of("python:tests.fixtures.bad_models:overflows_in_fp16", method="fp16", batch_size=8)
    x = prepare.dataset(job).eval_x(mmap=False)
    with torch.inference_mode():
        fp32 = overflows_in_fp16()(torch.from_numpy(x)).abs().amax(dim=1).numpy()
    assert np.isfinite(fp32).all()
    over = int((fp32 > 65504).sum())
    assert over > 0 and not ((0.99 * 65504 < fp32) & (fp32 < 1.01 * 65504)).any()   # none on the edge
    r = run_job(job)
    assert (r.status, r.stage, r.error) == (
        "failed", "evaluate", f"pytorch gives non-finite logits (NaN or inf) for {over} of {len(x)} images")
    assert r.latency_p50_ms is not None and r.iterations >= 3         # what was timed stays in the row


def test_constant_output_and_a_limit_above_the_dataset_are_said_in_the_notes():
    available = len(digits_split()[1])
    job = job_of("python:tests.fixtures.bad_models:constant", dataset=DatasetSpec(kind="digits", limit=10_000_000),
                 input_size=(3, 8, 8))
    r = run_job(job)
    assert r.status == "ok", r.error
    assert f"dataset.limit 10000000 > {available} images: using {available}" in r.notes
    assert f"the fp32 model predicts class 3 for all {available} images" in r.notes
    assert r.eval_samples == available


# ---- datasets smaller than the sweep says ------------------------------------------------------------------

def image_folder(root, classes, per_class=3):
    from PIL import Image
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    return root


def sweep_file(tmp_path, dataset, name="s.yaml"):
    import yaml
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "name": "s", "models": [{"name": "m", "source": "timm:test_resnet", "checkpoint": str(DEMO_CHECKPOINT),
                                 "num_classes": 10, "input_size": [3, 32, 32]}],
        "dataset": dataset, "backends": ["pytorch"]}))
    return path


def validate(path, capsys):
    """`coordinator validate PATH` (the CLI's own entry point, in this process: it starts no Ray)."""
    from fleetbench.coordinator.cli import main
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_image_folder_of_one_class_is_refused_before_ray_starts(tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", ["cat"])
    code, out, err = validate(sweep_file(tmp_path, {"kind": "imagefolder", "path": str(folder)}), capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"coordinator: {tmp_path / 's.yaml'}: dataset.path: {folder}: images in 1 class folder ('cat') of 1; "
        "accuracy and F1 need images of at least 2 classes"]


def test_two_class_folders_of_which_one_is_empty_are_one_class(tmp_path):
    from fleetbench.coordinator.run import preflight
    folder = image_folder(tmp_path / "imgs", ["cat"])
    (folder / "dog").mkdir()
    with pytest.raises(SweepError, match=r"dataset.path: .*: images in 1 class folder \('cat'\) of 2;"):
        preflight(str(sweep_file(tmp_path, {"kind": "imagefolder", "path": str(folder)})))


def test_a_one_class_folder_given_to_the_agent_fails_at_load(tmp_path):
    folder = image_folder(tmp_path / "imgs", ["cat"])
    r = run_job(job_of("timm:test_resnet", dataset=DatasetSpec(kind="imagefolder", path=str(folder)),
                       checkpoint=str(DEMO_CHECKPOINT), input_size=(3, 32, 32)))
    assert (r.status, r.stage) == ("failed", "load")
    assert r.error == f"{folder}: images in 1 class folder ('cat') of 1; accuracy and F1 need images of at least 2 classes"


def test_validate_says_what_a_limit_above_the_dataset_uses(tmp_path, capsys):
    available = len(digits_split()[1])
    code, out, err = validate(sweep_file(tmp_path, {"kind": "digits", "limit": 10_000_000}), capsys)
    assert code == 0, err
    assert f"{tmp_path / 's.yaml'}: dataset.limit {10_000_000} > {available} images: using {available}" \
        in out.splitlines()


def test_an_image_folder_limit_counts_the_images_left_after_calibration(tmp_path):
    from fleetbench.coordinator.run import preflight
    folder = image_folder(tmp_path / "imgs", ["cat", "dog"], per_class=5)   # 10 images, 4 for calibration
    checked = preflight(str(sweep_file(tmp_path, {"kind": "imagefolder", "path": str(folder), "limit": 7,
                                                  "calibration": 4})))
    assert checked.notes == ["dataset.limit 7 > 6 images: using 6"]
    fits = preflight(str(sweep_file(tmp_path, {"kind": "imagefolder", "path": str(folder), "limit": 6,
                                               "calibration": 4}, name="fits.yaml")))
    assert fits.notes == []


# ---- threads above the node's usable CPUs ------------------------------------------------------------------

def test_threads_above_the_usable_cpus_are_refused_before_any_stage():
    usable = usable_cpus()
    many = MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=1, threads=1024)
    r = run_job(job_of("timm:test_resnet", measure=many, checkpoint=str(DEMO_CHECKPOINT), input_size=(3, 32, 32)))
    assert (r.status, r.stage, r.ram_peak_mb, r.reused) == ("unsupported", None, None, None)
    assert r.error == (f"measure.threads 1024 > {usable} usable CPUs on this node (its affinity mask and CPU "
                       f"quota): set measure.threads to at most {usable}, or leave it out")


def test_the_threads_check_takes_the_usable_count_it_is_given():
    assert threads_reason(2, 2) is None and threads_reason(1, 64) is None
    assert threads_reason(3, 2).startswith("measure.threads 3 > 2 usable CPUs")
    assert threads_reason(65, 64).endswith("at most 64, or leave it out")


# ---- cache keys follow the code a python: model is made by ----------------------------------------------------

MODULE = '''
import torch
from torch import nn


def net(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, {width}, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear({width}, num_classes))
'''


@pytest.fixture
def user_tree(tmp_path, monkeypatch):
    """A folder on sys.path for the user's own modules; what a test imported from it is forgotten after."""
    root = tmp_path / "user"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_editing_the_factory_between_two_runs_is_a_cache_miss_with_new_figures(user_tree):
    write(user_tree / "widthnet.py", MODULE.format(width=8))
    job = job_of("python:widthnet:net", backend="onnxruntime")
    first = run_job(job)
    assert first.status == "ok", first.error
    write(user_tree / "widthnet.py", MODULE.format(width=256))
    del sys.modules["widthnet"]             # a job process is fresh: it imports the module as it is now
    second = run_job(job)
    assert second.status == "ok", second.error
    assert first.reused.endswith("made reference, onnx, artifact, predictions"), first.reused
    assert second.reused == "reused dataset; made reference, onnx, artifact, predictions"
    params = {w: 3 * 9 * w + w + w * 10 + 10 for w in (8, 256)}      # conv and linear weights and biases
    grown = (second.size_mb - first.size_mb) * 2**20
    assert 0.95 < grown / (4 * (params[256] - params[8])) < 1.05       # fp32: 4 bytes a parameter
    assert second.gflops > 20 * first.gflops                          # 32x the conv's channels


def test_a_helper_module_the_model_imports_is_in_the_key(user_tree):
    write(user_tree / "helpers.py", "WIDTH = 8\n")
    write(user_tree / "usesit.py", "from helpers import WIDTH\n\ndef net(num_classes=10):\n    return WIDTH\n")
    job = job_of("python:usesit:net")
    before = prepare.model_key(job)
    write(user_tree / "helpers.py", "WIDTH = 256\n")
    assert prepare.model_key(job) != before


def test_package_code_reached_by_relative_lazy_and_submodule_imports_is_in_the_key(user_tree):
    pkg = user_tree / "zoo"
    write(pkg / "__init__.py", "SCALE = 1\n")
    write(pkg / "models.py", """
        from . import blocks
        from .layers import conv


        def net(num_classes=10):
            from zoo.heads import head     # imported inside the factory
            return head
        """)
    for name in ("blocks", "layers", "heads"):
        write(pkg / f"{name}.py", "X = 1\n")
    job = job_of("python:zoo.models:net")
    keys = {prepare.model_key(job)}
    for edited in ("__init__", "blocks", "layers", "heads"):
        write(pkg / f"{edited}.py", f"X = 2  # {edited}\n")
        keys.add(prepare.model_key(job))
    assert len(keys) == 5                                             # every edit, a new key
    write(pkg / "unrelated.py", "X = 3\n")
    assert prepare.model_key(job) in keys                             # a file nobody imports: the same key


def test_an_edit_that_keeps_size_and_mtime_is_a_new_key(user_tree):
    path = write(user_tree / "samesize.py", MODULE.format(width=8))
    job = job_of("python:samesize:net")
    before, st = prepare.model_key(job), path.stat()
    path.write_text(MODULE.format(width=9))                          # one digit for another: same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert prepare.model_key(job) != before


def test_the_key_runs_none_of_the_users_code(user_tree):
    write(user_tree / "explodes.py", "raise SystemExit('imported')\n\ndef net(num_classes=10):\n    pass\n")
    write(user_tree / "importer.py", "import explodes\n\ndef net(num_classes=10):\n    pass\n")
    a = prepare.model_key(job_of("python:importer:net"))
    assert "explodes" not in sys.modules and "importer" not in sys.modules
    write(user_tree / "explodes.py", "raise SystemExit('changed')\n")
    assert prepare.model_key(job_of("python:importer:net")) != a


def test_a_missing_module_has_a_key_of_its_own_and_fails_at_load(user_tree):
    job = job_of("python:not_written_yet:net")
    missing = prepare.model_key(job)
    write(user_tree / "not_written_yet.py", MODULE.format(width=8))
    assert prepare.model_key(job) != missing
    (user_tree / "not_written_yet.py").unlink()
    r = run_job(job)
    assert (r.status, r.stage, r.error) == (
        "failed", "load", "cannot import not_written_yet:net: No module named 'not_written_yet'")


def test_a_library_the_model_imports_is_keyed_by_its_version(user_tree, monkeypatch):
    write(user_tree / "withlib.py", "import yaml\n\ndef net(num_classes=10):\n    pass\n")
    job = job_of("python:withlib:net")
    before = prepare.model_key(job)
    real = codekey._version
    monkeypatch.setattr(codekey, "_version", lambda top: "PyYAML==0.0-fake" if top == "yaml" else real(top))
    assert prepare.model_key(job) != before


def test_a_checkpoint_rewritten_in_place_with_the_same_size_and_mtime_is_a_new_key(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(DEMO_CHECKPOINT.read_bytes())
    job = job_of("timm:test_resnet", checkpoint=str(ckpt), input_size=(3, 32, 32))
    before, st = prepare.model_key(job), ckpt.stat()
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0x01                                                  # one weight bit
    ckpt.write_bytes(bytes(data))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prepare.model_key(job) != before
    assert prepare.reference_key(job) != prepare.reference_key(
        job_of("timm:test_resnet", checkpoint=str(DEMO_CHECKPOINT), input_size=(3, 32, 32)))


def test_an_onnx_file_rewritten_in_place_is_a_new_key_and_new_figures(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def graph(w):
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    path = tmp_path / "m.onnx"
    rng = np.random.default_rng(0)
    onnx.save(graph(rng.standard_normal((3, 10))), str(path))
    job = job_of(f"onnx:{path}", batch_size=8)
    data = prepare.dataset(job)
    before, st = prepare.model_key(job), path.stat()
    ref_before = prepare.reference(job, None, data, threads=1).pred
    onnx.save(graph(-rng.standard_normal((3, 10))), str(path))       # other weights, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert prepare.model_key(job) != before
    ref_after = prepare.reference(job, None, data, threads=1)
    assert not ref_after.hit and not np.array_equal(ref_after.pred, ref_before)


def test_an_onnx_file_of_the_wrong_width_fails_at_load(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((3, 12), np.float32), "w")
    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
                           helper.make_node("MatMul", ["m", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12])], [w])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    r = run_job(job_of(f"onnx:{path}", backend="onnxruntime", batch_size=4))
    assert (r.status, r.stage, r.error) == (
        "failed", "load", "OutputError: the model gives 12 logits per image but num_classes is 10")


def test_the_timm_version_is_in_a_timm_models_key(monkeypatch):
    job = job_of("timm:test_resnet", checkpoint=str(DEMO_CHECKPOINT), input_size=(3, 32, 32))
    before = prepare.model_key(job)
    real = prepare._all_versions()
    monkeypatch.setattr(prepare, "_all_versions", lambda: {**real, "timm": "0.0.0-fake"})
    assert real["timm"] and prepare.model_key(job) != before


def test_a_tensorrt_engine_key_follows_the_models_code_which_the_job_id_does_not(user_tree):
    from fleetbench.agent.backends.tensorrt import engine_cache_key
    write(user_tree / "trtnet.py", MODULE.format(width=8))
    job = job_of("python:trtnet:net", backend="tensorrt")
    gpu = {"name": "NVIDIA H200", "compute_capability": "9.0"}   # a key only: no GPU is used
    before = engine_cache_key(job.job_id, gpu, "11.1.0", "575.57", {}, prepare.compressed_key(job))
    write(user_tree / "trtnet.py", MODULE.format(width=256))
    assert job_of("python:trtnet:net", backend="tensorrt").job_id == job.job_id
    assert engine_cache_key(job.job_id, gpu, "11.1.0", "575.57", {}, prepare.compressed_key(job)) != before


def test_a_model_in_a_namespace_package_nobody_imported_yet_is_keyed(user_tree):
    write(user_tree / "nsroot" / "deep" / "m.py", "from nsroot.deep import helper\n\ndef net(num_classes=10):\n"
                                                  "    pass\n")
    write(user_tree / "nsroot" / "deep" / "helper.py", "X = 1\n")     # no __init__.py anywhere: namespaces
    job = job_of("python:nsroot.deep.m:net")
    before = prepare.model_key(job)
    assert "nsroot" not in sys.modules
    write(user_tree / "nsroot" / "deep" / "helper.py", "X = 2\n")
    assert prepare.model_key(job) != before


def test_run_refuses_a_one_class_folder_before_the_fleet_or_the_database(tmp_path, monkeypatch):
    from fleetbench.coordinator import cluster
    from fleetbench.coordinator.run import run_sweep
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    folder = image_folder(tmp_path / "imgs", ["only"], per_class=4)
    db = tmp_path / "r.duckdb"
    with pytest.raises(SweepError, match=r"^.*s\.yaml: dataset\.path: .*imgs: images in 1 class folder \('only'\) of 1;"):
        run_sweep(str(sweep_file(tmp_path, {"kind": "imagefolder", "path": str(folder)})), db=str(db),
                  progress=False)
    assert not db.exists()
