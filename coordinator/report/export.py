"""Export a query's rows to a file, written by fleetbench from the result (the SQL never writes)."""
from __future__ import annotations

from typing import Any, Sequence


def export(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, path: str) -> None:
    from fleetbench.coordinator.report.write import write_atomic
    if fmt == "parquet":
        write_atomic(path, _parquet(columns, rows))
        return
    from fleetbench.coordinator.formats import render
    write_atomic(path, render(columns, rows, fmt))


def _parquet(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    names = list(columns)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate column names {names}: give each column its own name (AS ...)")
    table = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(names)}) if rows else \
        pa.table({c: pa.array([], type=pa.null()) for c in names})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
