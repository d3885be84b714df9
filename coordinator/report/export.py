"""Export a query's rows to a file, written by fleetbench from the result (the SQL never writes)."""
from __future__ import annotations

from typing import Any, Sequence

from fleetbench.shared.errors import SweepError, one_line


def export(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, path: str) -> None:
    from fleetbench.coordinator.outputs import write_atomic
    if fmt == "parquet":
        write_atomic(path, _parquet(columns, rows))
        return
    from fleetbench.coordinator.formats import render
    write_atomic(path, render(columns, rows, fmt))


KEYED = ("json", "parquet")   # formats that name each value by its column: two columns of one name would clash


def check_columns(columns: Sequence[str], fmt: str) -> None:
    """A keyed format needs every column name once (JSON would silently keep only the last of two)."""
    names = list(columns)
    twice = sorted({c for c in names if names.count(c) > 1})
    if fmt in KEYED and twice:
        raise SweepError(f"--format {fmt}: column name(s) {', '.join(map(repr, twice))} given more than once; "
                         "give each column its own name (AS ...)")


def _parquet(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """The rows as one Parquet file; a column Parquet cannot hold is bad input, named, before any write."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    names = list(columns)
    check_columns(names, "parquet")
    arrays = {}
    for i, c in enumerate(names):
        try:
            arrays[c] = pa.array([r[i] for r in rows]) if rows else pa.array([], type=pa.null())
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
            raise SweepError(f"--format parquet: column {c!r} cannot be written to Parquet ({one_line(e, 160)}); "
                             f"convert it in the SQL, e.g. CAST({c} AS VARCHAR)") from None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    return sink.getvalue().to_pybytes()
