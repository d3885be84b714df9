"""TFLite (LiteRT): the PyTorch module converted with litert-torch, run by the LiteRT interpreter (ai-edge-litert).

Precision: fp32 is the plain conversion. fp16, int8-dynamic and int8-static are applied to the converted
fp32 .tflite by ai-edge-quantizer (the quantizer litert-torch itself uses):
  - fp16: weights stored as fp16 (FLOAT_CASTING, weight-only); LiteRT's CPU kernels dequantize them and
    compute in fp32, so the row's dtype stays fp32 and a note says so.
  - int8-dynamic: int8 weights, activations quantized at run time (dynamic range).
  - int8-static: int8 weights and activations, calibrated on the job's calibration inputs; the graph's
    input and output become int8, so `run` quantizes the input and dequantizes the output (timed: it is
    part of what a caller of such a model pays).
The converted model keeps the PyTorch NCHW input layout; `run` transposes only if the model asks for NHWC.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetbench.agent.backends.base import Artifact, Availability, Backend, Engine, ExportContext
from fleetbench.shared.errors import Unsupported
from fleetbench.shared.job import Job

log = logging.getLogger(__name__)
INSTALL = "pip install 'fleetbench[tflite]'"
# compression method -> the dtype LiteRT's CPU kernels compute in after ai-edge-quantizer's recipe
PRECISION = {"fp16": "fp32", "int8-dynamic": "int8", "int8-static": "int8"}
NOTES = {
    "fp16": "tflite fp16: weights stored fp16, dequantized to fp32 by LiteRT's CPU kernels (computes fp32)",
    "int8-dynamic": "tflite int8-dynamic: int8 weights, activations quantized at run time",
    "int8-static": "tflite int8-static: int8 input/output; run() quantizes the input and dequantizes the output",
}


class TFLiteBackend(Backend):
    name = "tflite"
    precisions = {**PRECISION, "bf16": Unsupported("tflite: LiteRT's converter has no bf16 mode (its CPU kernels "
                                                   "compute fp32, fp16 or int8)")}

    def probe(self) -> Availability:
        missing = [pkg for mod, pkg in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert"))
                   if importlib.util.find_spec(mod) is None]
        if missing:
            return Availability(False, f"tflite: {' and '.join(missing)} not installed; {INSTALL}")
        return Availability(True, devices=("cpu",))

    def check(self, job: Job) -> Optional[str]:
        if job.model.scheme == "onnx":
            return "tflite: converts the PyTorch module with litert-torch; an onnx: model has none"
        if job.device != "cpu":
            return f"tflite: no device {job.device!r} (valid: cpu)"
        return None

    def export(self, ctx: ExportContext) -> Artifact:
        method = ctx.job.compression.method
        path = build_in_child(ctx.model, ctx.example, ctx.calib_x, method, ctx.workdir / "tflite")
        return Artifact([path], dtype=PRECISION.get(method, "fp32"), notes=[NOTES[method]] if method in NOTES else [])

    def load(self, artifact: Artifact, job: Job, threads: int) -> Engine:
        from ai_edge_litert.interpreter import Interpreter
        interp = Interpreter(model_path=str(artifact.main), num_threads=threads)
        interp.allocate_tensors()
        run = make_runner(interp, (job.batch_size, *job.model.input_size))
        return Engine(run=run, dtype=artifact.dtype, threads=threads, provider=f"litert-{_version()}:cpu")


def _version() -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def build(model: Any, example: np.ndarray, calib_x: np.ndarray, method: str, out: Path) -> Path:
    """Convert to fp32 .tflite, then quantize for `method`; returns the final file (the only one counted)."""
    out.mkdir(parents=True, exist_ok=True)
    fp32 = convert(model, example, out / "model_fp32.tflite")
    if method not in PRECISION:
        return fp32
    return quantize(fp32, method, calib_x, example.shape[0], out / f"model_{method}.tflite")


def build_in_child(model: Any, example: np.ndarray, calib_x: np.ndarray, method: str, out: Path,
                   timeout_s: float = 1800) -> Path:
    """`build` in a child process: litert-torch brings JAX, MLIR and the converter (~300 MB resident) that
    would otherwise stay in this process and count in the engine's RAM figures; a converter crash also
    stays there. A module that cannot be pickled is converted here instead (and logged)."""
    import torch
    out.mkdir(parents=True, exist_ok=True)
    job_file = out / "convert-job.pt"
    try:
        torch.save({"model": model, "example": example, "calib_x": calib_x, "method": method}, job_file)
    except Exception as e:  # e.g. a module defined inside a function
        log.warning("tflite: cannot pickle the model for a converter process (%s); converting in-process", e)
        return build(model, example, calib_x, method, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run([sys.executable, "-m", "fleetbench.agent.backends.tflite", str(job_file),
                               str(os.getpid())], env=env, capture_output=True, text=True, timeout=timeout_s)
    finally:
        job_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise RuntimeError(f"tflite converter process exited {proc.returncode}: {last.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _child_main(job_file: str) -> None:
    import torch
    spec = torch.load(job_file, map_location="cpu", weights_only=False)
    print(build(spec["model"], spec["example"], spec["calib_x"], spec["method"], Path(job_file).parent), flush=True)


def convert(model: Any, example: np.ndarray, path: Path) -> Path:
    """litert_torch.convert the module (fp32, eval) at the example's static shape and write the .tflite."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    import torch
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()   # the quantizer below owns precision: convert from fp32
    with torch.no_grad():
        edge = litert_torch.convert(model.eval(), (torch.from_numpy(np.ascontiguousarray(example)),))
    edge.export(str(path))
    return path


def quantize(fp32: Path, method: str, calib_x: np.ndarray, batch_size: int, path: Path) -> Path:
    """Apply ai-edge-quantizer's recipe for `method` to the fp32 .tflite (calibrating for int8-static)."""
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(fp32), _recipe(method))
    with warnings.catch_warnings(), _quiet_tqdm():   # it warns about its own debug interpreter option
        warnings.simplefilter("ignore", UserWarning)
        calibration = q.calibrate(_calibration_set(fp32, calib_x, batch_size)) if q.need_calibration else None
        q.quantize(calibration, enable_progress_report=False).export_model(str(path), overwrite=True)
    return path


def _recipe(method: str) -> Any:
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager
    if method == "int8-dynamic":
        return recipe.dynamic_wi8_afp32()
    if method == "int8-static":
        return recipe.static_wi8_ai8()
    if method == "fp16":
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        return rm.get_quantization_recipe()
    raise ValueError(f"tflite: no quantization recipe for {method!r}")


def _calibration_set(fp32: Path, calib_x: np.ndarray, batch_size: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration batches keyed by the model's signature and input name, at the model's batch size."""
    from ai_edge_litert.interpreter import Interpreter

    from fleetbench.agent.quality import batches
    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    return {key: [{name: chunk} for chunk, _ in batches(calib_x, batch_size)]}


@contextlib.contextmanager
def _quiet_tqdm():
    """No calibration progress bar in the agent's log."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def make_runner(interp: Any, nchw: tuple[int, ...]):
    """Host float32 NCHW batch in, float32 logits out; adapts layout (NHWC) and int8 I/O to the model."""
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = tuple(int(d) for d in inp["shape"])
    if shape == nchw:
        layout = None
    elif len(nchw) == 4 and shape == (nchw[0], nchw[2], nchw[3], nchw[1]):
        layout = (0, 2, 3, 1)
    else:
        raise RuntimeError(f"tflite model expects input {shape}, the job feeds {nchw}")
    to_model = _quantizer(inp)
    from_model = _dequantizer(out)
    in_idx, out_idx = inp["index"], out["index"]

    def run(x: np.ndarray) -> np.ndarray:
        if layout is not None:
            x = x.transpose(layout)
        interp.set_tensor(in_idx, to_model(np.ascontiguousarray(x)))
        interp.invoke()                       # synchronous on the CPU
        return from_model(interp.get_tensor(out_idx))

    return run


def _quantizer(detail: dict):
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return lambda x: x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return lambda x: np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantizer(detail: dict):
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return lambda y: y.astype(np.float32)   # a copy: the interpreter reuses its output buffer
    scale, zero = detail["quantization"]
    return lambda y: (y.astype(np.float32) - zero) * scale


if __name__ == "__main__":   # the converter process of build_in_child: it dies with the job
    from fleetbench.agent.childproc import die_with_parent
    die_with_parent(int(sys.argv[2]))
    _child_main(sys.argv[1])
