"""examples/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient + ipykernel): any error
cell fails the test, and each step shows what it promises (table, recommendation, plot, SQL, report)."""
import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_kernel(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    (tmp_path / "digits").symlink_to(ROOT / "examples" / "digits")   # the notebook's folder, as Jupyter runs it
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [[o for o in c.outputs] for c in nb.cells if c.cell_type == "code"]
    assert not [o for out in outputs for o in out if o.output_type == "error"]
    run, table, best, plot, sql, report = outputs

    def html(out) -> str:
        return "".join(o.get("data", {}).get("text/html", "") for o in out)
    assert "Recommendation" in html(run) and "quickstart" in html(run)
    assert "onnxruntime" in html(table) and "latency_p50_ms" in html(table)
    assert "why" in html(best)
    assert any("image/png" in o.get("data", {}) for o in plot)
    assert "p50_ms" in html(sql) and "pytorch" in html(sql)
    assert html(report).startswith("<iframe srcdoc=") and "Recommendation" in html(report)
    assert (tmp_path / "quickstart.duckdb").is_file()
