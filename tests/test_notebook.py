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


RUN_IN_KERNEL = f"""
import sys, fleetbench
sweep = {{"name": "kernel", "models": [{{"name": "digits", "source": "timm:test_resnet",
          "checkpoint": {str(ROOT / "examples" / "digits" / "model.safetensors")!r}, "num_classes": 10,
          "input_size": [3, 32, 32]}}], "dataset": {{"kind": "digits", "limit": 24}},
          "backends": ["pytorch", "onnxruntime"], "measure": {{"min_duration_s": 60, "max_duration_s": 120}}}}
fleetbench.run(sweep, db="k.duckdb", progress=False, out=sys.stdout)
"""


@pytest.mark.slow
def test_interrupting_the_kernel_stops_the_sweep_as_ctrl_c_does(tmp_path):
    """Interrupt the kernel mid-run: the cell ends with Interrupted, the run is marked interrupted and the
    embedded cluster is stopped, the kernel lives on."""
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        run_id = kc.execute(RUN_IN_KERNEL)
        seen = ""
        while " to run" not in seen:      # the run is stored and its jobs are being dispatched
            msg = kc.get_iopub_msg(timeout=300)
            seen += msg["content"].get("text", "") if msg["msg_type"] == "stream" else ""
            assert msg["msg_type"] != "error", msg["content"]
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != run_id:   # the start's kernel_info reply comes first
            reply = kc.get_shell_msg(timeout=120)
        reply = reply["content"]
        assert (reply["status"], reply["ename"]) == ("error", "Interrupted"), reply
        assert "rows stored so far are kept in k.duckdb" in reply["evalue"] and "resume=True" in reply["evalue"]
        printed: list[str] = []
        check = kc.execute_interactive("import ray; print(ray.is_initialized(), "
                                       "list(fleetbench.open('k.duckdb').runs()['status']))", timeout=60,
                                       output_hook=lambda m: printed.append(m["content"].get("text", "")))
        assert check["content"]["status"] == "ok" and "".join(printed).strip() == "False ['interrupted']"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
