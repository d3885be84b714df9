"""scripts/demo_check.py (the last step of `make demo`) and the change columns of rows judged invalid."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fleetbench.coordinator.report.data import connect
from fleetbench.coordinator.store import Store

from .conftest import profile, result

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("demo_check", ROOT / "scripts" / "demo_check.py")
demo_check = importlib.util.module_from_spec(spec)
sys.modules["demo_check"] = demo_check
spec.loader.exec_module(demo_check)


def _db(tmp_path: Path, rows) -> Path:
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        run = store.start_run("demo", "{}", None)
        store.put_nodes(run, [profile("alpha", "id-a")])
        for comp, backend, p50, f1, size, kw in rows:
            store.put_result(result(run, "alpha", "id-a", comp, backend, p50, f1, size, size * 0.9, **kw))
        store.finish_run(run, "done")
    return db


def test_a_compressed_row_judged_invalid_still_shows_its_size_change_but_no_p50_change(tmp_path, capsys):
    db = _db(tmp_path, [("none", "onnxruntime", 1.0, 0.99, 1.5, {"valid": False, "validity": "cv 40% > 15%"}),
                        ("int8-static", "onnxruntime", 0.5, 0.99, 0.45, {"valid": False, "validity": "cv 30% > 15%"})])
    con = connect(db)
    try:
        size_x, p50_x, f1_diff = con.execute("SELECT size_x, p50_x, f1_diff FROM course "
                                             "WHERE compression = 'int8-static'").fetchone()
    finally:
        con.close()
    assert abs(size_x - 0.30) < 1e-9 and p50_x is None and f1_diff == 0   # the timing window is not trusted
    assert demo_check.main(["--db", str(db), "--sweep", "demo"]) == 0
    assert "int8-static onnxruntime bs1: size × ×0.30" in capsys.readouterr().out


def test_a_demo_whose_compression_changed_nothing_fails_the_check(tmp_path, capsys):
    db = _db(tmp_path, [("none", "onnxruntime", 1.0, 0.99, 1.5, {}),
                        ("cluster-32", "onnxruntime", 1.0, 0.99, 1.5, {})])
    assert demo_check.main(["--db", str(db), "--sweep", "demo"]) == 1
    assert "1 compressed row(s) of sweep 'demo'" in capsys.readouterr().err


def test_a_report_with_no_valid_row_says_why_instead_of_drawing_nothing(tmp_path):
    from fleetbench.coordinator.report import compose, data, plots, render_html
    db = _db(tmp_path, [("none", "onnxruntime", 1.0, 0.99, 1.5, {"valid": False, "validity": "cv 40% > 15%"})])
    rep = compose.compose(data.load(db))
    page = render_html.render(rep, plots.all_plots(rep.data.rows, rep.front, rep.data.samples))
    assert "Every measured row of this node (1) was judged invalid" in page and "cv (1 of 1)" in page
    assert "No plot: plots draw the ok rows judged valid" in page and "<figure" not in page
