"""The report as Markdown (a PR comment, a wiki page): the same cells as the terminal and HTML.

Every text from the data is literal Markdown text (`formats.md_text`): a name cannot add a line, a heading,
a link or an HTML tag."""
from __future__ import annotations

from typing import Sequence

from fleetbench.coordinator.formats import md_text
from fleetbench.coordinator.report.compose import Report

NUMERIC = {"quality", "bs", "size MB", "zstd MB", "p50 ms", "p99 ms", "RAM MB", "RAM +MB", "VRAM MB", "agree",
           "size ×", "p50 ×", "F1 ±", "items/s", "drop",
           "raced", "out at quality", "out at speed", "measured in full", "race node s", "exhaustive est. s", "share"}


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = [c in NUMERIC or c.endswith((" p50 ms", " quality")) for c in columns]
    out = ["| " + " | ".join(md_text(c) for c in columns) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(md_text(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def render(rep: Report) -> str:
    from fleetbench.coordinator.report import table
    parts = [f"# {md_text(rep.title)}", "", md_text(rep.subtitle), "", "## Recommendation", "",
             md_text(rep.best_note), "", md_table(table.BEST, rep.best_rows), ""]
    for s in rep.sections:
        parts += [f"## {md_text(s.heading)}", ""] + ([f"**{md_text(s.warning)}**", ""] if s.warning else [])
        parts += ["Change (×, ±) is against the `none` row of the same backend, device and batch size.", ""]
        for model, rows in s.tables:
            parts += [f"### {md_text(model)}", "",
                      md_table(table.COURSE[:-1] + ("mark",), rows) if rows else "_no ok rows_", ""]
        if s.not_measured:
            parts += ["Not measured:", "", md_table(table.NOT_MEASURED, s.not_measured), ""]
    if rep.race is not None:
        from fleetbench.coordinator.report import compose as ra
        parts += ["## Race", "", md_text(ra.RACE_SUMMARY_NOTE), "", md_table(ra.RACE_SUMMARY, rep.race[0]), "",
                  md_text(ra.RACE_ANSWER_NOTE), "", md_table(ra.RACE_ANSWER, rep.race[1]), ""]
    parts += ["## Across hardware", "", "p50 ms and quality of each configuration on every node "
              "(SQL: `SELECT * FROM hardware`).", "", md_table(rep.hardware_columns, rep.hardware_rows), ""]
    return "\n".join(parts)
