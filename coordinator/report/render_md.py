"""The report as Markdown (a PR comment, a wiki page): the same cells as the terminal and HTML."""
from __future__ import annotations

from typing import Sequence

from fleetbench.coordinator.report.compose import Report

NUMERIC = {"quality", "bs", "size MB", "zstd MB", "p50 ms", "p99 ms", "RAM MB", "RAM +MB", "VRAM MB", "agree",
           "size ×", "p50 ×", "F1 ±", "items/s", "drop"}


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = [c in NUMERIC or c.endswith((" p50 ms", " quality")) for c in columns]
    out = ["| " + " | ".join(_esc(c) for c in columns) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(_esc(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def render(rep: Report) -> str:
    from fleetbench.coordinator.report import table
    parts = [f"# {rep.title}", "", rep.subtitle, "", "## Recommendation", "", rep.best_note, "",
             md_table(table.BEST, rep.best_rows), ""]
    for s in rep.sections:
        parts += [f"## {s.heading}", "",
                  "Change (×, ±) is against the `none` row of the same backend, device and batch size.", ""]
        for model, rows in s.tables:
            parts += [f"### {model}", "", md_table(table.COURSE[:-1] + ("mark",), rows) if rows else "_no ok rows_", ""]
        if s.not_measured:
            parts += ["Not measured:", "", md_table(table.NOT_MEASURED, s.not_measured), ""]
    parts += ["## Across hardware", "", "p50 ms and quality of each configuration on every node "
              "(SQL: `SELECT * FROM hardware`).", "", md_table(rep.hardware_columns, rep.hardware_rows), ""]
    return "\n".join(parts)
