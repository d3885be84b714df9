"""Is reading the answer fast on a big database? `report`, `compare` and the store's per-row write cost.

Generates a synthetic results database (--runs runs of one sweep, --rows rows in all, 4 nodes,
50 latency samples per row in the `samples` table), then, each in a fresh process (so peak RSS is
the command's own):

- `coordinator report --html --md` of the latest run (goal: under 5 s, peak RSS under 500 MB);
- `coordinator compare` of the last two runs (goal: under 2 s, peak RSS under 500 MB);
- the coordinator's CPU per stored row: `Store.put_result` (holds the file while rows come, closes
  it when idle or when a reader asks, so readers get in during a sweep) against an insert on a
  connection held for the whole sweep, side by side, with rows back to back and 0.7 s apart.

    python bench/report.py [--rows 100000] [--runs 200] [--writes 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NODES = [("edge-1", "Intel(R) Xeon(R) Processor", "cpu", []), ("edge-2", "AMD EPYC 7763", "cpu", []),
         ("gpu-1", "AMD EPYC 9454", "nvidia", [{"name": "NVIDIA H200"}]),
         ("intel-1", "Intel(R) Core(TM) Ultra 7", "intel", [])]
COMPRESSIONS = ["none", "fp16", "int8-dynamic", "int8-static", "prune-50", "cluster-32", "bf16", "prune-30"]
BACKENDS = ["pytorch", "torchscript", "onnxruntime", "openvino"]


def generate(db: Path, runs: int, rows: int) -> tuple[str, str]:
    import duckdb

    from fleetbench.coordinator.store import Store
    per_run = rows / runs
    batch_sizes = max(1, round(per_run / (len(NODES) * len(COMPRESSIONS) * len(BACKENDS))))
    with Store(db) as store:
        run_ids = [store.start_run("synthetic", "{}", None) for _ in range(runs)]
        for run in run_ids:
            store.finish_run(run, "done")
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE IF NOT EXISTS samples (run_id VARCHAR, job_id VARCHAR, samples_ms DOUBLE[])")
    con.execute("CREATE TEMP TABLE runs AS SELECT unnest(?::VARCHAR[]) AS run_id, generate_subscripts(?::VARCHAR[], 1) AS i",
                [run_ids, run_ids])
    con.execute("CREATE TEMP TABLE n (node VARCHAR, cpu VARCHAR, kind VARCHAR, gpus JSON, k INT)")
    con.executemany("INSERT INTO n VALUES (?, ?, ?, ?, ?)",
                    [[a, b, c, json.dumps(d), k] for k, (a, b, c, d) in enumerate(NODES)])
    con.execute("""INSERT INTO nodes (run_id, node_id, node_key, hostname, kinds, cpu_model, cores, gpus)
                   SELECT run_id, node || '-' || i, node, node, [kind], cpu, 8, gpus FROM runs, n""")
    con.execute("CREATE TEMP TABLE cfg AS SELECT c.compression, b.backend, bs.batch_size FROM "
                "unnest(?::VARCHAR[]) c(compression), unnest(?::VARCHAR[]) b(backend), "
                "range(1, ? + 1) bs(batch_size)", [COMPRESSIONS, BACKENDS, batch_sizes])
    con.execute("""
        INSERT INTO results (run_id, job_id, sweep, model, compression, backend, device, batch_size, node_id,
                             hostname, hw_kind, status, dtype, latency_p50_ms, latency_p90_ms, latency_p99_ms,
                             latency_mean_ms, throughput_ips, iterations, ram_peak_mb, ram_delta_mb, size_mb,
                             size_compressed_mb, precision_macro, recall_macro, f1_macro, accuracy,
                             top1_agreement, started_at, finished_at)
        SELECT run_id, md5(node || compression || backend || batch_size)[:16], 'synthetic', 'resnet',
               compression, backend, 'cpu', batch_size, node || '-' || i, node, kind,
               CASE WHEN hash(run_id || node || compression || backend) % 50 = 0 THEN 'failed' ELSE 'ok' END,
               'fp32', p50, p50 * 1.1, p50 * 1.3, p50, 1000.0 * batch_size / p50, 200, 400, 80, size, size * 0.9,
               f1, f1, f1, f1, 0.99, now()::TIMESTAMP, now()::TIMESTAMP
        FROM (SELECT *, (2.0 + k + length(compression) * 0.3 + length(backend) * 0.2) * batch_size
                        * (1 + (hash(run_id || node || compression || backend || batch_size) % 100) / 1000.0) AS p50,
                     45.0 / (1 + length(compression) % 4) AS size,
                     0.92 - (length(compression) % 5) * 0.003 AS f1
              FROM runs, n, cfg)""")
    con.execute("""INSERT INTO samples SELECT run_id, job_id,
                   list_transform(range(50), lambda x: latency_p50_ms * (0.97 + (x % 7) * 0.01))
                   FROM results WHERE status = 'ok'""")
    total = con.execute("SELECT count(*) FROM results").fetchone()[0]
    con.close()
    print(f"database: {db.stat().st_size / 1e6:.1f} MB, {total} rows, {runs} runs, {len(NODES)} nodes, "
          f"50 samples per ok row")
    return run_ids[-2], run_ids[-1]


CHILD = """
import sys, time
from fleetbench.coordinator.cli import main
t, c = time.perf_counter(), time.process_time()
code = main(sys.argv[1:])
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(f"@@ {code} {time.perf_counter() - t:.3f} {time.process_time() - c:.3f} {hwm / 1024:.0f}")
"""


def timed(*args: str) -> tuple[int, float, float, float, float]:
    """(exit code, seconds inside main, CPU seconds inside main, peak RSS MB, seconds for the whole
    process) of one CLI call. CPU seconds say what the command costs when the machine is busy."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT)
    whole = time.perf_counter() - t
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@ ")), None)
    if line is None:
        raise SystemExit(f"{args[0]} failed: {p.stderr[-2000:]}")
    code, secs, cpu, rss = line.split()[1:]
    return int(code), float(secs), float(cpu), float(rss), whole


def write_cost(db: Path, writes: int, gap_s: float) -> tuple[float, float]:
    """Median coordinator CPU ms per stored row, `gap_s` apart: the Store (holds the file while rows
    come, closes it when idle or when a reader asks) vs an insert on a connection held for ever."""
    import dataclasses

    import duckdb

    from fleetbench.coordinator.store import _INSERT_RESULT, Store
    from fleetbench.shared.job import RESULT_COLUMNS, Result

    def row(i: int, run: str) -> Result:
        return Result(job_id=f"w{gap_s}-{i}", sweep="synthetic", model="m", compression="none", backend="pytorch",
                      device="cpu", batch_size=1, node_id="x", hostname="x", hw_kind="cpu", run_id=run,
                      latency_p50_ms=1.0)

    def cpu_per_row(put) -> float:
        costs = []
        for i in range(writes):
            time.sleep(gap_s)
            t = time.process_time()       # every thread of this process (the store's closer included)
            put(i)
            time.sleep(0.06)              # let the closer act inside the measured window ...
            costs.append(time.process_time() - t)
        return statistics.median(costs) * 1000

    with Store(db) as store:
        run = store.start_run("writes", "{}", None)
        store_ms = cpu_per_row(lambda i: store.put_result(row(i, run)))
    con = duckdb.connect(str(db))
    held_ms = cpu_per_row(lambda i: con.execute(_INSERT_RESULT, [dataclasses.asdict(row(i + writes, run))[c]
                                                                  for c in RESULT_COLUMNS]))
    con.close()
    return store_ms, held_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--writes", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetbench-report-") as tmp:
        db = Path(tmp) / "big.duckdb"
        t = time.perf_counter()
        a, b = generate(db, args.runs, args.rows)
        print(f"generated in {time.perf_counter() - t:.1f} s")
        print(f"load average while measuring: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} CPUs")
        code, secs, cpu, rss, whole = timed("report", "--db", str(db), "--html", f"{tmp}/r.html", "--md",
                                            f"{tmp}/r.md", "--quiet")
        print(f"report  (latest run, HTML + Markdown): {secs:.2f} s wall ({cpu:.2f} s CPU) in the command, "
              f"{whole:.2f} s with interpreter start, peak RSS {rss:.0f} MB  (goal < 5 s, < 500 MB)  exit {code}")
        code, secs, cpu, rss, whole = timed("compare", a, b, "--db", str(db))
        print(f"compare (last two runs):               {secs:.2f} s wall ({cpu:.2f} s CPU) in the command, "
              f"{whole:.2f} s with interpreter start, peak RSS {rss:.0f} MB  (goal < 2 s, < 500 MB)  exit {code}")
        for gap, what in ((0.0, "rows back to back (file held)"), (0.7, "rows 0.7 s apart (file closed between)")):
            store_ms, held_ms = write_cost(db, args.writes, gap)
            print(f"store CPU per row, {what}: {store_ms:.1f} ms vs {held_ms:.1f} ms on a connection held "
                  f"for ever: +{store_ms - held_ms:.1f} ms per job")


if __name__ == "__main__":
    main()
