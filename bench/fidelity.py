"""Does fleetbench measure what the runtime really does? One ONNX artifact, measured several ways in one run.

1. through fleetbench (`run_sweep` on the embedded Ray cluster, an `onnx:` model, ORT and OpenVINO, in the
   latency and the throughput scenario);
2. through a bare loop of each runtime in its own process (same threads, same options, same calling code);
3. through OpenVINO's own `benchmark_app`: `-hint latency` (`-hint none -nstreams 1 -api sync` for the
   sub-millisecond demo model) and `-hint throughput`, on the IR converted from the same ONNX the way
   fleetbench converts it.

Every native run is made right before and right after fleetbench's sweep, and the two are averaged, so slow
drift of a shared machine hits both sides alike; rounds repeat that. Prints p50 ratios (fleetbench / native;
goal 0.95-1.05), OpenVINO's throughput ratio (fleetbench / benchmark_app -hint throughput; goal 0.9-1.1),
the machine's load average with the figures, and the per-job overhead.

    python bench/fidelity.py [--model demo|resnet50] [--seconds 5] [--batch-sizes 1 8] [--rounds 2] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE = r"""
import json, sys, time
import numpy as np
kind, path, shape, threads, seconds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
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
n, start = 0, time.perf_counter()
while n < 3 or time.perf_counter() - start < 1.0:   # warm up
    run(); n += 1
t = []
start = time.perf_counter()
while time.perf_counter() - start < seconds or len(t) < 10:
    a = time.perf_counter(); run(); t.append(time.perf_counter() - a)
print(json.dumps({"p50_ms": float(np.percentile(t, 50)) * 1e3, "n": len(t)}))
"""


@dataclass(frozen=True)
class Net:
    """The network under test: how fleetbench's sweep names it and its input."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    min_iters: int            # fleetbench's min_iters (a ResNet-50 at batch 8 makes ~15 calls in 5 s here)
    small: bool               # sub-millisecond: benchmark_app's sync, one-stream mode is the like-for-like run

    def shape(self, bs: int) -> list[int]:
        return [bs, *self.input_size]


NETS = {"demo": Net("digits-onnx", 10, (3, 32, 32), 200, True),
        "resnet50": Net("resnet50-onnx", 1000, (3, 224, 224), 10, False)}


def export(net: str, bs: int, out: Path) -> tuple[Path, Path]:
    """The ONNX file fleetbench is given, and the fp32 IR converted from it as fleetbench converts it."""
    import openvino as ov

    from fleetbench.agent.models import load_model
    from fleetbench.agent.onnx_export import export_onnx
    from fleetbench.shared.sweep import ModelSpec
    if net == "demo":
        from fleetbench.agent.data import load_dataset
        from fleetbench.shared.sweep import DatasetSpec
        spec = ModelSpec(name="digits", source="timm:test_resnet", num_classes=10, input_size=(3, 32, 32),
                         checkpoint=str(ROOT / "examples/digits/model.safetensors"))
        x = load_dataset(DatasetSpec(kind="digits", limit=bs), (3, 32, 32)).eval_x[:bs]
    else:   # random weights (no hub here); fleetbench re-initialises the layers timm zeroes, and says so
        import numpy as np
        spec = ModelSpec(name="resnet50", source="timm:resnet50", num_classes=1000, input_size=(3, 224, 224))
        x = np.random.default_rng(0).standard_normal((bs, 3, 224, 224)).astype(np.float32)
    model, _ = load_model(spec)
    onnx = export_onnx(model, x, out / f"{net}-bs{bs}" / "model.onnx")
    xml = onnx.with_name("model.xml")
    ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)   # as agent/backends/openvino
    return onnx, xml


def bare(kind: str, path: Path, shape: list[int], threads: int, seconds: float) -> float:
    p = subprocess.run([sys.executable, "-c", BARE, kind, str(path), json.dumps(shape), str(threads), str(seconds)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["p50_ms"]


def benchmark_app(xml: Path, shape: list[int], threads: int, seconds: float, mode: str) -> float:
    """benchmark_app's median latency (ms) for mode `latency`/`sync`, or its throughput (items/s) for `throughput`."""
    exe = [sys.executable, "-c", "import sys; from openvino.tools.benchmark.main import main; sys.exit(main())"]
    # its rule: a hint takes no -nthreads (the hints use every core), only -hint none does
    how = {"sync": ["-hint", "none", "-nstreams", "1", "-api", "sync", "-nthreads", str(threads)],
           "latency": ["-hint", "latency"], "throughput": ["-hint", "throughput"]}[mode]
    p = subprocess.run([*exe, "-m", str(xml), "-d", "CPU", *how,
                        "-t", str(max(1, round(seconds))), "-infer_precision", "f32",
                        "-shape", f"[{','.join(map(str, shape))}]"], capture_output=True, text=True, check=True)
    text = p.stdout + p.stderr   # it logs its report on stderr, in us or ms
    if mode == "throughput":
        m = re.search(r"Throughput:\s+([\d.]+)\s*FPS", text)
        if not m:
            raise RuntimeError(f"benchmark_app printed no throughput:\n{text[-2000:]}")
        return float(m.group(1))
    m = re.search(r"Median:\s+([\d.]+)\s*(us|ms)", text)
    if not m:
        raise RuntimeError(f"benchmark_app printed no median:\n{text[-2000:]}")
    return float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)


def fleetbench(net: Net, onnx: Path, bs: int, seconds: float, threads: int, work: Path,
               scenario: str) -> tuple[list[dict], float]:
    """One `run_sweep`: the latency scenario on ORT and OpenVINO, or OpenVINO's throughput scenario."""
    from fleetbench.coordinator.run import run_sweep
    from fleetbench.coordinator.store import query
    name = f"fidelity-{net.name}-bs{bs}-{scenario}"
    sweep = {"name": name, "models": [{"name": net.name, "source": f"onnx:{onnx}", "num_classes": net.num_classes,
                                       "input_size": list(net.input_size)}],
             "dataset": {"kind": "synthetic", "limit": 16}, "scenarios": [scenario],
             "backends": ["onnxruntime", "openvino"] if scenario == "latency" else ["openvino"],
             "batch_sizes": [bs], "measure": {"warmup_iters": 50 if net.small else 3, "min_iters": net.min_iters,
                                              "min_duration_s": seconds, "max_duration_s": seconds * 4,
                                              "threads": threads}}
    sweep_path, db = work / f"{name}.yaml", work / "fidelity.duckdb"
    sweep_path.write_text(yaml.safe_dump(sweep))
    t0 = time.perf_counter()
    run_sweep(str(sweep_path), db=str(db), progress=False, out=open(os.devnull, "w"))
    total = time.perf_counter() - t0
    cols, rows = query(db, f"SELECT backend, scenario, latency_p50_ms, throughput_ips, streams, wall_s, measure_s, "
                           f"started_at, finished_at, threads FROM results WHERE sweep = '{name}' AND status = 'ok' "
                           f"AND run_id = (SELECT max(run_id) FROM sweeps WHERE sweep = '{name}') ORDER BY started_at")
    return [dict(zip(cols, r)) for r in rows], total


def gaps(rows: list[dict]) -> list[float]:
    """Seconds between one job's end and the next one's start on the same node (dispatch, the job process's start)."""
    ts = [(r["started_at"], r["finished_at"]) for r in rows]
    return [(b[0] - a[1]).total_seconds() for a, b in zip(ts, ts[1:]) if isinstance(a[1], datetime)]


def natives(net: Net, onnx: Path, xml: Path, bs: int, threads: int, seconds: float, throughput: bool) -> dict[str, float]:
    """One native run of each: bare ORT and OpenVINO loops, benchmark_app latency (and throughput)."""
    shape = net.shape(bs)
    latency_mode = "latency" if not net.small and threads == cores() else "sync"
    out = {"onnxruntime": bare("onnxruntime", onnx, shape, threads, seconds),
           "openvino": bare("openvino", xml, shape, threads, seconds),
           "app": benchmark_app(xml, shape, threads, seconds, latency_mode)}
    if throughput:
        out["app_throughput"] = benchmark_app(xml, shape, threads, seconds, "throughput")
    return out


def cores() -> int:
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Tally:
    """The per-job overheads of every fleetbench run, over all batch sizes."""

    overheads: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)


def one_batch_size(net: Net, model: str, bs: int, args: argparse.Namespace, threads: int, work: Path,
                   tally: Tally) -> Optional[str]:
    """Rounds of native, fleetbench, native at one batch size: prints the latency lines, returns the
    throughput line. Per-round ratios (ORT: to its bare loop; OpenVINO: to benchmark_app) show the spread."""
    onnx, xml = export(model, bs, work)
    throughput = not args.no_throughput
    fb: dict[str, list[float]] = {"onnxruntime": [], "openvino": []}
    nat: dict[str, list[float]] = {"onnxruntime": [], "openvino": [], "app": [], "app_throughput": []}
    fb_tput: list[tuple[float, int]] = []
    loads: list[str] = []
    for _ in range(args.rounds):   # native, fleetbench, native: drift on a shared machine hits all alike
        before = natives(net, onnx, xml, bs, threads, args.seconds, throughput)
        rows, total = fleetbench(net, onnx, bs, args.seconds, threads, work, "latency")
        tally.gaps += gaps(rows)
        tally.totals.append(total)
        if throughput:   # benchmark_app's throughput hint takes every core: so does this sweep
            rows += fleetbench(net, onnx, bs, args.seconds, cores(), work, "throughput")[0]
        after = natives(net, onnx, xml, bs, threads, args.seconds, throughput)
        loads.append(f"{os.getloadavg()[0]:.2f}")
        for k in before:
            nat[k].append((before[k] + after[k]) / 2)
        for r in rows:
            if r["scenario"] == "throughput":
                fb_tput.append((r["throughput_ips"], r["streams"]))
                continue
            fb[r["backend"]].append(r["latency_p50_ms"])
            tally.overheads.append(r["wall_s"] - r["measure_s"])
            assert r["threads"] == threads, r
    for kind in fb:
        ref = nat["app"] if kind == "openvino" else nat[kind]
        per_round = " ".join(f"{f / n:.3f}" for f, n in zip(fb[kind], ref))
        f, n = statistics.median(fb[kind]), statistics.median(nat[kind])
        extra = f" {'':>14} {'':>6}"
        if kind == "openvino":
            a = statistics.median(nat["app"])
            extra = f" {a:>14.4f} {f / a:>6.3f}"
        print(f"{bs:>3} {kind:<12} {f:>15.4f} {n:>9.4f} {f / n:>6.3f}{extra}   {per_round:<14} {' '.join(loads)}")
    if not fb_tput:
        return None
    f, a = statistics.median(t for t, _ in fb_tput), statistics.median(nat["app_throughput"])
    per_round = " ".join(f"{t / n:.3f}" for (t, _), n in zip(fb_tput, nat["app_throughput"]))
    return (f"{bs:>3} {'openvino':<12} {f:>18.1f} {a:>30.1f} {f / a:>6.3f}   {per_round:<14} "
            f"{','.join(str(s) for _, s in fb_tput)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(NETS), default="demo")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="engine threads everywhere (default: 1 for the demo model, leaving a core to Ray's "
                         "daemons on a 2-core machine; every physical core for resnet50)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput scenario and its comparison")
    args = ap.parse_args()
    net = NETS[args.model]
    threads = args.threads or (1 if net.small else cores())
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    print(f"{args.model}, {threads} thread(s), {args.seconds:g} s windows, {args.rounds} round(s); "
          f"native runs before and after fleetbench's, averaged; {load_average()}")
    print(f"{'bs':>3} {'engine':<12} {'fleetbench p50':>15} {'bare p50':>9} {'ratio':>6} {'benchmark_app':>14} "
          f"{'ratio':>6}   {'per round':<14} load (1 min) per round")
    tally = Tally()
    tput = [line for bs in args.batch_sizes if (line := one_batch_size(net, args.model, bs, args, threads, work, tally))]
    if tput:
        print(f"\n{'bs':>3} {'engine':<12} {'fleetbench items/s':>18} {'benchmark_app -hint throughput':>30} "
              f"{'ratio':>6}   {'per round':<14} requests in flight")
        print("\n".join(tput))
    print(f"\n{load_average()} at the end")
    print(f"per job (agent side): wall - measuring window = {statistics.mean(tally.overheads):.2f} s mean "
          f"(load model+data, reference, export, build, evaluate; n={len(tally.overheads)})")
    if tally.gaps:
        print(f"between jobs on a node (coordinator, Ray, the job process's start): {statistics.mean(tally.gaps):.2f} s mean, "
              f"max {max(tally.gaps):.2f} s (n={len(tally.gaps)})")
    print(f"whole `run_sweep` of 2 jobs incl. Ray start + fleet probe: {statistics.mean(tally.totals):.1f} s mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
