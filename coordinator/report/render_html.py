"""The report as one self-contained HTML file: inline CSS and SVG plots, no script, no network fetch."""
from __future__ import annotations

from html import escape as _escape
from typing import Sequence

from fleetbench.coordinator.report.compose import Report
from fleetbench.coordinator.report.render_md import NUMERIC
from fleetbench.shared.errors import printable


def escape(text: str) -> str:
    """Text from the data as HTML text: markup escaped, control characters shown as their escapes."""
    return _escape(printable(text))


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a;
       max-width: 1240px; margin: 16px auto; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px;
  border-bottom: 1px solid #d0d7de; padding-bottom: 3px; } h3 { font-size: 14px; margin: 14px 0 4px; }
p.meta, p.note { color: #57606a; margin: 4px 0 10px; }
p.warning { background: #fff4e5; border-left: 4px solid #d97706; padding: 6px 10px; margin: 6px 0 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 4px 0 10px; }
th, td { padding: 3px 5px; border-bottom: 1px solid #eaeef2; white-space: nowrap; text-align: left; }
th { background: #f6f8fa; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.reason { white-space: normal; min-width: 160px; }
td.wrap { white-space: normal; }
tr.best td { background: #e6f4ea; font-weight: 600; }
tr.pareto td:last-child { color: #b3261e; }
figure { margin: 10px 0 22px; } figcaption { font-weight: 600; margin-bottom: 4px; }
figure svg { max-width: 100%; height: auto; display: block; }
@media print { body { max-width: none; margin: 0; } .scroll { overflow: visible; }
  figure, table { break-inside: avoid; } th { position: static; } }
"""


def _num(column: str) -> bool:
    return column in NUMERIC or column.endswith((" p50 ms", " quality"))


def _cls(column: str) -> str:
    if _num(column):
        return "num"
    return "reason" if column in ("reason", "why", "mark") else "wrap" if column in WRAP else ""


WRAP = {"model", "hardware", "node"}


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
               mark_col: int | None = None) -> str:
    head = "".join(f'<th class="{"num" if _num(c) else ""}">{escape(c)}</th>' for c in columns)
    body = []
    for r in rows:
        mark = r[mark_col] if mark_col is not None else ""
        tr_cls = " ".join(k for k in ("best", "pareto") if k in mark.split())
        cells = "".join(f'<td class="{_cls(c)}">{escape(v)}</td>' for c, v in zip(columns, r))
        body.append(f'<tr class="{tr_cls}">{cells}</tr>')
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def render(rep: Report, plots: list[tuple[str, str]]) -> str:
    from fleetbench.coordinator.report import table
    course_cols = table.COURSE[:-1] + ("mark",)
    parts = [f"<h1>{escape(rep.title)}</h1>", f'<p class="meta">{escape(rep.subtitle)}</p>',
             "<h2>Recommendation</h2>", f'<p class="note">{escape(rep.best_note)}</p>',
             html_table(table.BEST, rep.best_rows, "best")]
    for s in rep.sections:
        parts += [f'<h2 class="node">{escape(s.heading)}</h2>']
        if s.warning:
            parts += [f'<p class="warning">{escape(s.warning)}</p>']
        parts += [
                  '<p class="note">Change (×, ±) is against the <code>none</code> row of the same '
                  "backend, device and batch size. Highlighted: the recommendation.</p>"]
        for model, rows in s.tables:
            parts += [f'<h3>model {escape(model)}</h3>',
                      html_table(course_cols, rows, "course", mark_col=len(course_cols) - 1)]
        if s.not_measured:
            parts += ["<h3>Not measured</h3>", html_table(table.NOT_MEASURED, s.not_measured, "not-measured")]
    if rep.race is not None:
        from fleetbench.coordinator.report import compose as ra
        parts += ["<h2>Race</h2>", f'<p class="note">{escape(ra.RACE_SUMMARY_NOTE)}</p>',
                  html_table(ra.RACE_SUMMARY, rep.race[0], "race"), f'<p class="note">{escape(ra.RACE_ANSWER_NOTE)}</p>',
                  html_table(ra.RACE_ANSWER, rep.race[1], "race-answer")]
    parts += ["<h2>Across hardware</h2>",
              '<p class="note">p50 ms and quality of each configuration on every node '
              "(SQL: <code>SELECT * FROM hardware</code>).</p>",
              html_table(rep.hardware_columns, rep.hardware_rows, "hardware"), "<h2>Plots</h2>"]
    parts += [f'<figure class="plot"><figcaption>{escape(title)}</figcaption>{svg}</figure>'
              for title, svg in plots] or ['<p class="note">No plot: plots draw the ok rows judged valid, '
                                           "and this run has none.</p>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(rep.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
