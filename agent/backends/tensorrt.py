"""TensorRT: a native engine built on this node's own GPU from the exported ONNX (TensorRT 10/11 Python API).

Precision comes from the ONNX graph itself (TensorRT 11 has no FP16/INT8 builder flags and no calibrator:
networks are strongly typed; on 10.x fleetbench asks for a strongly typed network): fp32 graph -> fp32
engine (TF32 builder flag cleared), fp16-converted graph -> fp16, the TensorRT-form Q/DQ graph -> int8.
The engine's layer precisions are read back with the engine inspector where TensorRT gives them.
Engines are specific to the GPU, its compute capability, the TensorRT version and the driver:
they are built here and cached under a key made of all of them and of the exporter that wrote the ONNX
(`engine_cache_key`); a hit skips the build.
The builder's timing cache persists per GPU/TensorRT version, so a rebuild of a similar graph is fast.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext
from fleetbench.agent.gpu import ProcessVram, device_index, nvidia_gpu, nvidia_gpus
from fleetbench.agent.paths import cache_dir
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job
from fleetbench.shared.vocab import HwKind

log = logging.getLogger(__name__)
INSTALL = "pip install 'fleetbench[nvidia]'"
# Throughput scenario without measure.streams: two execution contexts, so one's copies overlap the other's kernels
DEFAULT_STREAMS = 2


@dataclass
class EngineArtifact(Artifact):
    """A serialised TensorRT engine and what it was built for (TensorRT keeps its own engine cache)."""

    gpu: Optional[str] = None
    compute_capability: Optional[str] = None
    tensorrt: Optional[str] = None
    driver: Optional[str] = None
    engine_key: Optional[str] = None
    onnx: Optional[str] = None
    engine_build_s: float = 0.0


def cache_root() -> Path:
    return cache_dir("tensorrt")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


# What writes the ONNX a TensorRT engine is built from: an edit here, or another version of a package
# below, is another graph and so another engine.
EXPORTER_MODULES = ("fleetbench.agent.backends.tensorrt", "fleetbench.agent.backends.onnxruntime.variants",
                    "fleetbench.agent.onnx_export")
EXPORTER_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript")


def exporter_fingerprint() -> dict[str, Any]:
    """Hashes of fleetbench's exporter code and the versions of the packages that write the ONNX graph."""
    import importlib.metadata

    from fleetbench.agent.cache import code_hash
    versions: dict[str, Optional[str]] = {}
    for name in EXPORTER_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"code": {m: code_hash(m) for m in EXPORTER_MODULES}, "versions": versions}


def engine_cache_key(job_id: str, gpu: Mapping[str, Any] | str, trt_version: str, driver: Optional[str],
                     exporter: Optional[Mapping[str, Any]] = None, model: Optional[str] = None) -> str:
    """The engine-cache key: the job (model, weights, compression, batch...) plus everything an engine is
    specific to: GPU model, compute capability, TensorRT version, driver, and the exporter that wrote
    its ONNX (fleetbench code hashes, torch/onnx/onnxruntime versions). `model`: the node's content key of
    the network the ONNX is exported from (agent/prepare.py `compressed_key`: weights' content, a `python:`
    model's code, compression), which the job id does not hold. Readable prefix, hashed rest."""
    if isinstance(gpu, str):
        gpu = {"name": gpu}
    blob = json.dumps({"job": job_id, "model": model, "gpu": gpu.get("name"), "cc": gpu.get("compute_capability"),
                       "trt": trt_version, "driver": driver,
                       "exporter": exporter if exporter is not None else exporter_fingerprint()},
                      sort_keys=True).encode()
    return f"{job_id}-{_slug(str(gpu.get('name')))}-trt{_slug(trt_version)}-{hashlib.sha256(blob).hexdigest()[:16]}"


def timing_cache_path(gpu: Mapping[str, Any], trt_version: str) -> Path:
    return cache_root() / f"timing-{_slug(str(gpu.get('name')))}-{gpu.get('compute_capability')}-{_slug(trt_version)}.cache"


def _installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def cuda_device_names(n: int) -> tuple[str, ...]:
    """Device names for n GPUs, as the torch backends name them: cuda, cuda:1, cuda:2..."""
    return tuple("cuda" if i == 0 else f"cuda:{i}" for i in range(n))


class TensorRTBackend(Backend):
    name = "tensorrt"
    throughput_driver = "engine"   # several execution contexts, each on its own CUDA stream (ContextPool)
    cacheable = False   # engines are cached by engine_cache_key (GPU, compute capability, TensorRT, driver)
    takes_onnx = True   # built from the node's shared ONNX export, at a static batch size
    # precision comes from the ONNX graph (onnxruntime.variants): fp16-converted, or ORT's Q/DQ int8
    precisions = {
        "fp16": "fp16",
        "bf16": Unsupported("tensorrt: bf16 needs a bf16 ONNX graph (TensorRT takes precision from the graph) and "
                            "fleetbench makes none (ONNX Conv takes no bfloat16 at opset 18)"),
        "int8-dynamic": Unsupported("tensorrt: TensorRT has no dynamic quantization (int8 needs Q/DQ nodes: "
                                    "use int8-static)"),
        "int8-static": "int8",
    }
    # device memory for the engine's I/O, given the job's device (a fake in tests without a GPU)
    memory: Callable[[str], Any] = staticmethod(lambda device: TorchCudaMemory(device))

    def probe(self) -> Availability:
        try:
            gpus, _, reason = nvidia_gpus()
            installed = _installed()
        except Exception as e:  # never raise from a probe
            return Availability(False, f"tensorrt: probe failed ({type(e).__name__}: {e})")
        if not gpus:
            reason = reason or "no NVIDIA GPU found"
            extra = "" if installed else "; tensorrt is not installed either" + ("" if INSTALL in reason else f" ({INSTALL})")
            return Availability(False, f"tensorrt: {reason}{extra}")
        if not installed:
            return Availability(False, f"tensorrt: not installed; {INSTALL}")
        return Availability(True, devices=cuda_device_names(len(gpus)))

    def check(self, job: Job) -> Optional[str]:
        if not re.fullmatch(r"cuda(:\d+)?", job.device):
            return f"tensorrt: no device {job.device!r} (valid: cuda[:N])"
        return None

    def hw_kind(self, device: str, node_kinds: Sequence[str]) -> str:
        return HwKind.NVIDIA

    def export(self, ctx: ExportContext) -> Artifact:
        import tensorrt as trt
        onnx_path, dtype = onnx_for(ctx)
        index = device_index(ctx.job.device)
        gpu, driver, reason = nvidia_gpu(index)
        if gpu is None:
            raise Unsupported(f"tensorrt: {reason}")
        version = trt.__version__
        from fleetbench.agent.prepare import compressed_key
        key = engine_cache_key(ctx.job.job_id, gpu, version, driver, exporter_fingerprint(), compressed_key(ctx.job))
        made = dict(gpu=gpu["name"], compute_capability=gpu["compute_capability"], tensorrt=version,
                    driver=driver, engine_key=key, onnx=str(onnx_path))
        out = ctx.workdir / "model.engine"
        out.parent.mkdir(parents=True, exist_ok=True)
        cached = cache_root() / "engines" / f"{key}.engine"
        if cached.is_file():
            shutil.copyfile(cached, out)
            log.info("tensorrt: engine cache hit %s", key)
            return EngineArtifact([out], dtype=dtype, cache_hit=True, engine_build_s=0.0, **made)
        _select_cuda_device(index)
        t = time.perf_counter()
        blob = build_engine(trt, onnx_path, tuple(ctx.example.shape), timing_cache_path(gpu, version))
        build_s = time.perf_counter() - t
        out.write_bytes(blob)
        _atomic_write(cached, blob)
        return EngineArtifact([out], dtype=dtype, cache_hit=False, engine_build_s=build_s, **made)

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        import tensorrt as trt
        index = device_index(job.device)
        vram = ProcessVram(index=index)   # sampled at stage ends: no thread wakes inside a timed loop
        try:
            memory = self.memory(job.device)
            runtime = trt.Runtime(_logger(trt))
            engine = runtime.deserialize_cuda_engine(artifact.main.read_bytes())
            if engine is None:
                raise RuntimeError("TensorRT could not deserialise the engine (built for another GPU/version?)")
            io = TrtIO(trt, engine, memory)
            pool = ContextPool(trt, engine, io, self.memory, job) if job.scenario == "throughput" else None
        except BaseException:
            vram.close()
            raise
        alive = [runtime, engine]   # the runtime must outlive the engine, the engine its context

        def close() -> None:
            if pool is not None:
                pool.release()
            io.release()
            alive.clear()
            vram.close()

        dtype, how = engine_dtype(trt, engine, artifact.dtype)
        vram.sample()   # engine, context and I/O buffers allocated; fixes which figure `source` is
        return Engine(run=io.run, dtype=dtype, threads=None, provider=f"tensorrt-{trt.__version__}:{job.device}",
                      vram=vram.peak, vram_source=vram.source, close=close,
                      notes=lambda: _notes(artifact, vram) + [f"dtype {dtype}: {how}"] + ([pool.note] if pool else []),
                      prepare_device_run=io.prepare_device_run,   # device-resident timing: no host copies
                      throughput=pool.window if pool is not None else None,
                      streams=len(pool.ios) if pool is not None else None)


def _notes(artifact: Artifact, vram: ProcessVram) -> list[str]:
    if not isinstance(artifact, EngineArtifact):
        return [f"vram: {vram.reason}"] if vram.peak_mb is None and vram.reason else []
    made = ("from the TensorRT engine cache" if artifact.cache_hit
            else f"built in {artifact.engine_build_s:.1f} s when first made")
    out = [f"tensorrt {artifact.tensorrt} engine {made}, for {artifact.gpu} (cc {artifact.compute_capability}, "
           f"driver {artifact.driver})"]
    if vram.peak_mb is None and vram.reason:
        out.append(f"vram: {vram.reason}")
    return out


def engine_dtype(trt: Any, engine: Any, graph_dtype: str) -> tuple[str, str]:
    """(dtype, how it was established): read back from the engine's layer information (built with
    DETAILED profiling verbosity) where TensorRT gives it, else the graph's dtype (strongly typed network)."""
    from fleetbench.agent.backends.precision import describe, majority_dtype
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as e:   # an engine built without layer information, or an older TensorRT
        return graph_dtype, f"from the graph (strongly typed network; engine inspector: {type(e).__name__})"
    counts = layer_precisions(info)
    if not counts:
        return graph_dtype, "from the graph (strongly typed network; the engine lists no conv/matmul layer precisions)"
    return majority_dtype(counts), f"read back from the engine's layers: {describe(counts)} conv/matmul layers"


_TRT_COMPUTE = ("Convolution", "Conv", "Gemm", "MatrixMultiply", "FullyConnected", "Deconvolution")


def layer_precisions(info: Mapping[str, Any]) -> dict[str, int]:
    """Conv/matmul layers per precision, from IEngineInspector JSON (DETAILED): a layer's precision is its
    first input's data type, as the 'Format/Datatype' string names it ('... Int8 ...', '... FP16 ...')."""
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, Mapping) or not any(k in str(layer.get("LayerType", "")) for k in _TRT_COMPUTE):
            continue
        inputs = layer.get("Inputs") or [{}]
        fmt = str(inputs[0].get("Format/Datatype", "")).lower()
        dtype = ("int8" if "int8" in fmt else "fp16" if ("fp16" in fmt or "half" in fmt)
                 else "bf16" if "bf16" in fmt else "fp32" if ("fp32" in fmt or "float" in fmt) else None)
        if dtype:
            counts[dtype] = counts.get(dtype, 0) + 1
    return counts


def onnx_for(ctx: ExportContext) -> tuple[Path, str]:
    """The ONNX graph that carries the job's precision (ONNX Runtime's variants) and its dtype."""
    from fleetbench.agent.backends.onnxruntime.variants import onnx_variant
    variant = onnx_variant(ctx)
    return variant.path, variant.dtype


def build_engine(trt: Any, onnx_path: Path, input_shape: tuple[int, ...], timing_cache: Path) -> bytes:
    """Parse the ONNX, add an optimisation profile for dynamic inputs at the job's shape, build with the
    persistent timing cache, and return the serialised engine."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):   # reads external data (.onnx.data) beside the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors[:3]) or 'unknown error'}")
    config = builder.create_builder_config()
    # fp32 means IEEE fp32: TensorRT lets fp32 convolutions and matrix products use TF32 by default
    # (Ampere and later); a strongly typed network still honours this flag.
    config.clear_flag(trt.BuilderFlag.TF32)
    # Layer information in the engine, so load() can read back the precision each layer runs in.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = _profile(builder, network, input_shape)
    if profile is not None:
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)   # ignore_mismatch=False: a cache from another GPU is not used
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT build failed (see the TensorRT log above)")
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(blob)


def _profile(builder: Any, network: Any, input_shape: tuple[int, ...]) -> Any:
    """One profile pinning every dynamic input dimension at the job's shape (batch included), or None."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = tuple(inp.shape)
        if all(d >= 0 for d in dims):
            continue
        dynamic = True
        if len(dims) != len(input_shape):
            raise RuntimeError(f"input {inp.name!r} has rank {len(dims)}, the job's batch has {len(input_shape)}")
        shape = tuple(s if d < 0 else d for d, s in zip(dims, input_shape))
        profile.set_shape(inp.name, shape, shape, shape)
    return profile if dynamic else None


def _network_flags(trt: Any) -> int:
    """TensorRT 11 networks are always strongly typed; on 10.x ask for it, so precision comes from the graph."""
    major = int(str(trt.__version__).split(".")[0])
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if major < 11 and flag is not None else 0


_LOGGERS: dict[int, Any] = {}


def _logger(trt: Any) -> Any:
    """One logger per tensorrt module, kept alive as long as the process (TensorRT holds a reference)."""
    key = id(trt)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[key]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _select_cuda_device(index: int) -> None:
    """TensorRT builds and runs on the current CUDA device."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device (a CPU-only torch build?): TensorRT needs CUDA memory")
    torch.cuda.set_device(index)


class TrtIO:
    """An execution context with its I/O tensors allocated on the GPU once; `run` is synchronous."""

    def __init__(self, trt: Any, engine: Any, memory: Any):
        self.memory, self.context = memory, engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.inputs: list[tuple[str, Any, Any]] = []
        self.outputs: list[tuple[str, Any, Any]] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if dtype.kind not in "f":   # fp32 or fp16 inputs take the float batch; int8 would need its scale
                    raise RuntimeError(f"engine input {name!r} is {dtype.name}: fleetbench feeds float batches "
                                       "(its graphs keep float inputs)")
                shape = tuple(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):   # dynamic: the profile pinned it at the job's shape
                    shape = tuple(engine.get_tensor_profile_shape(name, 0)[1])
                self.context.set_input_shape(name, shape)
                self.inputs.append((name, dtype, memory.alloc(shape, dtype)))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                shape = tuple(self.context.get_tensor_shape(name))
                self.outputs.append((name, dtype, memory.alloc(shape, dtype)))
        if len(self.inputs) != 1 or not self.outputs:
            raise RuntimeError(f"expected one input and an output, engine has {len(self.inputs)} inputs")
        for name, _, buf in self.inputs + self.outputs:
            if not self.context.set_tensor_address(name, memory.ptr(buf)):
                raise RuntimeError(f"TensorRT refused the address of tensor {name!r}")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _execute(self) -> None:
        self._enqueue()
        self.memory.synchronize()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Host in, host out: copy in, execute, synchronise, copy out. Timed as a whole."""
        _, dtype, buf = self.inputs[0]
        self.memory.upload(buf, np.ascontiguousarray(x, dtype=dtype))
        self._execute()
        return np.asarray(self.memory.download(self.outputs[0][2]), dtype=np.float32)

    def prepare_device_run(self, x: np.ndarray):
        """Upload `x` once; the returned call executes on device-resident I/O, waits for it, and returns the
        device time in seconds, measured with CUDA events on the engine's stream."""
        _, dtype, buf = self.inputs[0]
        self.memory.upload(buf, np.ascontiguousarray(x, dtype=dtype))
        self.memory.synchronize()
        return lambda: self.memory.timed(self._enqueue)

    def release(self) -> None:
        self.inputs, self.outputs, self.context = [], [], None
        self.memory.release()


class ContextPool:
    """The throughput scenario's driver: `measure.streams` (default DEFAULT_STREAMS) execution contexts of one
    engine, each with its own I/O buffers on its own CUDA stream, each driven by a host thread that copies in,
    enqueues, synchronises its stream and copies out: while one context waits on its stream, the others'
    copies and kernels run. The engine's first context (the latency engine's) is one of them."""

    def __init__(self, trt: Any, engine: Any, first: TrtIO, memory: Callable[[str], Any], job: Job):
        self.ios = [first]
        self.index = device_index(job.device)
        try:
            for _ in range((job.measure.streams or DEFAULT_STREAMS) - 1):
                self.ios.append(TrtIO(trt, engine, memory(job.device)))
        except BaseException:
            self.release()
            raise
        self.note = (f"tensorrt throughput: {len(self.ios)} execution contexts, each on its own CUDA stream with "
                     f"its own I/O buffers, one host thread each (copy in, execute_async_v3, synchronize, copy out)")

    def window(self, x: np.ndarray, spec: Any) -> Any:
        from fleetbench.agent import measure
        return measure.throughput_window([self._on_device(functools.partial(io.run, x)) for io in self.ios], spec,
                                         len(self.ios))

    def _on_device(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """`call`, run with the engine's GPU current in the calling thread (CUDA's current device is per
        thread, and a context runs only on the device it was made on): set once, on the thread's first call."""
        local = threading.local()

        def run() -> Any:
            if not getattr(local, "bound", False):
                _select_cuda_device(self.index)
                local.bound = True
            return call()

        return run

    def release(self) -> None:
        for io in self.ios[1:]:   # the first belongs to the engine, released with it
            io.release()
        del self.ios[1:]


class TorchCudaMemory:
    """GPU buffers as torch CUDA tensors on one device; all work on one stream of our own."""

    def __init__(self, device: str):
        import torch
        self.torch = torch
        _select_cuda_device(device_index(device))
        self.device = torch.device("cuda", device_index(device))
        self.stream = torch.cuda.Stream(self.device)
        self.buffers: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        tdtype = self.torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        buf = self.torch.empty(shape, dtype=tdtype, device=self.device)
        self.buffers.append(buf)
        return buf

    def ptr(self, buf: Any) -> int:
        return buf.data_ptr()

    def upload(self, buf: Any, x: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(x))

    def synchronize(self) -> None:
        self.stream.synchronize()

    def timed(self, enqueue) -> float:
        """Seconds the work `enqueue` puts on the stream takes on the device (CUDA events); returns when done."""
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record(self.stream)
        enqueue()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def download(self, buf: Any) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            out = buf.cpu()   # device-to-host on our stream; returns when the copy is done
        return out.float().numpy()

    def release(self) -> None:
        self.buffers.clear()
