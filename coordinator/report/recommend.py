"""The recommendation and the Pareto set, in plain Python over `course` rows (dicts).

A candidate is an ok, valid row with a quality figure and a reference to compare it with
(`quality_drop` from the view). Per node and model the fastest candidate whose drop is within the
bound wins; ties go to the smaller compressed file, then the smaller file, then by name, so the
answer never depends on row order.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

log = logging.getLogger(__name__)

BY = {"p50": ("latency_p50_ms", False), "p99": ("latency_p99_ms", False),
      "throughput": ("throughput_ips", True)}
EPS = 1e-9


@dataclass
class Pick:
    node: str
    model: str
    batch_size: Optional[int]
    row: Optional[dict[str, Any]]
    why: str                       # one line: why this row, or why none


def _usable(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and r.get("valid", True) is not False


def _num(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _tie_key(r: dict[str, Any], metric: str, higher: bool) -> tuple:
    value = _num(r.get(metric))
    first = math.inf if value is None else (-value if higher else value)   # a missing figure sorts last
    return (first, _num(r.get("size_compressed_mb")) or math.inf,
            _num(r.get("size_mb")) or math.inf, r.get("backend") or "", r.get("compression") or "",
            r.get("device") or "")


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["node"], r["model"]), []).append(r)
    return dict(sorted(out.items()))


def best(rows: Iterable[dict[str, Any]], max_drop: float = 0.01, max_size_mb: Optional[float] = None,
         by: str = "p50", batch_size: Optional[int] = None) -> list[Pick]:
    """One Pick per (node, model). Latency (p50, p99) compares one batch size: `batch_size`, else
    the smallest with an ok row; throughput compares every batch size."""
    if by not in BY:
        raise ValueError(f"by: {by!r} is not one of {', '.join(BY)}")
    metric, higher = BY[by]
    picks = []
    for (node, model), members in _groups(rows).items():
        ok = [r for r in members if _usable(r) and _num(r.get(metric)) is not None]
        bs = batch_size
        if by != "throughput" and bs is None and ok:
            bs = min(r["batch_size"] for r in ok)
        if bs is not None:
            ok = [r for r in ok if r["batch_size"] == bs]
        if not ok:
            invalid = sum(r.get("status") == "ok" and not _usable(r) for r in members)
            picks.append(Pick(node, model, bs, None, f"no valid ok row with {metric}"
                              + (f" ({invalid} ok row(s) judged invalid)" if invalid else "")))
            continue
        judged = [r for r in ok if _num(r.get("quality_drop")) is not None]
        if not judged:
            picks.append(Pick(node, model, bs, None, "no quality figure with an fp32 reference to compare"))
            continue
        within = [r for r in judged if r["quality_drop"] <= max_drop + EPS]
        if max_size_mb is not None:
            within = [r for r in within if (_num(r.get("size_mb")) or math.inf) <= max_size_mb + EPS]
        if not within:
            limit = f"{r_metric(judged)} drop <= {max_drop:g}"
            limit += f" and size <= {max_size_mb:g} MB" if max_size_mb is not None else ""
            picks.append(Pick(node, model, bs, None, f"no row with {limit}"))
            continue
        win = min(within, key=lambda r: _tie_key(r, metric, higher))
        tied = [f"{r.get('backend')} {r.get('compression')}" for r in within
                if r is not win and by == "p50" and _overlap(_interval(r), _interval(win))]
        picks.append(Pick(node, model, bs, win, f"fastest of {len(within)} within the bound, "
                                                f"{len(ok) - len(within)} left out"
                          + (f"; tied within the p50 interval: {', '.join(sorted(tied))}" if tied else "")))
    return picks


def r_metric(rows: list[dict[str, Any]]) -> str:
    metrics = sorted({r.get("quality_metric") or "quality" for r in rows})
    return "/".join(metrics)


def _interval(r: dict[str, Any]) -> tuple[Optional[float], Optional[float]]:
    """The row's p50 interval (its 95% interval where stored, else the point)."""
    p50 = _num(r.get("latency_p50_ms"))
    low, high = _num(r.get("latency_p50_ci_low_ms")), _num(r.get("latency_p50_ci_high_ms"))
    return (low, high) if low is not None and high is not None and p50 is not None else (p50, p50)


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _dominates(a: tuple, b: tuple) -> bool:
    """a is no worse than b everywhere (lower latency, higher quality, lower size) and better somewhere;
    latency counts as better only when a's p50 interval lies wholly below b's (beyond the noise)."""
    (a_lo, a_hi), (b_lo, b_hi) = a[0], b[0]
    no_worse = a_lo <= b_hi and a[1] >= b[1] and a[2] <= b[2]
    return no_worse and (a_hi < b_lo or a[1] > b[1] or a[2] < b[2])


def pareto(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Job ids on the front of latency (p50) x quality x size, per (node, model, batch size). A row is
    dominated on latency only beyond the noise: where both have a p50 interval, when the other's lies
    wholly below its own.

    Rows without one of the three figures cannot be placed and are never on the front; rows with
    identical figures are both on it.
    """
    groups: dict[tuple, list[tuple[str, tuple]]] = {}
    for r in rows:
        p50, quality, size = _num(r.get("latency_p50_ms")), _num(r.get("quality")), _num(r.get("size_mb"))
        if not _usable(r) or p50 is None or quality is None or size is None:
            continue
        groups.setdefault((r["node"], r["model"], r["batch_size"]), []).append((r["job_id"], (_interval(r), quality, size)))
    front = set()
    for members in groups.values():
        for job_id, point in members:
            if not any(_dominates(other, point) for _, other in members):
                front.add(job_id)
    return front
