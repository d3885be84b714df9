"""Nodes that share a machine: two rows whose timed windows overlapped on one host measured each other.

The dispatcher already runs one timed job per machine at a time; this is the check that holds when
something else (a second coordinator, a node whose host id was unknown at dispatch) broke that.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Optional

from fleetbench.shared.job import Result


def _stamp(value: Optional[str]) -> Optional[float]:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


class HostWindows:
    """The timed windows seen so far, per host; `check` marks a new row and names the older ones to mark."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, str, float, float]]] = defaultdict(list)

    def check(self, r: Result) -> list[tuple[str, str]]:
        """Adds the overlap reason to `r` (a new ok row) and returns (job_id, reason) for earlier rows."""
        start, end = _stamp(r.window_start), _stamp(r.window_end)
        if r.status != "ok" or not r.host_id or start is None or end is None:
            return []
        older = []
        for job_id, node_id, s, e in self.seen[r.host_id]:
            if s < end and start < e:
                _add_reason(r, f"timed while job {job_id} ran on the same host (node {node_id[:8]})")
                older.append((job_id, f"timed while job {r.job_id} ran on the same host (node {r.node_id[:8]})"))
        self.seen[r.host_id].append((r.job_id, r.node_id, start, end))
        return older


def _add_reason(r: Result, reason: str) -> None:
    r.valid = False
    r.validity = f"{r.validity}; {reason}" if r.validity else reason
