"""Rendering query results as table, CSV, JSON and Markdown."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from fleetbench.coordinator.formats import FORMATS, format_float, render

COLUMNS = ["model", "batch_size", "latency_p50_ms", "f1_macro", "size_mb", "cache_hit", "started_at"]
ROWS = [
    ("resnet18", 1, 12.345678, 0.84741234, 185.7512, True, dt.datetime(2025, 1, 2, 3, 4, 5)),
    ("vit|tiny", 8, None, None, 1234.56, None, None),
]


def test_table() -> None:
    text = render(COLUMNS, ROWS, "table")
    lines = text.splitlines()
    assert lines[0].split() == COLUMNS
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "12.346" in lines[2] and "0.8474" in lines[2] and "185.75" in lines[2]
    assert "true" in lines[2] and "2025-01-02T03:04:05" in lines[2]
    assert lines[3].split() == ["vit|tiny", "8", "-", "-", "1234.6", "-", "-"]
    assert lines[-1] == "(2 rows)"
    # numeric columns are right-aligned: their values end where the header does
    col_end = lines[0].index("batch_size") + len("batch_size")
    assert lines[2][col_end - 1] == "1" and lines[3][col_end - 1] == "8"


def test_table_empty() -> None:
    text = render(["a", "b"], [], "table")
    assert text.splitlines()[0].split() == ["a", "b"] and "(0 rows)" in text


def test_csv_parses_back() -> None:
    text = render(COLUMNS, ROWS, "csv")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == COLUMNS
    assert parsed[1][0] == "resnet18" and float(parsed[1][2]) == 12.345678   # full precision
    assert parsed[1][5] == "true" and parsed[1][6] == "2025-01-02T03:04:05"
    assert parsed[2] == ["vit|tiny", "8", "", "", "1234.56", "", ""]


def test_json_loads_back() -> None:
    data = json.loads(render(COLUMNS, ROWS, "json"))
    assert data[0] == {"model": "resnet18", "batch_size": 1, "latency_p50_ms": 12.345678,
                       "f1_macro": 0.84741234, "size_mb": 185.7512, "cache_hit": True,
                       "started_at": "2025-01-02T03:04:05"}
    assert data[1]["latency_p50_ms"] is None and data[1]["cache_hit"] is None


def test_json_nan_is_null() -> None:
    assert json.loads(render(["x", "l"], [(float("nan"), [1, None])], "json")) == [
        {"x": None, "l": [1, None]}]


def test_markdown() -> None:
    lines = render(COLUMNS, ROWS, "markdown").splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "|---|---:|---:|---:|---:|---|---|"
    assert lines[2].startswith("| resnet18 | 1 | 12.346 | 0.8474 | 185.75 | true |")
    assert lines[3] == "| vit\\|tiny | 8 | - | - | 1234.6 | - | - |"


@pytest.mark.parametrize("value,column,expected", [
    (113.27, "latency_p50_ms", "113.270"),
    (0.000123456, "latency_p50_ms", "0.000"),
    (0.84741234, "", "0.8474"),
    (21.256, "", "21.26"),
    (12345.678, "", "12345.7"),
    (0.0, "", "0"),
    (1.5e-7, "", "1.500e-07"),
    (-3.14159, "", "-3.14"),
])
def test_format_float(value: float, column: str, expected: str) -> None:
    assert format_float(value, column) == expected


def test_unknown_format() -> None:
    with pytest.raises(ValueError) as info:
        render(["a"], [(1,)], "xml")
    for name in FORMATS:
        assert name in str(info.value)


def test_every_format_handles_none_only_column() -> None:
    for fmt in FORMATS:
        assert render(["a"], [(None,)], fmt).endswith("\n")
