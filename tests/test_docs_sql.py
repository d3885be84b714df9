"""Every SQL example in the docs runs against a demo-like results database, and its result is checked.

The database holds one run of a sweep with two backends, two compressions and two batch sizes (8 rows with
known figures), written through the real Store. A query in the docs that joins a baseline on too few keys
(e.g. backend only) returns more rows than results and wrong ratios: the checks below catch that.
"""
import re
from pathlib import Path

import pytest

from fleetbench.coordinator.store import Store, query
from fleetbench.shared.job import Result

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# (backend, compression, batch size) -> (size MB, p50 ms); F1 0.99 everywhere but int8-static on pytorch
FIGURES = {
    ("pytorch", "none", 1): (1.44, 1.0), ("pytorch", "none", 8): (1.44, 3.0),
    ("pytorch", "int8-static", 1): (0.40, 0.5), ("pytorch", "int8-static", 8): (0.40, 2.0),
    ("onnxruntime", "none", 1): (1.50, 0.1), ("onnxruntime", "none", 8): (1.50, 0.4),
    ("onnxruntime", "int8-static", 1): (0.45, 0.2), ("onnxruntime", "int8-static", 8): (0.45, 0.2),
}


def doc_queries() -> list[tuple[str, str]]:
    """(where, SQL) of every ```sql block and every `coordinator query "..."` in the docs."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for i, block in enumerate(re.findall(r"```sql\n(.*?)```", text, re.S)):
            out.append((f"{path.name} sql block {i}", block))
        for i, q in enumerate(re.findall(r'coordinator query "([^"<]+)"', text)):
            out.append((f"{path.name} query {i}", q))
    return out


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs-sql") / "results.duckdb"
    with Store(path) as store:
        run_id = store.start_run("digits-demo", "{}", None)
        for (backend, comp, bs), (size, p50) in FIGURES.items():
            f1 = 0.90 if (backend, comp) == ("pytorch", "int8-static") else 0.99
            store.put_result(Result(
                job_id=f"{backend}-{comp}-{bs}", sweep="digits-demo", model="digits-test_resnet", compression=comp,
                backend=backend, device="cpu", batch_size=bs, node_id="n1", hostname="h1", hw_kind="cpu",
                run_id=run_id, dtype="int8" if comp != "none" else "fp32", size_mb=size, size_compressed_mb=size * 0.9,
                latency_p50_ms=p50, latency_mean_ms=p50, f1_macro=f1, precision_macro=f1, recall_macro=f1,
                top1_agreement=1.0, ram_peak_mb=1000.0, started_at="2026-01-01T00:00:00+00:00"))
        store.finish_run(run_id, "ok")
    return path


def test_the_docs_have_sql_examples():
    where = [w for w, _ in doc_queries()]
    assert any(w.startswith("compression.md sql") for w in where) and any(w.startswith("README.md query") for w in where)


@pytest.mark.parametrize("where, sql", doc_queries(), ids=[w for w, _ in doc_queries()])
def test_every_doc_query_runs(demo_db, where, sql):
    names, rows = query(demo_db, sql)
    assert names, where


def test_the_compression_comparison_joins_the_baseline_per_batch_size(demo_db):
    sql = next(q for w, q in doc_queries() if w.startswith("compression.md sql"))
    names, rows = query(demo_db, sql)
    assert len(rows) == len(FIGURES)                                  # one row per result, not one per pairing
    got = {(r[names.index("backend")], r[names.index("compression")], r[names.index("p50 ms")]): r for r in rows}
    ort8 = got[("onnxruntime", "int8-static", 0.2)]
    assert ort8[names.index("size x")] == pytest.approx(0.30) and ort8[names.index("zstd x")] == pytest.approx(0.30)
    p50x = sorted(r[names.index("p50 x")] for r in rows if r[names.index("backend")] == "onnxruntime")
    assert p50x == pytest.approx([0.5, 1.0, 1.0, 2.0])                # bs8: 0.2/0.4; bs1: 0.2/0.1
    pt = [r for r in rows if r[names.index("backend")] == "pytorch" and r[names.index("compression")] == "int8-static"]
    assert sorted(r[names.index("dF1")] for r in pt) == pytest.approx([-0.09, -0.09])


def test_the_comparison_query_keeps_the_quality_bar(demo_db):
    sql = next(q for w, q in doc_queries() if w.startswith("results.md query") and "FROM comparison" in q)
    names, rows = query(demo_db, sql)
    assert len(rows) == 6                                             # pytorch int8-static (F1 0.90) is out
    p50 = [r[names.index("latency_p50_ms")] for r in rows]
    assert p50 == sorted(p50) and p50[0] == pytest.approx(0.1)
