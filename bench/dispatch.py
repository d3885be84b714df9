"""What does the coordinator cost per job? The null engine on a local multi-node Ray cluster.

Starts a Ray cluster of --nodes benchmark nodes on 127.0.0.1 (ray.cluster_utils.Cluster, token auth
on, each node with bench_slot=1 and a fleet.kind label), runs one sweep of --jobs null-engine jobs
through the real `run_sweep` (discovery, plan, DuckDB store, dispatch, report) with `--address`,
and prints:

- jobs per second dispatched and stored, over the dispatch phase (first job start to last row stored);
- coordinator CPU per job: CPU seconds of this process (driver threads included) over the dispatch
  phase, divided by the jobs (the goal is under 20 ms);
- per job, wall time beyond the agent's own `wall_s`: the gap between consecutive jobs of a node
  (dispatch and the job process's start) and the delay from the agent's
  finish to the row being committed in DuckDB;
- the coordinator's RSS, sampled every 100 ms, at 10/50/90/100 % of the rows stored and its peak
  (it must stay flat as rows grow: rows are streamed, never accumulated).

    python bench/dispatch.py [--jobs 1000] [--nodes 3] [--null-ms 1] [--iters 3]

The null engine sleeps FLEETBENCH_NULL_MS per call and loads no model (`needs_model = False`); the
dataset is a tiny synthetic one, so a job's own work is a few ms beyond its process start.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # stay on 127.0.0.1


def write_sweep(path: Path, jobs: int, nodes: int, iters: int) -> int:
    """A null-engine sweep of about `jobs` jobs over `nodes` nodes; returns the exact count."""
    per_node = max(1, round(jobs / nodes))
    batch_sizes = list(range(1, min(per_node, 50) + 1))
    n_models = -(-per_node // len(batch_sizes))
    models = [{"name": f"m{i:03d}", "source": "timm:resnet18", "num_classes": 10, "input_size": [3, 8, 8]}
              for i in range(n_models)]
    spec = {"name": "bench-dispatch", "models": models, "dataset": {"kind": "synthetic", "limit": 8},
            "backends": ["null"], "batch_sizes": batch_sizes, "targets": ["all"],
            "measure": {"warmup_iters": 0, "min_iters": iters, "min_duration_s": 0, "max_duration_s": 1}}
    path.write_text(yaml.safe_dump(spec))
    return nodes * n_models * len(batch_sizes)


class RssSampler(threading.Thread):
    def __init__(self, stored: list):
        super().__init__(daemon=True)
        import psutil
        self.proc, self.stored, self.samples = psutil.Process(), stored, []
        self.stop = threading.Event()
        self.own_cpu = 0.0   # this thread's CPU: the bench's, not the coordinator's

    def run(self) -> None:
        while not self.stop.wait(0.1):
            c = time.thread_time()
            cpu = self.proc.cpu_times()
            self.samples.append((time.time(), len(self.stored), self.proc.memory_info().rss / 2**20,
                                 cpu.user + cpu.system - self.own_cpu))
            self.own_cpu += time.thread_time() - c


def epoch(iso) -> float:
    if isinstance(iso, datetime):
        return iso.replace(tzinfo=timezone.utc).timestamp()
    return datetime.fromisoformat(iso).timestamp()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--null-ms", type=float, default=1.0, help="the null engine's sleep per call")
    ap.add_argument("--iters", type=int, default=3, help="timed calls per job")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="fleetbench-bench-"))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                      FLEETBENCH_CACHE=str(tmp / "cache"), FLEETBENCH_NULL_MS=str(args.null_ms))
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.pop("RAY_ADDRESS", None)
    import psutil
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    from fleetbench.coordinator import store as store_mod
    from fleetbench.coordinator.run import run_sweep

    reset_auth_token_state()
    n_jobs = write_sweep(tmp / "sweep.yaml", args.jobs, args.nodes, args.iters)
    kinds = ["cpu", "intel", "cpu"]

    def node(i: int) -> dict:
        return {"resources": {"bench_slot": 1}, "num_cpus": 1,
                "labels": {"fleet.kind": kinds[i % 3], "fleet.node": f"n{i}"}}

    stored: list[tuple[str, float]] = []   # (job_id, time committed)
    put = store_mod.Store.put_result

    store_cpu = [0.0]

    def timed_put(self, result):
        c = time.thread_time()
        put(self, result)
        store_cpu[0] += time.thread_time() - c
        stored.append((result.job_id, time.time()))

    store_mod.Store.put_result = timed_put
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args=node(0))
    try:
        for i in range(1, args.nodes):
            cluster.add_node(**node(i))
        cluster.wait_for_nodes()
        print(f"cluster of {args.nodes} nodes up in {time.time() - t0:.1f} s; {n_jobs} jobs", flush=True)
        me = psutil.Process()
        idle = idle_cpu_ms_per_s(cluster.address, me)
        sampler = RssSampler(stored)
        sampler.start()
        cpu0, t1 = sum(me.cpu_times()[:2]), time.time()
        with open(os.devnull, "w") as devnull:
            counts = run_sweep(str(tmp / "sweep.yaml"), db=str(tmp / "r.duckdb"), address=cluster.address,
                               progress=False, out=devnull)
        sampler.stop.set()
        sampler.join()
        cpu_total, t_total = sum(me.cpu_times()[:2]) - cpu0 - sampler.own_cpu, time.time() - t1
    finally:
        cluster.shutdown()
        store_mod.Store.put_result = put
    try:
        report(args, n_jobs, counts, stored, sampler.samples, cpu_total, t_total, tmp / "r.duckdb", idle, store_cpu[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def idle_cpu_ms_per_s(address: str, me, seconds: float = 5.0) -> float:
    """CPU a connected but idle Ray driver burns by itself (its background threads), in ms per s."""
    from fleetbench.coordinator import cluster as cluster_mod
    cluster_mod.connect(address)
    try:
        time.sleep(1.0)
        cpu0, t0 = sum(me.cpu_times()[:2]), time.time()
        time.sleep(seconds)
        return 1e3 * (sum(me.cpu_times()[:2]) - cpu0) / (time.time() - t0)
    finally:
        cluster_mod.disconnect()


def report(args, n_jobs, counts, stored, samples, cpu_total, t_total, db, idle, store_cpu) -> None:
    import duckdb
    con = duckdb.connect(str(db), read_only=True, config={"autoinstall_known_extensions": False,
                                                          "autoload_known_extensions": False})
    rows = con.execute("SELECT job_id, node_id, started_at, finished_at, wall_s, status FROM results").fetchall()
    con.close()
    done_at = dict(stored)
    assert len(rows) == n_jobs == len(done_at), (len(rows), n_jobs, len(done_at))
    start = min(epoch(r[2]) for r in rows)
    end = max(done_at.values())
    window = end - start
    by_node: dict[str, list] = {}
    for r in rows:
        by_node.setdefault(r[1], []).append((epoch(r[2]), epoch(r[3]), r[4]))
    gaps = []
    for spans in by_node.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    store_delay = [done_at[r[0]] - epoch(r[3]) for r in rows]
    agent_wall = [r[4] for r in rows]
    cpu_dispatch = cpu_at(samples, end) - cpu_at(samples, start)
    print(f"\nnull engine, {args.nodes} nodes, {n_jobs} jobs ({dict(counts)}), FLEETBENCH_NULL_MS={args.null_ms:g}, "
          f"{args.iters} timed calls per job")
    print(f"run_sweep wall {t_total:.1f} s; dispatch window (first job start -> last row stored) {window:.1f} s")
    print(f"jobs/s dispatched and stored: {n_jobs / window:.2f}  "
          f"({n_jobs / window / args.nodes:.2f} per node)")
    print(f"coordinator CPU in the dispatch window: {cpu_dispatch:.2f} s = {1e3 * cpu_dispatch / n_jobs:.1f} ms "
          f"per job (the whole run, with discovery, plan and final report: {1e3 * cpu_total / n_jobs:.1f} ms per job)")
    busy_cpu = cpu_dispatch - idle * window / 1e3
    print(f"  of which an idle Ray driver's own background ({idle:.1f} ms/s x window): "
          f"{idle * window / n_jobs:.1f} ms per job; the rest, {1e3 * busy_cpu / n_jobs:.1f} ms per job, is the "
          f"dispatch work: DuckDB insert (Store.put_result, this thread's CPU) {1e3 * store_cpu / n_jobs:.1f} ms, "
          f"Ray (submit, 6 stage events and the result, driver threads included) and the rest "
          f"{1e3 * (busy_cpu - store_cpu) / n_jobs:.1f} ms")
    print(f"agent wall_s per job: median {1e3 * statistics.median(agent_wall):.0f} ms, "
          f"mean {1e3 * statistics.fmean(agent_wall):.0f} ms")
    print(f"gap between consecutive jobs on a node (dispatch + job process start): median "
          f"{1e3 * statistics.median(gaps):.0f} ms, p90 {1e3 * quantile(gaps, 0.9):.0f} ms")
    print(f"agent finished -> row committed: median {1e3 * statistics.median(store_delay):.1f} ms, "
          f"p90 {1e3 * quantile(store_delay, 0.9):.1f} ms, max {1e3 * max(store_delay):.1f} ms")
    beyond = window * args.nodes / n_jobs - statistics.fmean(agent_wall)
    print(f"node time per job beyond the agent's wall_s (window x nodes / jobs - mean wall_s): {1e3 * beyond:.0f} ms")
    busy = sum(agent_wall) / (window * args.nodes)
    print(f"node busy with agent work: {100 * busy:.1f} % of the window")
    print("coordinator RSS (MB) by rows stored: " + ", ".join(
        f"{int(100 * f)}% {rss_at(samples, f * n_jobs):.0f}" for f in (0.1, 0.5, 0.9, 1.0)) +
        f"; peak during dispatch {max(s[2] for s in samples if s[1] < n_jobs):.0f}, "
        f"peak incl. final report {max(s[2] for s in samples):.0f}")


def rss_at(samples, n) -> float:
    return next((s[2] for s in samples if s[1] >= n), samples[-1][2])


def cpu_at(samples, t) -> float:
    return next((s[3] for s in samples if s[0] >= t), samples[-1][3])


def quantile(xs, q) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


if __name__ == "__main__":
    sys.exit(main())
