"""A results database with hand-made rows (written through the real Store): two nodes, two runs of one sweep."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from fleetbench.coordinator.store import Store
from fleetbench.shared.job import NodeProfile, Result

# (compression, backend, p50 ms on alpha, on beta, f1, size MB, zstd MB)
CONFIGS = [
    ("none", "pytorch", 10.0, 4.0, 0.900, 40.0, 37.0),
    ("none", "onnxruntime", 6.0, 3.0, 0.900, 40.0, 37.0),
    ("fp16", "onnxruntime", 5.0, 3.5, 0.899, 20.0, 18.0),
    ("int8-static", "onnxruntime", 3.0, 5.0, 0.880, 10.0, 8.0),
    ("cluster-32", "onnxruntime", 6.1, 3.1, 0.897, 40.0, 8.0),
]
NODES = {"alpha": ("Intel(R) Xeon(R) Processor", []), "beta": ("AMD EPYC 9454", [{"name": "NVIDIA H200"}])}


def profile(node: str, node_id: str) -> NodeProfile:
    cpu, gpus = NODES[node]
    return NodeProfile(hostname="vm", kinds=["nvidia" if gpus else "cpu"], cpu_model=cpu, cores=2,
                       logical_cpus=2, isa_flags=["avx2"], ram_mb=8000.0, node_id=node_id, node_key=node, gpus=gpus)


def result(run_id: str, node: str, node_id: str, compression: str, backend: str, p50: float, f1: float,
           size: float, zsize: float, **kw) -> Result:
    base = dict(job_id=f"{node}-{compression}-{backend}", sweep="demo", model="resnet50-imagenet-ft", compression=compression,
                backend=backend, device="cpu", batch_size=1, node_id=node_id, hostname="vm",
                hw_kind="nvidia" if NODES[node][1] else "cpu", run_id=run_id, dtype="fp32", status="ok",
                latency_p50_ms=p50, latency_p90_ms=p50 * 1.05, latency_p99_ms=p50 * 1.2, latency_mean_ms=p50,
                throughput_ips=1000 / p50, ram_peak_mb=300.0, ram_delta_mb=50.0, size_mb=size,
                size_compressed_mb=zsize, precision_macro=f1, recall_macro=f1, f1_macro=f1, accuracy=f1,
                top1_agreement=1.0 if compression == "none" else 0.98, iterations=200,
                started_at="2026-01-02T03:04:05+00:00", finished_at="2026-01-02T03:04:07+00:00")
    base.update(kw)
    return Result(**base)


def add_samples(db: Path, run_id: str, rows: dict[str, list[float]]) -> None:
    import duckdb
    con = duckdb.connect(str(db))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS samples (run_id VARCHAR, job_id VARCHAR, samples_ms DOUBLE[])")
        con.executemany("INSERT INTO samples VALUES (?, ?, ?)", [[run_id, j, s] for j, s in rows.items()])
    finally:
        con.close()


def write_run(store: Store, slow: dict[str, float] | None = None, node_ids=("id-a1", "id-b1")) -> tuple[str, dict]:
    """One run of sweep `demo` on both nodes; `slow` multiplies the p50 of some job ids."""
    rng = random.Random(len(node_ids[0]) + len(slow or {}))
    run = store.start_run("demo", "{}", None)
    store.put_nodes(run, [profile("alpha", node_ids[0]), profile("beta", node_ids[1])])
    samples = {}
    for node, node_id in zip(("alpha", "beta"), node_ids):
        for comp, backend, pa, pb, f1, size, zsize in CONFIGS:
            r = result(run, node, node_id, comp, backend, pa if node == "alpha" else pb, f1, size, zsize)
            r.latency_p50_ms *= (slow or {}).get(r.job_id, 1.0)
            store.put_result(r)
            samples[r.job_id] = [r.latency_p50_ms * (1 + rng.uniform(-0.02, 0.02)) for _ in range(200)]
        store.put_result(result(run, node, node_id, "prune-50", "openvino", 1.0, 0.5, 1.0, 1.0, status="failed",
                                stage="build", error="boom: the compiler refused", latency_p50_ms=None,
                                f1_macro=None, precision_macro=None, recall_macro=None, accuracy=None,
                                top1_agreement=None, size_mb=None, size_compressed_mb=None))
    store.finish_run(run, "done")
    return run, samples


@pytest.fixture
def demo_db(tmp_path: Path) -> tuple[Path, str, str]:
    """Two runs: the second has alpha's int8-static 50% slower (a regression) and beta's restarted nodes."""
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        first, s1 = write_run(store)
        second, s2 = write_run(store, slow={"alpha-int8-static-onnxruntime": 1.5}, node_ids=("id-a2", "id-b2"))
    add_samples(db, first, s1)
    add_samples(db, second, s2)
    return db, first, second
