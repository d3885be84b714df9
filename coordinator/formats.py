"""Render query results (column names + rows) as a plain table, CSV, JSON or Markdown."""
from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import logging
import math
import re
from typing import Any, Callable, Sequence

from fleetbench.shared.errors import printable

log = logging.getLogger(__name__)

FORMATS = ("table", "csv", "json", "markdown")
NULL = "-"


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Render `rows` under `columns` in `fmt` (one of FORMATS); the text ends with a newline."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}") from None
    return renderer(list(columns), [list(r) for r in rows])


# -- cell formatting ---------------------------------------------------------------------------

def format_float(value: float, column: str = "") -> str:
    """A readable float: 3 decimals for milliseconds, about 4 significant digits otherwise."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0"
    if column.endswith("_ms"):
        return f"{value:.3f}"
    size = abs(value)
    if size >= 1000:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 1e-4:
        return f"{value:.4g}"
    return f"{value:.3e}"


def format_cell(value: Any, column: str = "") -> str:
    """One cell as text for the table and Markdown formats."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value, column)
    if isinstance(value, decimal.Decimal):
        return format_float(float(value), column)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, default=str)
    text = str(value)
    return printable(" ".join(text.split()) if any(ch in text for ch in "\r\n\t") else text)


# What Markdown (CommonMark, GitHub's tables) would read as markup or HTML; `_` inside a word is plain.
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|&~$#]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md_text(text: str) -> str:
    """`text` as literal Markdown inline text: one line (control characters as their escapes), and every
    character that could start emphasis, a link, code, a heading mark, a table cell or an HTML tag escaped."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), printable(text))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _numeric_columns(columns: list[str], rows: list[list[Any]]) -> list[bool]:
    """A column is numeric when every non-null value in it is a number (and there is one)."""
    out = []
    for i in range(len(columns)):
        values = [r[i] for r in rows if r[i] is not None]
        out.append(bool(values) and all(_is_number(v) for v in values))
    return out


# -- renderers ---------------------------------------------------------------------------------

def _table(columns: list[str], rows: list[list[Any]]) -> str:
    columns = [printable(c) for c in columns]
    cells = [[format_cell(v, c) for v, c in zip(r, columns)] for r in rows]
    numeric = _numeric_columns(columns, rows)
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _markdown(columns: list[str], rows: list[list[Any]]) -> str:
    numeric = _numeric_columns(columns, rows)
    out = ["| " + " | ".join(md_text(c) for c in columns) + " |",
           "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for r in rows:
        out.append("| " + " | ".join(md_text(format_cell(v, c)) for v, c in zip(r, columns)) + " |")
    return "\n".join(out) + "\n"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, default=str)
    return value


def _csv(columns: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    plain = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)   # a bare \r ends a line for readers
    for row in [columns, *([_csv_cell(v) for v in r] for r in rows)]:
        (quoted if any(isinstance(v, str) and "\r" in v for v in row) else plain).writerow(row)
    return buf.getvalue()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, decimal.Decimal):
        return _json_value(float(value))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _json(columns: list[str], rows: list[list[Any]]) -> str:
    objects = [{c: _json_value(v) for c, v in zip(columns, r)} for r in rows]
    return json.dumps(objects, indent=2, allow_nan=False) + "\n"


_RENDERERS: dict[str, Callable[[list[str], list[list[Any]]], str]] = {
    "table": _table, "csv": _csv, "json": _json, "markdown": _markdown,
}
