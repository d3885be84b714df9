"""Write tests/fixtures/gpu_api_names.json: the NVIDIA API names fleetbench uses, each checked against the
real packages, so the test fakes (tests/fixtures/fake_gpu.py) can refuse every other name.

- TensorRT: the names the `tensorrt-cu12-bindings` wheel exports (identifiers in its extension module's
  string table, read from the file without loading it: it needs the CUDA libraries), plus the module-level
  names of its __init__.py. fleetbench's names are the attributes agent/backends/tensorrt.py touches.
- NVML: the functions and classes of nvidia-ml-py's pynvml.py (read with ast), fleetbench's names are the
  `pynvml.*` names under agent/.
- ONNX Runtime GPU provider options: the option names ORT parses, transcribed from ORT's sources
  (onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc, .../cuda/cuda_execution_provider_info.cc),
  as the ORT documentation lists them.

    python scripts/fake_api_names.py --download          # pip download both wheels into a temp dir
    python scripts/fake_api_names.py --trt-wheel W.whl --nvml-wheel N.whl

Exits 1 (naming them) when fleetbench uses a TensorRT or NVML name the real package does not have.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "gpu_api_names.json"

ORT_OPTIONS = {
    "source": "onnxruntime/core/providers/{tensorrt/tensorrt,cuda/cuda}_execution_provider_info.cc "
              "(provider_option_names); onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html",
    "TensorrtExecutionProvider": [
        "device_id", "has_user_compute_stream", "user_compute_stream", "trt_max_partition_iterations",
        "trt_min_subgraph_size", "trt_max_workspace_size", "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable",
        "trt_int8_calibration_table_name", "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
        "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix",
        "trt_engine_decryption_enable", "trt_engine_decryption_lib_path", "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable",
        "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
        "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_tactic_sources",
        "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes",
        "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path", "trt_ep_context_embed_mode",
        "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path", "trt_engine_hw_compatible",
        "trt_op_types_to_exclude"],
    "CUDAExecutionProvider": [
        "device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
        "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
        "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
        "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
        "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32",
        "fuse_conv_bias", "sdpa_kernel"],
}


def trt_exported(wheel: Path) -> tuple[str, callable]:
    """(version, has(name)) of a tensorrt bindings wheel, without importing it."""
    with zipfile.ZipFile(wheel) as z:
        so = next(n for n in z.namelist() if re.search(r"/tensorrt[^/]*\.so$", n))
        init = next(n for n in z.namelist() if n.endswith("/__init__.py") and n.count("/") == 1)
        blob, src = z.read(so), z.read(init).decode()
    tree = ast.parse(src)
    module_names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            module_names.add(node.name)
        elif isinstance(node, ast.Assign):
            module_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    version = re.search(r'__version__\s*=\s*"([^"]+)"', src).group(1)

    def has(name: str) -> bool:
        # pybind11 registers every class, method, property and enum value under a NUL-terminated literal;
        # the linker may merge one literal into the tail of a longer one ("Logger" into "ILogger")
        return name in module_names or name.encode() + b"\x00" in blob

    return version, has


def nvml_exported(wheel: Path) -> tuple[str, set[str]]:
    with zipfile.ZipFile(wheel) as z:
        src = z.read("pynvml.py").decode()
    version = re.search(r"nvidia_ml_py-([^-]+)-", wheel.name).group(1)
    tree = ast.parse(src)
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names.update(t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name))
    return version, names


# Names the fake itself needs to model TensorRT faithfully (I/O tensor types, builder flags), checked too.
TRT_FAKE_ALSO = ("DataType", "FLOAT", "HALF", "INT8", "OUTPUT", "STRONGLY_TYPED")   # no FP16: TensorRT 11 dropped that flag


def trt_used() -> set[str]:
    """Attribute names agent/backends/tensorrt.py touches (on the tensorrt module and its objects)."""
    tree = ast.parse((ROOT / "agent" / "backends" / "tensorrt.py").read_text())
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names.update(n.args[1].value for n in ast.walk(tree)                   # getattr(obj, "NAME", default)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
                 and len(n.args) > 1 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str))
    return names


def nvml_used() -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "agent").rglob("*.py"))
    names = set(re.findall(r"\b(?:pynvml|_nvml|nvml|nv)\.((?:nvml|NVML)\w+)", text))
    return names | set(re.findall(r"getattr\(\w+, \"(nvml\w+)\"", text))   # getattr(nv, "nvmlX", None)


def download(dest: Path) -> tuple[Path, Path]:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                    "tensorrt-cu12-bindings", "nvidia-ml-py"], check=True)
    return next(dest.glob("tensorrt_cu12_bindings-*.whl")), next(dest.glob("nvidia_ml_py-*.whl"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--trt-wheel", type=Path)
    ap.add_argument("--nvml-wheel", type=Path)
    args = ap.parse_args()
    if args.download:
        args.trt_wheel, args.nvml_wheel = download(Path(tempfile.mkdtemp(prefix="fake-api-")))
    if not (args.trt_wheel and args.nvml_wheel):
        ap.error("give --download, or both --trt-wheel and --nvml-wheel")
    for w in (args.trt_wheel, args.nvml_wheel):
        if not w.is_file():
            print(f"{w}: wheel not found", file=sys.stderr)
            return 2
    trt_version, trt_has = trt_exported(args.trt_wheel)
    nvml_version, nvml_names = nvml_exported(args.nvml_wheel)
    # fleetbench's own helpers are attributes too (self.memory, ...): only TensorRT's names are listed
    trt_list = sorted(n for n in trt_used() | set(TRT_FAKE_ALSO) if trt_has(n))
    absent = [n for n in TRT_FAKE_ALSO if not trt_has(n)]
    if absent:
        print(f"TensorRT {trt_version} lacks {', '.join(absent)}: the fake models them", file=sys.stderr)
        return 1
    nvml_wanted = nvml_used()
    missing = sorted(nvml_wanted - nvml_names)
    out = {
        "tensorrt": {"version": trt_version, "wheel": args.trt_wheel.name, "names": trt_list},
        "pynvml": {"version": nvml_version, "wheel": args.nvml_wheel.name, "names": sorted(nvml_wanted & nvml_names)},
        "onnxruntime_provider_options": ORT_OPTIONS,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{OUT.relative_to(ROOT)}: tensorrt {trt_version} ({len(trt_list)} names), "
          f"nvidia-ml-py {nvml_version} ({len(out['pynvml']['names'])} names)")
    if missing:
        print(f"fleetbench uses NVML names nvidia-ml-py {nvml_version} does not have: {', '.join(missing)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
