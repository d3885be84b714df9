"""What the coordinator stores from an agent's reply: its measurements, checked; never its identity.

The identity of a row (job id, sweep, model, compression, backend, device, batch size, node,
hostname, hardware kind) comes from the Job the coordinator sent, so an agent cannot write a row
for another job or node. Every figure must be of its type, finite and in its range; a reply with
one bad figure (a NaN or negative latency, an accuracy of 2) is stored as a `failed` row naming the
field, with none of its figures: a half-checked row would mislead more than a missing one.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any, Optional

from fleetbench.shared.errors import STAGES
from fleetbench.shared.job import Job, Result
from fleetbench.shared.vocab import Status

STATUSES = tuple(s for s in Status if s != Status.ELIMINATED)   # only the coordinator eliminates

IDENTITY = ("job_id", "sweep", "model", "compression", "backend", "device", "batch_size", "node_id",
            "hostname", "hw_kind", "host_id", "scenario", "run_id")
FRACTIONS = frozenset({"accuracy", "precision_macro", "recall_macro", "f1_macro", "top1_agreement", "sparsity"})
SIGNED = frozenset({"ram_delta_mb"})           # peak over a baseline: may be slightly below it
TIMESTAMPS = frozenset({"started_at", "finished_at", "window_start", "window_end"})
MAX_TEXT = 4000
MAX_LIST = 10_000_000                          # samples of one row (every window's), at most
_FIELDS = {f.name: f for f in dataclasses.fields(Result)}


def accept(job: Job, reply: Any) -> Result:
    """The row to store for `job` given the agent's `reply` (a Result, or anything else)."""
    if not isinstance(reply, Result):
        return refused(job, f"agent replied with a {type(reply).__name__}, not a result")
    row = Result.for_job(job)
    for name in _FIELDS:
        if name not in IDENTITY:
            setattr(row, name, getattr(reply, name, None))
    why = problem(row)
    return refused(job, why, reply) if why else row


def refused(job: Job, why: str, reply: Optional[Result] = None) -> Result:
    stage = getattr(reply, "stage", None) if reply is not None else None
    return Result.for_job(job, status="failed", stage=stage if stage in STAGES else "measure",
                          error=f"agent reply refused: {why}")


def problem(row: Result) -> Optional[str]:
    """The first field of `row` that is not a valid measurement, as one line; None when all are."""
    if row.status not in STATUSES:
        return f"status {_show(row.status)} is not one of {', '.join(STATUSES)}"
    if row.stage is not None and row.stage not in STAGES:
        return f"stage {_show(row.stage)} is not one of {', '.join(STAGES)}"
    for name, f in _FIELDS.items():
        value = getattr(row, name)
        if name in IDENTITY or name in ("status", "stage") or value is None:
            continue
        why = _field_problem(name, f.type if isinstance(f.type, str) else str(f.type), value)
        if why:
            return why
    if row.status == "ok" and row.latency_p50_ms is None:
        return "an ok row without latency_p50_ms"
    return None


def _field_problem(name: str, kind: str, value: Any) -> Optional[str]:
    """Why one measured field's value is not valid for its declared type, or None."""
    if name in TIMESTAMPS:
        return None if _is_stamp(value) else f"{name}={_show(value)} is not an ISO timestamp"
    if "list[" in kind:   # a list of figures: each one checked as its element type
        if not isinstance(value, list) or len(value) > MAX_LIST:
            return f"{name} is not a list of at most {MAX_LIST} figures"
        element = kind.split("list[", 1)[1]
        for i, item in enumerate(value):
            why = _field_problem(f"{name}[{i}]", element, item)
            if why:
                return why
        return None
    if "str" in kind:
        ok = isinstance(value, str) and len(value) <= MAX_TEXT
        return None if ok else f"{name} is not a text of at most {MAX_TEXT} characters"
    if "bool" in kind:
        return None if isinstance(value, bool) else f"{name}={_show(value)} is not true or false"
    if "int" in kind:
        ok = not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= 2**62
        return None if ok else f"{name}={_show(value)} is not a whole number >= 0"
    if "float" in kind:
        return _float_problem(name, value)
    return None


def _float_problem(name: str, value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name}={_show(value)} is not a finite number"
    if name in FRACTIONS and not 0.0 <= value <= 1.0:
        return f"{name}={_show(value)} is not between 0 and 1"
    if name not in SIGNED and value < 0:
        return f"{name}={_show(value)} is negative"
    return None


def _is_stamp(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        dt.datetime.fromisoformat(value)
        return True
    except ValueError:
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
