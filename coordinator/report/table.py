"""The report's tables as text cells, once: the terminal, Markdown and HTML draw these cells.

Decimals are fixed per kind of figure: MB 2, ms 3, ratios x0.00, quality 4, differences +0.0000.
"""
from __future__ import annotations

from typing import Any, Optional

from fleetbench.coordinator.report.recommend import Pick

NULL = "-"
COURSE = ("compression", "backend", "device", "dtype", "bs", "size MB", "zstd MB", "p50 ms",
          "RAM MB", "RAM +MB", "VRAM MB", "P / R / F1", "agree", "size ×", "p50 ×", "F1 ±", "")
NOT_MEASURED = ("model", "compression", "backend", "device", "bs", "status", "stage", "reason")
BEST = ("node", "hardware", "model", "bs", "configuration", "p50 ms", "p99 ms", "items/s", "size MB",
        "quality", "drop", "why")


def mb(v: Any) -> str:
    return NULL if v is None else f"{v:.2f}"


def ms(v: Any) -> str:
    return NULL if v is None else f"{v:.3f}"


def ratio(v: Any) -> str:
    return NULL if v is None else f"×{v:.2f}"


def q4(v: Any) -> str:
    return NULL if v is None else f"{v:.4f}"


def diff(v: Any) -> str:
    if v is None:
        return NULL
    return "±0.0000" if abs(v) < 5e-5 else f"{v:+.4f}".replace("-", "−")


def prf(r: dict[str, Any]) -> str:
    if r.get("f1_macro") is None:
        return NULL
    return f"{q4(r['precision_macro'])} / {q4(r['recall_macro'])} / {q4(r['f1_macro'])}"


def mark(r: dict[str, Any], front: set[str], picked: set[str]) -> str:
    if r.get("valid") is False:   # an ok row that failed a validity rule says so, with its reasons
        reason = " ".join((r.get("validity") or "").split())
        return "invalid: " + reason[:100] + ("…" if len(reason) > 100 else "")
    return ("best" if r["job_id"] in picked else "") + (" pareto" if r["job_id"] in front else "")


def course_cells(r: dict[str, Any], front: set[str], picked: set[str]) -> list[str]:
    return [r["compression"], r["backend"], r["device"], r.get("dtype") or NULL,
            str(r["batch_size"]), mb(r.get("size_mb")), mb(r.get("size_compressed_mb")),
            ms(r.get("latency_p50_ms")), mb(r.get("ram_peak_mb")), mb(r.get("ram_delta_mb")),
            mb(r.get("vram_peak_mb")), prf(r), q4(r.get("top1_agreement")), ratio(r.get("size_x")),
            ratio(r.get("p50_x")), diff(r.get("f1_diff")), mark(r, front, picked).strip()]


def not_measured_cells(r: dict[str, Any]) -> list[str]:
    reason = " ".join((r.get("error") or "").split())
    return [r["model"], r["compression"], r["backend"], r["device"], str(r["batch_size"]), r["status"],
            r.get("stage") or NULL, reason[:160] + ("…" if len(reason) > 160 else "")]


def best_cells(p: Pick, hardware: Optional[str]) -> list[str]:
    r = p.row
    if r is None:
        return [p.node, hardware or NULL, p.model, str(p.batch_size or NULL)] + [NULL] * 7 + [p.why]
    metric = r.get("quality_metric") or "quality"
    config = f"{r['compression']} · {r['backend']}:{r['device']} {r.get('dtype') or ''}".strip()
    return [p.node, hardware or NULL, p.model, str(r["batch_size"]), config,
            ms(r.get("latency_p50_ms")), ms(r.get("latency_p99_ms")),
            f"{r['throughput_ips']:.1f}" if r.get("throughput_ips") is not None else NULL,
            mb(r.get("size_mb")), f"{metric} {q4(r.get('quality'))}", diff(r.get("quality_drop")), p.why]


def hardware_cells(columns: list[str], rows: list[tuple]) -> tuple[list[str], list[list[str]]]:
    """The PIVOT's columns, renamed for people (`a_p50_ms` -> `a p50 ms`), with fixed decimals."""
    keep = [i for i, c in enumerate(columns) if c not in ("sweep", "run_id")]
    names = []
    for i in keep:
        c = columns[i]
        names.append(c[:-len("_p50_ms")] + " p50 ms" if c.endswith("_p50_ms") else
                     c[:-len("_quality")] + " quality" if c.endswith("_quality") else
                     "bs" if c == "batch_size" else c)
    cells = []
    for row in rows:
        out = []
        for i in keep:
            v, c = row[i], columns[i]
            out.append(ms(v) if c.endswith("_p50_ms") else q4(v) if c.endswith("_quality") else
                       NULL if v is None else str(v))
        cells.append(out)
    return names, cells
