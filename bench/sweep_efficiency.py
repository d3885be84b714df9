"""How much of a node's time is measurement? A course-scale sweep, cold then warm, and the RSS of a measuring process.

In one invocation, with a private node cache (FLEETBENCH_CACHE under --out) on an embedded local Ray cluster:

1. the sweep below on a cold cache, then again as a new run on the warm cache; for each it prints
   - efficiency = sum of timed windows (`measure_s` of every ok row) / sweep wall time (the whole
     `run_sweep` call: cluster start, discovery, dispatch, rows stored);
   - its ceiling: the timed windows over the measure stages (first call, the sweep's warm-up, the windows),
     the efficiency a node would reach if nothing but measurement ever ran on it;
   - node seconds outside the timed windows per job, by stage: from the row's `stage_s` (seconds per
     stage, where the agent records it) or else from `export_s`, `build_s` and `wall_s`; `outside job`
     is the sweep wall time not inside any job's `wall_s` (worker start, dispatch, coordinator), per job;
2. the peak RSS (`ram_peak_mb`) of the measuring process per backend on the digits demo model.

    python bench/sweep_efficiency.py [--model efficientvit_b3] [--input 224] [--images 64]
        [--batch-sizes 1 8] [--compression none cluster-32 int8-static]
        [--backends pytorch torchscript onnxruntime openvino] [--min-duration 3] [--out DIR] [--no-ray]

--no-ray runs the planned jobs one at a time, each in a fresh Python process, without a Ray cluster (where
Ray cannot start, e.g. on an overloaded machine); a Ray worker's own start is then not in the wall time.

The defaults are the course's case (timm efficientvit_b3 without a checkpoint, 1000 classes, synthetic data).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # stay on 127.0.0.1


def sweep_spec(name: str, a) -> dict:
    return {"name": name,
            "models": [{"name": a.model, "source": f"timm:{a.model}", "num_classes": 1000,
                        "input_size": [3, a.input, a.input]}],
            "dataset": {"kind": "synthetic", "limit": a.images},
            "compression": a.compression, "backends": a.backends, "batch_sizes": a.batch_sizes,
            "targets": ["all"], "timeout_s": 3600,
            "measure": {"warmup_iters": 5, "min_iters": 10, "min_duration_s": a.min_duration, "max_duration_s": 30}}


def digits_spec(backends: list[str]) -> dict:
    return {"name": "rss-digits",
            "models": [{"name": "digits-test_resnet", "source": "timm:test_resnet",
                        "checkpoint": str(ROOT / "examples" / "digits" / "model.safetensors"),
                        "num_classes": 10, "input_size": [3, 32, 32]}],
            "dataset": {"kind": "digits"}, "compression": ["none"], "backends": backends, "batch_sizes": [1],
            "targets": ["all"], "measure": {"warmup_iters": 10, "min_iters": 50, "min_duration_s": 1,
                                            "max_duration_s": 10}}


def run(spec: dict, out: Path, db: Path) -> tuple[float, list[dict]]:
    from fleetbench.coordinator.run import run_sweep
    path = out / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    t = time.perf_counter()
    run_sweep(str(path), db=str(db), progress=False, out=io.StringIO())
    wall = time.perf_counter() - t
    import duckdb
    with duckdb.connect(str(db), read_only=True) as con:
        run_id = con.execute("SELECT run_id FROM sweeps WHERE sweep = ? ORDER BY started_at DESC LIMIT 1",
                             [spec["name"]]).fetchone()[0]
        cur = con.execute("SELECT * FROM results WHERE run_id = ?", [run_id])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return wall, rows


JOB_SCRIPT = """
import pickle, sys
from fleetbench.agent.runner import run_job
job = pickle.loads(open(sys.argv[1], "rb").read())
open(sys.argv[2], "wb").write(pickle.dumps(run_job(job).to_row()))
"""


def run_local(spec: dict, out: Path) -> tuple[float, list[dict]]:
    """The same jobs without Ray, as one node runs them: one at a time, each in a fresh Python process
    (so a Ray worker's own start, ~1 s a job, is not counted)."""
    import pickle
    import subprocess

    from fleetbench.agent.probe import probe
    from fleetbench.coordinator.plan import plan
    from fleetbench.shared.sweep import load_sweep
    path = out / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(str(path))
    the_plan = plan(sweep, [probe()])
    rows = [r.to_row() for r in the_plan.unsupported]
    t = time.perf_counter()
    for i, job in enumerate(the_plan.jobs):
        jf, rf = out / f"job{i}.pkl", out / f"row{i}.pkl"
        jf.write_bytes(pickle.dumps(job))
        subprocess.run([sys.executable, "-c", JOB_SCRIPT, str(jf), str(rf)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rows.append(pickle.loads(rf.read_bytes()))
    return time.perf_counter() - t, rows


def stage_seconds(row: dict) -> dict[str, float]:
    """Seconds of one job outside its timed window, by stage."""
    window = row.get("measure_s") or 0.0
    if row.get("stage_s"):
        out = {k: float(v) for k, v in json.loads(row["stage_s"]).items()}
        out["measure"] = max(0.0, out.get("measure", 0.0) - window)   # first call, warm-up, probes
        if "process" in out:   # the measuring process's life: what its own stages do not account for
            inside = sum(out.get(k, 0.0) for k in ("spawn", "build", "evaluate")) + out["measure"] + window
            out["measuring process: exit and hand-back"] = max(0.0, out.pop("process") - inside)
        return out
    export, build = row.get("export_s") or 0.0, row.get("build_s") or 0.0
    return {"export": export, "build": build,
            "load, compress, measure outside window, evaluate": max(0.0, (row.get("wall_s") or 0) - export - build - window)}


def report(title: str, wall: float, rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    windows = sum(r.get("measure_s") or 0.0 for r in ok)
    in_jobs = sum(r.get("wall_s") or 0.0 for r in rows)
    per_stage: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in stage_seconds(r).items():
            per_stage[k] += v
    n = max(1, len(rows))
    per_stage["outside job (process start, dispatch, coordinator)"] = max(0.0, wall - in_jobs)
    eff = windows / wall if wall else float("nan")
    # the measure stage is the first call, the warm-up the sweep asks for and the windows: with nothing
    # else on the node at all, efficiency could be no higher than this on this machine
    staged = sum(json.loads(r["stage_s"]).get("measure", 0.0) for r in ok if r.get("stage_s"))
    ceiling = windows / staged if staged else float("nan")
    print(f"\n{title}: {len(rows)} jobs ({len(ok)} ok), wall {wall:.1f} s, timed windows {windows:.1f} s, "
          f"efficiency {eff:.3f}")
    print(f"  ceiling: timed windows / measure stages (first call, warm-up, windows: {staged:.1f} s) = "
          f"{ceiling:.3f}, what efficiency would be with no other work on the node")
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['compression']}/{r['backend']}/bs{r['batch_size']}: {r.get('error')}")
    print("  node seconds outside timed windows, per job:")
    for k, v in sorted(per_stage.items(), key=lambda kv: -kv[1]):
        print(f"    {k:<55} {v / n:8.2f}")
    return {"wall_s": wall, "windows_s": windows, "efficiency": eff, "ceiling": ceiling, "jobs": len(rows), "ok": len(ok),
            "per_job_s": {k: v / n for k, v in per_stage.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientvit_b3")
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--compression", nargs="+", default=["none", "cluster-32", "int8-static"])
    p.add_argument("--backends", nargs="+", default=["pytorch", "torchscript", "onnxruntime", "openvino"])
    p.add_argument("--rss-backends", nargs="+", default=["pytorch", "torchscript", "onnxruntime", "openvino", "tflite"])
    p.add_argument("--min-duration", type=float, default=3.0)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-ray", action="store_true", help="run the jobs one at a time in fresh processes, without Ray")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="fleetbench-eff-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["FLEETBENCH_CACHE"] = str(out / "cache")   # a cold node cache of its own (workers inherit it)
    from fleetbench.agent.probe import cpu_info
    cpu, flags = cpu_info()
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, ISA: {' '.join(f for f in flags if 'avx' in f)}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    summary: dict = {"machine": cpu, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    if not a.skip_sweep:
        spec = sweep_spec("sweep-efficiency", a)
        for phase in ("cold", "warm"):
            wall, rows = run_local(spec, out) if a.no_ray else run(spec, out, out / "sweep.duckdb")
            summary[phase] = report(f"{phase} cache", wall, rows)
    if not a.skip_rss:
        spec = digits_spec(a.rss_backends)
        _, rows = run_local(spec, out) if a.no_ray else run(spec, out, out / "rss.duckdb")
        print("\npeak RSS of the measuring process, digits demo model, bs 1:")
        summary["rss_mb"] = {}
        for r in sorted(rows, key=lambda r: r["backend"]):
            print(f"  {r['backend']:<12} {r['status']:<11} ram_peak_mb {r.get('ram_peak_mb') or float('nan'):8.1f}  "
                  f"ram_delta_mb {r.get('ram_delta_mb') or float('nan'):7.1f}")
            summary["rss_mb"][r["backend"]] = r.get("ram_peak_mb")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
