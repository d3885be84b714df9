"""`coordinator compare RUN_A RUN_B`: p50 and quality per configuration, regressions beyond bound and noise.

Rows are matched by configuration and hardware identity (node name, hardware, model, compression,
backend, device, batch size), never by Ray's node id. A slower p50 is a regression only when the
change is above the bound *and* above the noise, where the noise is the largest of:
  - the 95% confidence intervals of both medians, from the stored samples (order statistics);
    without samples, the spread p90 - p50 of each row stands in (cruder and wider);
  - the run-to-run spread of this configuration's p50 over the sweep's latest 20 other runs.
A quality drop above `max_drop` is a regression whatever the noise (quality is deterministic).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fleetbench.shared.errors import SweepError

log = logging.getLogger(__name__)

KEY = ("node", "hardware", "model", "compression", "backend", "device", "batch_size")
COLUMNS = ("node", "hardware", "model", "compression", "backend", "device", "bs", "p50 A ms", "p50 B ms",
           "p50 change", "noise ±", "quality A", "quality B", "quality change", "verdict")


@dataclass
class Line:
    key: tuple
    a: dict[str, Any]
    b: dict[str, Any]
    change: Optional[float]
    noise: Optional[float]
    q_change: Optional[float]
    verdict: str


def median_ci(samples: list[float]) -> Optional[tuple[float, float]]:
    """95% CI of the median from order statistics (distribution-free); None under 6 samples."""
    n = len(samples)
    if n < 6:
        return None
    s = sorted(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return s[lo], s[hi]


def _row_noise(r: dict[str, Any], samples: dict[str, list[float]]) -> Optional[float]:
    """Relative half-width of this row's p50 uncertainty."""
    p50 = r.get("latency_p50_ms")
    if not p50:
        return None
    ci = median_ci(samples.get(r["job_id"]) or [])
    if ci is not None:
        return (ci[1] - ci[0]) / 2 / p50
    if r.get("latency_p90_ms") is not None:
        return max(0.0, r["latency_p90_ms"] - p50) / p50
    return None


HISTORY_RUNS = 20


def _history(con, sweep: str, exclude: tuple[str, str]) -> dict[tuple, list[float]]:
    """p50 of every configuration over the sweep's latest HISTORY_RUNS other runs."""
    sql = (f"SELECT {', '.join(KEY)}, list(latency_p50_ms) FROM course WHERE run_id IN ("
           "  SELECT run_id FROM sweeps WHERE sweep = ? AND run_id NOT IN (?, ?)"
           "  ORDER BY started_at DESC LIMIT ?) "
           f"AND status = 'ok' AND valid AND latency_p50_ms > 0 GROUP BY ALL")
    return {tuple(row[:-1]): row[-1] for row in con.execute(sql, [sweep, *exclude, HISTORY_RUNS]).fetchall()}


def _load(db: Path, run_a: str, run_b: str):
    from fleetbench.coordinator.report import data
    con = data.connect(db)
    try:
        a = data.resolve_run(con, db, run_a)
        b = data.resolve_run(con, db, run_b)
        if a.sweep != b.sweep:
            raise SweepError(f"{db}: runs {a.run_id} (sweep {a.sweep!r}) and {b.run_id} (sweep {b.sweep!r}) "
                             "are of different sweeps; compare runs of one sweep")
        rows_a, rows_b = data.course_rows(con, a.run_id), data.course_rows(con, b.run_id)
        for run, rows in ((a, rows_a), (b, rows_b)):
            if not any(r["status"] == "ok" for r in rows):
                raise SweepError(f"{db}: run {run.run_id} has no ok rows: nothing to compare")
        samples = (data.samples(con, a.run_id), data.samples(con, b.run_id))   # job ids repeat across runs
        history = _history(con, a.sweep, (a.run_id, b.run_id))
        return rows_a, rows_b, samples, history
    finally:
        con.close()


def _index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {tuple(r[k] for k in KEY): r for r in rows if r["status"] == "ok" and r.get("valid", True) is not False}


def compare(db: str | Path, run_a: str, run_b: str, fail_above: float = 0.10, max_drop: float = 0.01) -> list[Line]:
    rows_a, rows_b, samples, history = _load(Path(db), run_a, run_b)
    ia, ib = _index(rows_a), _index(rows_b)
    lines = []
    for key in sorted(set(ia) & set(ib), key=lambda k: tuple(str(v) for v in k)):
        a, b = ia[key], ib[key]
        change = noise = q_change = None
        verdict = "same"
        if a.get("latency_p50_ms") and b.get("latency_p50_ms"):
            change = b["latency_p50_ms"] / a["latency_p50_ms"] - 1
            parts = [n for n in (_row_noise(a, samples[0]), _row_noise(b, samples[1])) if n is not None]
            noise = sum(parts) if parts else 0.0
            past = history.get(key, [])
            if past:
                noise = max(noise, max(abs(p / a["latency_p50_ms"] - 1) for p in past))
            if change > fail_above and change > noise:
                verdict = "SLOWER"
            elif -change > fail_above and -change > noise:
                verdict = "faster"
        if a.get("quality") is not None and b.get("quality") is not None and a.get("quality_metric") == b.get("quality_metric"):
            q_change = b["quality"] - a["quality"]
            if -q_change > max_drop:
                verdict = "WORSE QUALITY" if verdict != "SLOWER" else "SLOWER, WORSE QUALITY"
        lines.append(Line(key, a, b, change, noise, q_change, verdict))
    only_a, only_b = len(set(ia) - set(ib)), len(set(ib) - set(ia))
    if only_a or only_b:
        log.warning("%d configuration(s) only in %s, %d only in %s: not compared", only_a, run_a, only_b, run_b)
    return lines


def is_regression(line: Line) -> bool:
    return "SLOWER" in line.verdict or "WORSE" in line.verdict


def cells(line: Line) -> list[str]:
    from fleetbench.coordinator.report.table import ms, q4

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v * 100:+.1f}%".replace("-", "−")

    node, hardware, model, compression, backend, device, bs = line.key
    return [node, hardware or "-", model, compression, backend, device, str(bs),
            ms(line.a.get("latency_p50_ms")), ms(line.b.get("latency_p50_ms")), pct(line.change),
            "-" if line.noise is None else f"{line.noise * 100:.1f}%",
            q4(line.a.get("quality")), q4(line.b.get("quality")),
            "-" if line.q_change is None else f"{line.q_change:+.4f}".replace("-", "−"), line.verdict]
