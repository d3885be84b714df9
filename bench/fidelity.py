"""Does fleetbench measure what the runtime really does? One ONNX artifact, measured three ways in one run.

1. through fleetbench (`run_sweep` on the embedded Ray cluster, an `onnx:` model, ORT and OpenVINO);
2. through a bare loop of each runtime in its own process (same threads, same options);
3. through OpenVINO's own `benchmark_app`.

Prints p50 ratios (fleetbench / native; goal 0.95-1.05) and the per-job overhead: a job's wall time
minus its measuring window, and the gap the coordinator and Ray add between consecutive jobs.

    python bench/fidelity.py [--seconds 5] [--batch-sizes 1 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE = r"""
import json, sys, time
import numpy as np
kind, path, bs, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
x = np.random.default_rng(0).standard_normal((bs, 3, 32, 32)).astype(np.float32)
if kind == "onnxruntime":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, sess_options=o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    run = lambda: s.run(None, {name: x})
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})
    r = c.create_infer_request()
    def run():
        r.get_input_tensor(0).data[...] = x; r.infer(); return r.get_output_tensor(0).data.copy()
for _ in range(50):
    run()
t = []
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    a = time.perf_counter(); run(); t.append(time.perf_counter() - a)
print(json.dumps({"p50_ms": float(np.percentile(t, 50)) * 1e3, "n": len(t)}))
"""


def export(bs: int, out: Path) -> Path:
    from fleetbench.agent.data import load_dataset
    from fleetbench.agent.models import load_model
    from fleetbench.agent.onnx_export import export_onnx
    from fleetbench.shared.sweep import DatasetSpec, ModelSpec
    spec = ModelSpec(name="digits", source="timm:test_resnet", checkpoint=str(ROOT / "examples/digits/model.safetensors"),
                     num_classes=10, input_size=(3, 32, 32))
    model, _ = load_model(spec)
    x = load_dataset(DatasetSpec(kind="digits", limit=bs), (3, 32, 32)).eval_x[:bs]
    return export_onnx(model, x, out / f"bs{bs}" / "model.onnx")


def bare(kind: str, path: Path, bs: int, threads: int, seconds: float) -> float:
    p = subprocess.run([sys.executable, "-c", BARE, kind, str(path), str(bs), str(threads), str(seconds)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["p50_ms"]


def benchmark_app(path: Path, bs: int, threads: int, seconds: float) -> float:
    exe = Path(sys.executable).with_name("benchmark_app")
    p = subprocess.run([str(exe), "-m", str(path), "-d", "CPU", "-hint", "none", "-nstreams", "1",
                        "-nthreads", str(threads), "-api", "sync", "-t", str(int(seconds)), "-infer_precision", "f32",
                        "-shape", f"[{bs},3,32,32]"], capture_output=True, text=True, check=True)
    text = p.stdout + p.stderr   # it logs its report on stderr, in us or ms
    m = re.search(r"Median:\s+([\d.]+)\s*(us|ms)", text)
    if not m:
        raise RuntimeError(f"benchmark_app printed no median:\n{text[-2000:]}")
    return float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)


def fleetbench(path: Path, bs: int, seconds: float, threads: int, work: Path) -> tuple[list[dict], float]:
    from fleetbench.coordinator.run import run_sweep
    from fleetbench.coordinator.store import query
    sweep = {"name": f"fidelity-bs{bs}", "models": [{"name": "digits-onnx", "source": f"onnx:{path}",
                                                      "num_classes": 10, "input_size": [3, 32, 32]}],
             "dataset": {"kind": "synthetic", "limit": 16}, "backends": ["onnxruntime", "openvino"],
             "batch_sizes": [bs], "measure": {"warmup_iters": 50, "min_iters": 200, "min_duration_s": seconds,
                                              "max_duration_s": seconds * 4, "threads": threads}}
    sweep_path, db = work / f"fid{bs}.yaml", work / "fidelity.duckdb"
    sweep_path.write_text(yaml.safe_dump(sweep))
    t0 = time.perf_counter()
    run_sweep(str(sweep_path), db=str(db), progress=False, out=open("/dev/null", "w"))
    total = time.perf_counter() - t0
    cols, rows = query(db, f"SELECT backend, latency_p50_ms, wall_s, measure_s, started_at, finished_at, threads "
                           f"FROM results WHERE sweep = 'fidelity-bs{bs}' AND status = 'ok' "
                           f"AND run_id = (SELECT max(run_id) FROM sweeps WHERE sweep = 'fidelity-bs{bs}') ORDER BY started_at")
    return [dict(zip(cols, r)) for r in rows], total


def gaps(rows: list[dict]) -> list[float]:
    """Seconds between one job's end and the next one's start on the same node (dispatch + fresh worker)."""
    ts = [(r["started_at"], r["finished_at"]) for r in rows]
    return [(b[0] - a[1]).total_seconds() for a, b in zip(ts, ts[1:]) if isinstance(a[1], datetime)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="engine threads in all three (1 leaves a core to Ray's daemons on a 2-core machine)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    print(f"{'bs':>3} {'engine':<12} {'fleetbench p50':>15} {'bare p50':>9} {'ratio':>6} {'benchmark_app':>14} {'ratio':>6}")
    overheads, gap_list, totals = [], [], []
    for bs in args.batch_sizes:
        path = export(bs, work)
        fb: dict[str, list[float]] = {"onnxruntime": [], "openvino": []}
        nat: dict[str, list[float]] = {"onnxruntime": [], "openvino": []}
        app: list[float] = []
        threads = args.threads
        for _ in range(args.rounds):   # interleave so drift on a shared machine hits all three alike
            rows, total = fleetbench(path, bs, args.seconds, args.threads, work)
            totals.append((total, len(rows)))
            for r in rows:
                fb[r["backend"]].append(r["latency_p50_ms"])
                overheads.append(r["wall_s"] - r["measure_s"])
                assert r["threads"] == threads, r
            gap_list += gaps(rows)
            for kind in fb:
                nat[kind].append(bare(kind, path, bs, threads, args.seconds))
            app.append(benchmark_app(path, bs, threads, args.seconds))
        for kind in fb:
            f, n = statistics.median(fb[kind]), statistics.median(nat[kind])
            extra = ""
            if kind == "openvino":
                a = statistics.median(app)
                extra = f" {a:>14.4f} {f / a:>6.3f}"
            print(f"{bs:>3} {kind:<12} {f:>15.4f} {n:>9.4f} {f / n:>6.3f}{extra}")
    print(f"\nper job (agent side): wall - measuring window = {statistics.mean(overheads):.2f} s mean "
          f"(load model+data, reference, export, build, evaluate; n={len(overheads)})")
    if gap_list:
        print(f"between jobs on a node (coordinator + Ray fresh worker): {statistics.mean(gap_list):.2f} s mean, "
              f"max {max(gap_list):.2f} s (n={len(gap_list)})")
    per_run = [t for t, _ in totals]
    print(f"whole `run_sweep` of 2 jobs incl. Ray start + fleet probe: {statistics.mean(per_run):.1f} s mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
