"""The report's plots: matplotlib figures of `course` rows, as inline SVG text (no network, no JavaScript).

Each function returns (title, svg) or None when the run has nothing to draw for it.
"""
from __future__ import annotations

import io
import logging
import math
import re
from typing import Any, Optional

log = logging.getLogger(__name__)

WIDTH_IN = 12.0
MARKERS = {"pytorch": "o", "torchscript": "s", "onnxruntime": "^", "openvino": "D", "tensorrt": "P",
           "tflite": "X"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _plain_log(ax, axis: str) -> None:
    """Log scale with plain tick labels (0.1, 1, 10): the default 10^x labels go through mathtext, slowly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    which.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def _svg(fig, salt: str) -> str:
    import matplotlib
    plt = _plt()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):   # unique ids: several SVGs share one page
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return text


def _ok(rows: list[dict[str, Any]], *need: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r.get("valid", True) is not False
            and all(r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k])) for k in need)]


def _grid(plt, n: int, height: float = 3.6):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_IN, height * rows), squeeze=False)
    fig.subplots_adjust(left=0.14, right=0.98, top=1 - 0.5 / (height * rows), bottom=0.6 / (height * rows),
                        wspace=0.45, hspace=0.9 / height)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _t(text: str) -> str:
    """Text from the data as matplotlib text: control characters as their escapes, `$` not mathtext."""
    from fleetbench.shared.errors import printable
    return printable(str(text)).replace("$", r"\$")


def _label(r: dict[str, Any]) -> str:
    return _t(f"{r['compression']}/{r['backend']}" + (f":{r['device']}" if r["device"] != "cpu" else ""))


def _nodes(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["node"] for r in rows})


def _points(ax, rows: list[dict[str, Any]], x: str, y: str) -> None:
    """One marker per engine (the legend) and every point labelled with its compression (and device)."""
    for backend in sorted({r["backend"] for r in rows}):
        sel = [r for r in rows if r["backend"] == backend]
        ax.scatter([r[x] for r in sel], [r[y] for r in sel], marker=MARKERS.get(backend, "o"), s=36,
                   label=_t(backend), alpha=0.85)
    for i, r in enumerate(sorted(rows, key=lambda r: (r[x], r[y]))):   # alternate sides: close points stay legible
        name = r["compression"] + (f" {r['device']}" if r["device"] != "cpu" else "")
        ax.annotate(_t(name), (r[x], r[y]), fontsize=7, xytext=(5, 4 if i % 2 else -10), textcoords="offset points")


def latency_vs_quality(rows: list[dict[str, Any]], front: set[str]) -> Optional[tuple[str, str]]:
    pts = _ok(rows, "latency_p50_ms", "quality")
    if not pts:
        return None
    plt = _plt()
    bs = min(r["batch_size"] for r in pts)
    pts = [r for r in pts if r["batch_size"] == bs]
    nodes = _nodes(pts)
    fig, axes = _grid(plt, len(nodes))
    for ax, node in zip(axes, nodes):
        mine = [r for r in pts if r["node"] == node]
        _points(ax, mine, "latency_p50_ms", "quality")
        on = [r for r in mine if r["job_id"] in front]
        if on:
            ax.scatter([r["latency_p50_ms"] for r in on], [r["quality"] for r in on], s=150,
                       facecolors="none", edgecolors="crimson", linewidths=1.4, label="Pareto set")
        metric = _t("/".join(sorted({r["quality_metric"] for r in mine})))
        ax.set(title=f"{_t(node)}: p50 vs {metric} (batch {bs})", xlabel="p50 latency (ms, log scale)", ylabel=metric)
        _plain_log(ax, "x")
        ax.legend(fontsize=7, loc="lower right")   # "best" searches every point: slow with many rows
    return (f"Latency vs quality per node, batch {bs} (Pareto set ringed)", _svg(fig, f"lat-q-{bs}"))


def size_vs_latency(rows: list[dict[str, Any]]) -> Optional[tuple[str, str]]:
    pts = _ok(rows, "latency_p50_ms", "size_mb")
    if not pts:
        return None
    plt = _plt()
    bs = min(r["batch_size"] for r in pts)
    pts = [r for r in pts if r["batch_size"] == bs]
    nodes = _nodes(pts)
    fig, axes = _grid(plt, len(nodes))
    for ax, node in zip(axes, nodes):
        _points(ax, [r for r in pts if r["node"] == node], "size_mb", "latency_p50_ms")
        ax.set(title=f"{_t(node)}: size vs p50 (batch {bs})", xlabel="size on disk (MB)", ylabel="p50 latency (ms, log scale)")
        _plain_log(ax, "y")
        ax.legend(fontsize=7, loc="upper right")
    return (f"Size vs latency per node, batch {bs}", _svg(fig, f"size-lat-{bs}"))


def speedup(rows: list[dict[str, Any]]) -> Optional[tuple[str, str]]:
    pts = _ok(rows, "speedup_vs_eager")
    if not pts:
        return None
    plt = _plt()
    bs = min(r["batch_size"] for r in pts)
    pts = [r for r in pts if r["batch_size"] == bs]
    nodes = _nodes(pts)
    most = max(sum(r["node"] == n for r in pts) for n in nodes)
    fig, axes = _grid(plt, len(nodes), height=max(2.5, 0.22 * most + 1.0))
    for ax, node in zip(axes, nodes):
        mine = sorted((r for r in pts if r["node"] == node), key=lambda r: r["speedup_vs_eager"])
        values = [r["speedup_vs_eager"] for r in mine]
        ax.barh([_label(r) for r in mine], [v - 1 for v in values], left=1,   # bars grow from ×1 either way
                color=["seagreen" if v >= 1 else "indianred" for v in values])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set(title=f"{_t(node)}: speed-up over eager fp32 (batch {bs})", xlabel="× (eager p50 / p50, log scale)")
        _plain_log(ax, "x")
        ax.tick_params(axis="y", labelsize=7)
    return (f"Speed-up over eager fp32 per node, batch {bs}", _svg(fig, f"speedup-{bs}"))


def distributions(rows: list[dict[str, Any]], samples: dict[str, list[float]]) -> Optional[tuple[str, str]]:
    """Per row: p5-p95 as a thin line, the quartiles as a thick one, the median as a tick (3 artists a node)."""
    import numpy as np
    pts = [r for r in _ok(rows) if samples.get(r["job_id"])]
    if not pts:
        return None
    plt = _plt()
    bs = min(r["batch_size"] for r in pts)
    pts = [r for r in pts if r["batch_size"] == bs]
    nodes = _nodes(pts)
    most = max(sum(r["node"] == n for r in pts) for n in nodes)
    fig, axes = _grid(plt, len(nodes), height=max(2.5, 0.22 * most + 1.0))
    for ax, node in zip(axes, nodes):
        mine = sorted((r for r in pts if r["node"] == node), key=lambda r: r["latency_p50_ms"] or 0)
        q = np.array([np.percentile(samples[r["job_id"]], [5, 25, 50, 75, 95]) for r in mine])
        y = np.arange(len(mine))
        ax.hlines(y, q[:, 0], q[:, 4], color="steelblue", lw=1, label="p5 – p95")
        ax.hlines(y, q[:, 1], q[:, 3], color="steelblue", lw=6, label="p25 – p75")
        ax.scatter(q[:, 2], y, marker="|", s=80, color="black", zorder=3, label="median")
        ax.set_yticks(y, [_label(r) for r in mine], fontsize=7)
        ax.set(title=f"{_t(node)}: latency samples, batch {bs}", xlabel="latency (ms, log scale)")
        _plain_log(ax, "x")
        ax.legend(fontsize=7, loc="lower right")
    return (f"Latency distribution of each row, batch {bs}", _svg(fig, f"dist-{bs}"))


def all_plots(rows: list[dict[str, Any]], front: set[str], samples: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Every plot, once per batch size the run has ok rows at (kernels and latencies differ between them)."""
    import functools
    import time
    out = []
    draws = (functools.partial(latency_vs_quality, front=front), size_vs_latency, speedup,
             functools.partial(distributions, samples=samples))
    for bs in sorted({r["batch_size"] for r in _ok(rows)}):
        at = [r for r in rows if r["batch_size"] == bs]
        for draw in draws:
            t = time.perf_counter()
            out.append(draw(at))
            log.debug("plot %s in %.2f s", out[-1][0] if out[-1] else "-", time.perf_counter() - t)
    return [p for p in out if p is not None]
