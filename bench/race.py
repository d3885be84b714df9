"""search: race against search: exhaustive on one sweep, side by side in one invocation (docs/search.md).

The same sweep runs twice on an embedded local Ray cluster, each way with a cold node cache of its own
(under --out), exhaustive first. For each way it prints the node time (the sum of the jobs' `wall_s`:
every block and final for the race) and the recommendation (`best`, quality drop <= the bound, validity
verdicts ignored: on a shared machine every window may be judged unclean); for the race also its tie
group with P(fastest), and what its sequential quality checks used:

- predictions: the images the race's quality steps predicted / the images the exhaustive sweep
  evaluated (one full set per configuration);
- wrong eliminations: configurations the race left out at quality whose full evaluation (the
  exhaustive row) is within the bound (must be none).

    python bench/race.py [--images 2000] [--dataset synthetic|digits] [--min-duration 1] [--repeats 3]
        [--backends onnxruntime openvino torchscript] [--compression none fp16 int8-dynamic int8-static]
        [--out DIR]

The model is the digits demo (examples/digits, 3x32x32). On `synthetic` inputs quality is the top-1
agreement with the fp32 reference; on `digits` (the held-out split) the accuracy drop bounds the F1 one.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # stay on 127.0.0.1


def spec(a, strategy: str) -> dict:
    return {"name": f"race-bench-{strategy}",
            "models": [{"name": "digits", "source": "timm:test_resnet",
                        "checkpoint": str(ROOT / "examples" / "digits" / "model.safetensors"),
                        "num_classes": 10, "input_size": [3, 32, 32]}],
            "dataset": {"kind": a.dataset, **({"limit": a.images} if a.images else {})},
            "compression": a.compression, "backends": a.backends, "batch_sizes": [1], "timeout_s": 3600,
            "measure": {"warmup_iters": 10, "min_iters": 50, "min_duration_s": a.min_duration,
                        "max_duration_s": 30, "repeats": a.repeats},
            "search": {"strategy": strategy, "quality_bound": a.bound}}


def run_way(a, strategy: str, out: Path) -> dict:
    from fleetbench.coordinator.run import run_sweep
    from fleetbench.coordinator.store import query
    folder = out / strategy
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["FLEETBENCH_CACHE"] = str(folder / "cache")   # cold, and its own: nothing reused across ways
    path, db = folder / "sweep.yaml", folder / "r.duckdb"
    path.write_text(yaml.safe_dump(spec(a, strategy)))
    t = time.perf_counter()
    run_sweep(str(path), db=str(db), progress=False, out=io.StringIO())
    wall = time.perf_counter() - t
    _, rows = query(db, "SELECT job_id, backend, compression, status, stage, error, wall_s, eval_samples, "
                        "top1_agreement, latency_p50_ms FROM results")
    node_s = sum(r[6] or 0.0 for r in rows if r[3] != "eliminated")
    blocks: list = []
    if strategy == "race":
        _, blocks = query(db, "SELECT config_id, phase, wall_s, evidence FROM race_blocks")
        node_s += sum(b[2] or 0.0 for b in blocks)
    return {"db": db, "rows": rows, "blocks": blocks, "node_s": node_s, "wall_s": wall}


def recommendation(db: Path, bound: float) -> str:
    """`best` over the run's rows, validity verdicts ignored (on a shared machine every window may be
    judged unclean; both ways are judged alike)."""
    from fleetbench.coordinator.report import data
    from fleetbench.coordinator.report.recommend import best
    picks = best([{**r, "valid": True} for r in data.load(str(db)).rows], max_drop=bound)
    return ", ".join(f"{p.row['backend']} {p.row['compression']}" if p.row else f"none ({p.why})" for p in picks)


def race_answer(db: Path) -> list[list[str]]:
    from fleetbench.coordinator.report import race_answer as ra
    from fleetbench.coordinator.report.data import connect
    from fleetbench.coordinator.store import query
    run_id = query(db, "SELECT run_id FROM sweeps")[1][0][0]
    con = connect(db)
    try:
        got = ra.tables(con, run_id)
    finally:
        con.close()
    return got[1] if got else []


def quality_check(ex: dict, race: dict, bound: float) -> tuple[int, int, list[str]]:
    """(images the race's quality steps predicted, images exhaustive evaluated, wrong eliminations)."""
    import json
    full = {r[0]: r for r in ex["rows"]}
    used = sum(json.loads(b[3])["n"] for b in race["blocks"] if b[1] == "quality" and b[3])
    total = sum(r[7] or 0 for r in ex["rows"] if r[3] == "ok")
    wrong = [f"{r[1]} {r[2]}" for r in race["rows"] if r[3] == "eliminated" and r[4] == "quality"
             and r[0] in full and full[r[0]][8] is not None and 1 - full[r[0]][8] <= bound]
    return used, total, wrong


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="evaluation images (0: the whole dataset)")
    p.add_argument("--dataset", choices=("synthetic", "digits"), default="synthetic")
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "torchscript"])
    p.add_argument("--compression", nargs="+", default=["none", "fp16", "int8-dynamic", "int8-static"])
    p.add_argument("--min-duration", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bound", type=float, default=0.01)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="race-bench-"))
    from fleetbench.agent.probe import cpu_info
    print(f"machine: {cpu_info()[0]}, {os.cpu_count()} logical CPUs; load average before "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("command: python bench/race.py " + " ".join(sys.argv[1:]))
    ways = {}
    for strategy in ("exhaustive", "race"):
        ways[strategy] = run_way(a, strategy, out)
        w = ways[strategy]
        print(f"{strategy:10s}: node time {w['node_s']:8.1f} s, sweep wall {w['wall_s']:7.1f} s, "
              f"recommendation: {recommendation(w['db'], a.bound)}; load average after "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    ex, race = ways["exhaustive"], ways["race"]
    print(f"race / exhaustive node time: {race['node_s'] / ex['node_s']:.3f}")
    for row in race_answer(race["db"]):
        print(f"race answer on {row[0]}: {row[3]}; tied (P fastest): {row[4]}")
    status = {}
    for r in race["rows"]:
        status[f"{r[3]}" + (f" at {r[4]}" if r[3] == "eliminated" else "")] = \
            status.get(f"{r[3]}" + (f" at {r[4]}" if r[3] == "eliminated" else ""), 0) + 1
    print("race rows: " + ", ".join(f"{n} {k}" for k, n in sorted(status.items())))
    used, total, wrong = quality_check(ex, race, a.bound)
    print(f"sequential quality: {used} predictions / {total} of full evaluation = {used / max(total, 1):.3f}; "
          f"wrongly eliminated at quality: {', '.join(wrong) or 'none'}")
    for r in sorted(race["rows"], key=lambda r: (r[1], r[2])):
        if r[3] == "eliminated":
            print(f"  {r[1]} {r[2]}: {r[5]}")
    print(f"databases under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
