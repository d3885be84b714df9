"""Do the validity verdicts tell a clean window from a disturbed one? The same engine measured N times
quiet and N times while busy loops (one per CPU) compete, alternating quiet and loaded runs so that
the machine's drift hits both alike.

Prints how often each case is marked valid (goal: >= 9/10 quiet valid, >= 9/10 loaded invalid), the
reasons given, and the spread of p50 among valid rows against all rows.

    python bench/validity.py [--runs 10] [--backend onnxruntime] [--seconds 2]
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPIN = "import time\nt = time.time()\nwhile time.time() - t < 600: pass\n"


def one(backend: str, seconds: float, loaded: bool):
    from fleetbench.agent.runner import run_job
    from fleetbench.shared.job import Job
    from fleetbench.shared.sweep import CompressionSpec, DatasetSpec, MeasureSpec, ModelSpec
    model = ModelSpec(name="digits", source="timm:test_resnet", checkpoint=str(ROOT / "examples/digits/model.safetensors"),
                      num_classes=10, input_size=(3, 32, 32))
    job = Job(sweep="validity-bench", model=model, dataset=DatasetSpec(kind="digits", limit=32),
              compression=CompressionSpec(method="none"), backend=backend, device="cpu", batch_size=1,
              measure=MeasureSpec(min_duration_s=seconds, max_duration_s=10 * seconds))
    spin = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(os.cpu_count() or 1)] if loaded else []
    try:
        return run_job(job)
    finally:
        for p in spin:
            p.kill()
            p.wait()


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    return f"{100 * (max(values) - min(values)) / statistics.median(values):.0f}% (max-min over median, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    from fleetbench.agent.probe import cpu_info
    model, flags = cpu_info()
    isa = ",".join(f for f in flags if "avx512" in f or "amx" in f) or flags
    print(f"machine: {model}, {os.cpu_count()} logical CPUs, isa {isa}")
    print(f"command: python bench/validity.py --runs {args.runs} --backend {args.backend} --seconds {args.seconds:g}")
    rows = {"quiet": [], "loaded": []}
    for i in range(args.runs):
        for case in ("quiet", "loaded"):
            r = one(args.backend, args.seconds, case == "loaded")
            if r.status != "ok":
                print(f"{case} run {i + 1}: {r.status}: {r.error}")
                continue
            rows[case].append(r)
            print(f"{case:6s} {i + 1:2d}: p50 {r.latency_p50_ms:.3f} ms valid={r.valid} other={r.other_cpu_cores:.2f} "
                  f"cores steal={r.cpu_steal_pct:.1f}% cv={r.cv_pct:.0f}%", flush=True)
    print()
    for case, got in rows.items():
        valid = [r for r in got if r.valid]
        reasons = collections.Counter(re.sub(r"[\d.]+", "#", x.split(":")[0]) for r in got
                                      for x in (r.validity or "").split("; ") if x)
        print(f"{case}: {len(valid)}/{len(got)} valid; reasons: "
              + (", ".join(f"{k} x{n}" for k, n in reasons.most_common()) or "none"))
    everything = rows["quiet"] + rows["loaded"]
    print(f"p50 spread, all rows:   {spread([r.latency_p50_ms for r in everything])}")
    print(f"p50 spread, valid rows: {spread([r.latency_p50_ms for r in everything if r.valid])}")
    print(f"python {platform.python_version()}")


if __name__ == "__main__":
    main()
