"""scripts/readme_figures.py: every figure has its markers in the README, and a table replaces only its block."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
figures = importlib.util.module_from_spec(spec)
sys.modules["readme_figures"] = figures   # dataclasses look their module up there
spec.loader.exec_module(figures)


def test_every_figure_has_markers_in_its_page_and_a_shipped_sweep():
    for fig in figures.FIGURES:
        text = (ROOT / fig.doc).read_text()
        assert f"<!-- figure:{fig.name} -->" in text and f"<!-- /figure:{fig.name} -->" in text
        assert (ROOT / fig.sweep).is_file()


def test_replace_rewrites_only_its_own_block():
    text = "a\n<!-- figure:x -->\nold\n<!-- /figure:x -->\nb\n<!-- figure:y -->\nkeep\n<!-- /figure:y -->\n"
    out = figures.replace(text, "x", "Machine: M.\n\n| a |\n|---|\n| 1 |")
    assert "old" not in out and "keep" in out and out.startswith("a\n<!-- figure:x -->\nMachine: M.")


def test_markdown_table_and_machine_label():
    assert figures.markdown(["a", "b"], [(1.5, None)]) == "| a | b |\n|---|---|\n| 1.5 | - |"
    label = figures.machine_label()
    assert "cores" in label and "ISA:" in label


def test_the_demo_figure_is_the_reports_recommendation_and_course_table(tmp_path):
    from fleetbench.coordinator.store import Store
    from tests.coordinator.report.conftest import write_run
    with Store(tmp_path / "r.duckdb") as store:
        write_run(store)
    text = figures.report_tables(tmp_path / "r.duckdb")
    demo = next(f for f in figures.FIGURES if f.name == "demo")
    labelled = figures.produce(demo, "M", from_db=tmp_path / "r.duckdb")   # the run stored, not a new one
    assert labelled.startswith("Machine: M. Command: `coordinator run examples/sweep.yaml` (2 failed, 10 ok)")
    assert labelled.endswith(text)
    best, *courses = text.split("\n\n")
    assert best.startswith("| node | hardware | model | bs | configuration |") and best.count("\n") == 3   # 2 nodes
    assert len(courses) == 2 and all(c.startswith("| compression | backend |") for c in courses)
    assert "| int8-static | onnxruntime | cpu | fp32 | 1 | 10.00 | 8.00 |" in courses[0]
    assert "×0.25" in courses[0]      # size × against `none` on the same engine: 10 MB / 40 MB


def test_the_readmes_sweep_file_is_the_demos():
    import re

    import yaml
    block = re.search(r"The demo's `examples/sweep.yaml`:\n\n```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block and yaml.safe_load(block.group(1)) == yaml.safe_load((ROOT / "examples" / "sweep.yaml").read_text())


def test_the_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200


def test_every_local_link_of_the_readme_and_docs_resolves():
    import re
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [f"{page.name} -> {target}" for page in pages
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()]
    assert broken == []


def test_the_readmes_python_form_is_the_api_pages():
    import re
    block = re.compile(r"```python\n(import fleetbench\n.*?)```", re.S)
    readme = block.search((ROOT / "README.md").read_text())
    api = block.search((ROOT / "docs" / "python-api.md").read_text())
    assert readme and api and readme.group(1) == api.group(1)
