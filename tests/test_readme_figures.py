"""scripts/readme_figures.py: every figure has its markers in the README, and a table replaces only its block."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
figures = importlib.util.module_from_spec(spec)
sys.modules["readme_figures"] = figures   # dataclasses look their module up there
spec.loader.exec_module(figures)


def test_every_figure_has_markers_in_the_readme_and_a_shipped_sweep():
    text = (ROOT / "README.md").read_text()
    for fig in figures.FIGURES:
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
