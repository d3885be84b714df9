"""The TensorRT backend's logic against FAKES (a fake `tensorrt` module, fake NVML, fake device memory):
cache keys, probe reasons, checks, the build (profile, timing cache, strong typing), the engine cache,
and a synchronous run. Plus the real thing on this machine: a tensorrt job is `unsupported`, fast."""
import os
import sys
from pathlib import Path
from threading import current_thread

import numpy as np
import pytest

from fleetbench.agent import prepare
from fleetbench.agent.backends import tensorrt as trt_backend
from fleetbench.agent.backends.base import Artifact, ExportContext
from fleetbench.shared.job import Job
from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
from tests.fixtures.fake_gpu import MB, FakeDeviceMemory, FakeGpu, FakeProc, fake_logits, fake_pynvml, fake_tensorrt

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}
SPEC = ModelSpec(name="m", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32))
QUICK = MeasureSpec(warmup_iters=1, min_iters=3, min_duration_s=0, max_duration_s=1)


def job(device="cuda", method="none", bs=8, **kw):
    return Job(sweep="t", model=kw.pop("model", SPEC), dataset=DatasetSpec(kind="synthetic", limit=16),
               compression=CompressionSpec.parse(method), backend="tensorrt", device=device, batch_size=bs,
               measure=kw.pop("measure", QUICK), **kw)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Fake tensorrt + fake NVML with one GPU on which this process holds 512 MB."""
    trt = fake_tensorrt()
    nvml = fake_pynvml([FakeGpu(name="NVIDIA H200", procs=[FakeProc(os.getpid(), 512 * MB)])])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trt_backend, "_select_cuda_device", lambda index: None)
    return trt, nvml


# ---------------------------------------------------------------- engine cache key


def test_engine_cache_key_changes_with_everything_an_engine_depends_on():
    base = trt_backend.engine_cache_key("abc123", H200, "11.1.0", "575.57")
    assert base == trt_backend.engine_cache_key("abc123", dict(H200), "11.1.0", "575.57")   # stable
    assert base.startswith("abc123-NVIDIA-H200-trt11.1.0-")
    variants = [trt_backend.engine_cache_key("abc124", H200, "11.1.0", "575.57"),
                trt_backend.engine_cache_key("abc123", {**H200, "name": "NVIDIA L4"}, "11.1.0", "575.57"),
                trt_backend.engine_cache_key("abc123", {**H200, "compute_capability": "8.9"}, "11.1.0", "575.57"),
                trt_backend.engine_cache_key("abc123", H200, "10.13.0", "575.57"),
                trt_backend.engine_cache_key("abc123", H200, "11.1.0", "580.01"),
                trt_backend.engine_cache_key("abc123", H200, "11.1.0", "575.57", model="other network")]
    assert len({base, *variants}) == 7
    assert trt_backend.engine_cache_key("j", "NVIDIA L4", "11", None).startswith("j-NVIDIA-L4-trt11-")


def test_timing_cache_path_names_gpu_cc_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETBENCH_CACHE", str(tmp_path))
    p = trt_backend.timing_cache_path(H200, "11.1.0")
    assert p == tmp_path / "tensorrt" / "timing-NVIDIA-H200-9.0-11.1.0.cache"


# ---------------------------------------------------------------- probe and check


def test_probe_fake_no_gpu_says_so_and_that_tensorrt_is_missing_too(monkeypatch):
    monkeypatch.setattr(trt_backend, "nvidia_gpus", lambda: ([], None, "no NVIDIA GPU found (NVML: fake)"))
    monkeypatch.setattr(trt_backend, "_installed", lambda: False)
    a = trt_backend.TensorRTBackend().probe()
    assert not a.available and a.reason.startswith("tensorrt: no NVIDIA GPU found (NVML: fake)")
    assert "not installed" in a.reason and "fleetbench[nvidia]" in a.reason


def test_probe_fake_gpu_without_tensorrt_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(trt_backend, "nvidia_gpus", lambda: ([H200], "575", None))
    monkeypatch.setattr(trt_backend, "_installed", lambda: False)
    a = trt_backend.TensorRTBackend().probe()
    assert not a.available and a.reason == "tensorrt: not installed; pip install 'fleetbench[nvidia]'"


def test_probe_fake_two_gpus_are_two_devices(monkeypatch):
    monkeypatch.setattr(trt_backend, "nvidia_gpus", lambda: ([H200, H200], "575", None))
    monkeypatch.setattr(trt_backend, "_installed", lambda: True)
    assert trt_backend.TensorRTBackend().probe().devices == ("cuda", "cuda:1")


@pytest.mark.parametrize("device, method, words", [
    ("cpu", "none", "no device 'cpu'"),
    ("tensorrt-ep", "none", "no device"),
    ("cuda", "int8-dynamic", "no dynamic quantization"),
    ("cuda", "bf16", "bf16"),
])
def test_check_refuses_what_tensorrt_cannot_do(device, method, words):
    from fleetbench.agent import compress
    backend = trt_backend.TensorRTBackend()
    assert words in (backend.check(job(device, method)) or compress.check(job(device, method), backend))


@pytest.mark.parametrize("device, method", [("cuda", "none"), ("cuda:1", "fp16"), ("cuda", "int8-static"),
                                            ("cuda", "prune-50")])
def test_check_accepts_graph_precisions(device, method):
    from fleetbench.agent import compress
    backend = trt_backend.TensorRTBackend()
    assert backend.check(job(device, method)) is None and compress.check(job(device, method), backend) is None


# ---------------------------------------------------------------- build


def test_build_engine_fake_tensorrt_profile_and_persistent_timing_cache(fakes, tmp_path):
    trt, _ = fakes
    cache = tmp_path / "timing.cache"
    blob = trt_backend.build_engine(trt, _onnx_file(tmp_path), (8, 3, 32, 32), cache)
    assert blob == b"FAKEPLAN:8,3,32,32"
    cfg = trt._configs[-1]
    assert cfg._profiles[0]._shapes["input"] == ((8, 3, 32, 32),) * 3   # dynamic batch pinned at the job's
    assert cfg._cache_seen == b"" and cache.read_bytes() == b"+timed"  # new cache, saved after the build
    assert cfg._cleared == {trt.BuilderFlag.TF32}                       # fp32 is IEEE fp32, not TF32
    assert cfg._verbosity == trt.ProfilingVerbosity.DETAILED           # layer precisions readable after
    trt_backend.build_engine(trt, _onnx_file(tmp_path), (8, 3, 32, 32), cache)
    assert trt._configs[-1]._cache_seen == b"+timed"                    # the next build starts from it
    assert trt._networks[-1]._flags == 0                                # TensorRT 11: always strongly typed


def test_build_engine_fake_tensorrt_10_asks_for_strong_typing(monkeypatch, tmp_path):
    trt = fake_tensorrt(version="10.13.0", input_shape=(1, 3, 32, 32))
    trt_backend.build_engine(trt, _onnx_file(tmp_path), (1, 3, 32, 32), tmp_path / "t.cache")
    assert trt._networks[-1]._flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert trt._configs[-1]._profiles == []                               # static shapes need no profile


def test_build_engine_fake_parse_error_is_reported(tmp_path):
    trt = fake_tensorrt(parse_ok=False)
    with pytest.raises(RuntimeError, match="could not parse m.onnx: In node 3"):
        trt_backend.build_engine(trt, _onnx_file(tmp_path), (8, 3, 32, 32), tmp_path / "t.cache")


def test_build_engine_fake_parser_fails_on_a_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match="could not parse gone.onnx: Failed to open file"):
        trt_backend.build_engine(fake_tensorrt(), tmp_path / "gone.onnx", (8, 3, 32, 32), tmp_path / "t.cache")


# ---------------------------------------------------------------- export: engine cache


def _onnx_file(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"fake onnx")
    return f


def _ctx(tmp_path, j, name="w1"):
    onnx = tmp_path / "src.onnx"
    onnx.write_bytes(b"fake onnx")
    return ExportContext(job=j, model=None, example=np.zeros((j.batch_size, 3, 32, 32), np.float32),
                         workdir=tmp_path / name, calib_x=np.zeros((4, 3, 32, 32), np.float32), onnx_source=onnx)


def test_export_fake_tensorrt_builds_once_then_hits_the_engine_cache(fakes, tmp_path, monkeypatch):
    trt, _ = fakes
    monkeypatch.setattr(trt_backend, "onnx_for", lambda ctx: (ctx.onnx_source, "fp16"))
    be, j = trt_backend.TensorRTBackend(), job(bs=8)
    first = be.export(_ctx(tmp_path, j, "w1"))
    assert trt._built == 1 and first.cache_hit is False and first.dtype == "fp16"
    assert first.files == [tmp_path / "w1" / "model.engine"] and first.main.read_bytes() == b"FAKEPLAN:8,3,32,32"
    assert first.gpu == "NVIDIA H200" and first.compute_capability == "9.0"
    assert first.tensorrt == trt.__version__ and first.driver == "575.57.08"
    assert first.engine_key == trt_backend.engine_cache_key(j.job_id, H200, trt.__version__, "575.57.08",
                                                            model=prepare.compressed_key(j))
    second = be.export(_ctx(tmp_path, j, "w2"))
    assert trt._built == 1 and second.cache_hit is True                  # no second build
    assert second.main.read_bytes() == first.main.read_bytes()
    be.export(_ctx(tmp_path, job(bs=1), "w3"))
    assert trt._built == 2                                                       # another job: another engine


# ---------------------------------------------------------------- load and run


def test_load_fake_tensorrt_runs_synchronously_with_device_io_and_nvml_vram(fakes, tmp_path):
    trt, nvml = fakes
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"FAKEPLAN:8,3,32,32")
    memory = FakeDeviceMemory(trt)
    backend = trt_backend.TensorRTBackend()
    backend.memory = lambda device: memory
    engine = backend.load(trt_backend.EngineArtifact([plan], dtype="fp32", gpu="NVIDIA H200"), job(bs=8), threads=2)
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    y = engine.run(x)
    assert y.dtype == np.float32 and y.shape == (8, 10)
    np.testing.assert_allclose(y, fake_logits(x, 10), rtol=1e-6)
    assert memory.log == ["upload", "synchronize", "download"]                 # execute is inside, then sync
    assert ("execute", memory.stream_handle) in trt._log
    assert engine.dtype == "fp32" and engine.provider == f"tensorrt-{trt.__version__}:cuda" and engine.threads is None

    device_run = engine.prepare_device_run(x)                                   # device-resident: no copies
    memory.log.clear()
    assert device_run() == device_run() == memory.device_s                      # CUDA-event device seconds
    assert memory.log == ["timed", "timed"]

    assert engine.vram() == pytest.approx(512) and engine.vram_source == "nvml-process"
    assert any("NVIDIA H200" in n for n in engine.notes())
    engine.close()
    assert memory.log[-1] == "release" and nvml.calls["init"] == nvml.calls["shutdown"]


def test_load_fake_tensorrt_rejects_a_foreign_engine(fakes, tmp_path):
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"not a plan for this GPU")
    with pytest.raises(RuntimeError, match="deserialise"):
        backend = trt_backend.TensorRTBackend()
        backend.memory = lambda device: FakeDeviceMemory()
        backend.load(Artifact([plan]), job(), 1)


# ---------------------------------------------------------------- the real machine: no GPU here


def test_tensorrt_job_on_this_machine_real():
    """The real thing: on a machine without an NVIDIA GPU or TensorRT a tensorrt job is `unsupported`,
    and says why; on one with both it builds a real engine and must be `ok`, timed with CUDA events."""
    from fleetbench.agent.gpu import nvidia_gpus
    from fleetbench.agent.runner import run_job
    spec = ModelSpec(name="digits", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32),
                     checkpoint=str(Path(__file__).resolve().parents[2] / "examples/digits/model.safetensors"))
    has_gpu = bool(nvidia_gpus()[0]) and trt_backend._installed()
    r = run_job(job(model=spec, bs=8))
    if has_gpu:
        assert r.status == "ok", (r.stage, r.error)
        assert r.dtype == "fp32" and r.latency_device_p50_ms > 0 and "CUDA events" in r.notes
        assert r.top1_agreement >= 0.95 and r.vram_source in ("nvml-process", "nvml-device-delta")
        return
    assert r.status == "unsupported", r.error
    assert r.error.startswith("tensorrt: ") and ("no NVIDIA GPU" in r.error or "not installed" in r.error)


# ---------------------------------------------------------------- the fake is as strict as TensorRT


def test_fake_tensorrt_refuses_names_the_real_tensorrt_lacks(tmp_path):
    from tests.fixtures.fake_gpu import API, TRT_NAMES
    trt = fake_tensorrt()
    assert trt.__version__ == API["tensorrt"]["version"]            # the version the names list came from
    with pytest.raises(AttributeError, match="not in the TensorRT"):
        _ = trt.IInt8EntropyCalibrator2                                   # gone from TensorRT 10+
    with pytest.raises(AttributeError, match="FP16"):
        _ = trt.BuilderFlag.FP16                                          # TensorRT 11: no FP16 builder flag
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError, match="not in the TensorRT"):
        _ = config.set_flag
    assert {"clear_flag", "profiling_verbosity", "create_engine_inspector", "execute_async_v3"} <= TRT_NAMES


def test_engine_cache_key_includes_the_exporter_code_and_versions():
    fp = trt_backend.exporter_fingerprint()
    assert all(fp["code"].values()), fp["code"]                      # every exporter module found and hashed
    assert fp["versions"]["torch"] and fp["versions"]["onnx"]
    base = trt_backend.engine_cache_key("j", H200, "11.4.0", "575", fp)
    edited = {**fp, "code": {**fp["code"], "fleetbench.agent.onnx_export": "0" * 16}}
    newer = {**fp, "versions": {**fp["versions"], "torch": "99.0"}}
    assert len({base, trt_backend.engine_cache_key("j", H200, "11.4.0", "575", edited),
                trt_backend.engine_cache_key("j", H200, "11.4.0", "575", newer)}) == 3
    assert trt_backend.engine_cache_key("j", H200, "11.4.0", "575") == base   # default: this checkout's


def _load(tmp_path, trt, dtype="fp32"):
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"FAKEPLAN:8,3,32,32")
    memory = FakeDeviceMemory(trt)
    backend = trt_backend.TensorRTBackend()
    backend.memory = lambda device: memory
    artifact = trt_backend.EngineArtifact([plan], dtype=dtype, gpu="NVIDIA H200")
    return backend.load(artifact, job(bs=8), threads=1), memory


def test_load_fake_tensorrt_fp16_io_tensors(fakes, monkeypatch, tmp_path):
    trt = fake_tensorrt(io_dtype="HALF")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine, memory = _load(tmp_path, trt, "fp16")
    x = np.random.default_rng(1).random((8, 3, 32, 32), dtype=np.float32)
    y = engine.run(x)                                                # fp32 batch in, fp16 buffer, fp32 logits out
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, fake_logits(x.astype(np.float16), 10), rtol=2e-3)
    engine.close()


def test_load_fake_tensorrt_int8_input_is_refused_clearly(fakes, monkeypatch, tmp_path):
    trt = fake_tensorrt(io_dtype="INT8")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(RuntimeError, match="engine input 'input' is int8: fleetbench feeds float"):
        _load(tmp_path, trt, "int8")


@pytest.mark.parametrize("fmt, graph, expect, how", [
    ("Channel major FP16 format where channel % 8 == 0", "fp16", "fp16", "read back from the engine's layers: 2 fp16"),
    ("Int8 NC32HW32", "int8", "int8", "read back"),
    ("Row major linear FP32", "fp16", "fp32", "2 fp32"),           # a graph that asked fp16 but runs fp32: says so
    (None, "fp16", "fp16", "from the graph (strongly typed network"),
])
def test_load_fake_tensorrt_reads_back_layer_precisions(fakes, monkeypatch, tmp_path, fmt, graph, expect, how):
    trt = fake_tensorrt(layer_format=fmt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine, _ = _load(tmp_path, trt, graph)
    assert engine.dtype == expect
    assert any(n.startswith(f"dtype {expect}: ") and how in n for n in engine.notes()), engine.notes()
    engine.close()


# ---------------------------------------------------------------- throughput: several contexts and streams


@pytest.mark.parametrize("streams, expect", [(None, trt_backend.DEFAULT_STREAMS), (3, 3)])
def test_throughput_fake_tensorrt_drives_one_context_per_cuda_stream(fakes, tmp_path, monkeypatch, streams, expect):
    trt, _ = fakes
    bound: list[tuple[str, int]] = []   # (thread, device) each time a thread makes the engine's GPU current
    monkeypatch.setattr(trt_backend, "_select_cuda_device", lambda index: bound.append((current_thread().name, index)))
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"FAKEPLAN:8,3,32,32")
    backend = trt_backend.TensorRTBackend()
    memories: list[FakeDeviceMemory] = []
    backend.memory = lambda device: memories.append(FakeDeviceMemory(trt)) or memories[-1]
    spec = QUICK.model_copy(update={"streams": streams, "min_iters": 60, "warmup_iters": 2})
    engine = backend.load(trt_backend.EngineArtifact([plan], dtype="fp32", gpu="NVIDIA H200"),
                          job(device="cuda:1", bs=8, measure=spec, scenario="throughput"), threads=1)
    assert engine.streams == expect == len(memories)
    assert len({m.stream_handle for m in memories}) == expect                     # a CUDA stream per context
    assert any(f"{expect} execution contexts, each on its own CUDA stream" in n for n in engine.notes())
    x = np.random.default_rng(2).random((8, 3, 32, 32), dtype=np.float32)
    window = engine.throughput(x, spec)
    assert len(window.samples_s) >= 60 and window.duration_s > 0
    used = {s for op, *s in trt._log if op == "execute" for s in s}
    streams_bound = [b for b in bound if b[0].startswith("stream-")]
    assert set(streams_bound) == {(f"stream-{i}", 1) for i in range(expect)}      # each stream thread: cuda:1 current
    assert used == {m.stream_handle for m in memories}                            # every context ran
    for m in memories:                                                            # each synchronised before its copy out
        assert m.log.count("download") >= 1 and m.log.count("synchronize") == m.log.count("download")
        np.testing.assert_allclose(m.download(m.by_ptr[max(m.by_ptr)]), fake_logits(x, 10), rtol=1e-6)
    np.testing.assert_allclose(engine.run(x), fake_logits(x, 10), rtol=1e-6)     # the latency engine still runs
    engine.close()
    assert all(m.log[-1] == "release" for m in memories)


def test_latency_fake_tensorrt_has_no_throughput_driver(fakes, tmp_path):
    trt, _ = fakes
    engine, memory = _load(tmp_path, trt)
    assert engine.throughput is None and engine.streams is None and len(trt._memories) == 1
    engine.close()


def test_tensorrt_throughput_job_on_this_machine_real():
    """On a node without an NVIDIA GPU a TensorRT throughput job is an `unsupported` row with the reason."""
    from fleetbench.agent.gpu import nvidia_gpus
    from fleetbench.agent.runner import run_job
    if nvidia_gpus()[0] and trt_backend._installed():
        pytest.skip("this node has an NVIDIA GPU and TensorRT: the fake tests above cover the driver's logic")
    r = run_job(job(bs=8, scenario="throughput"))
    assert r.status == "unsupported" and r.scenario == "throughput"
    assert r.error.startswith("tensorrt: ") and ("no NVIDIA GPU" in r.error or "not installed" in r.error)
