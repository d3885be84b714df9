"""Human tables: the fleet, and a per-hardware comparison of a run's rows (the course's table shape)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from fleetbench.coordinator.formats import render
from fleetbench.shared.job import NodeProfile

RESULT_COLUMNS = ("model", "compression", "backend", "device", "dtype", "bs", "size MB", "zstd MB",
                  "p50 ms", "p90 ms", "items/s", "RAM MB", "RAM +MB", "VRAM MB", "P / R / F1", "agree", "status")


def fleet_table(profiles: list[NodeProfile]) -> tuple[list[str], list[list[Any]]]:
    cols = ["node", "node id", "host", "kinds", "cpu", "cores", "ram GB", "isa", "gpus", "backends available"]
    rows = []
    for p in profiles:
        mates = [o.node_key for o in profiles if o is not p and o.host_id and o.host_id == p.host_id]
        host = (p.host_id or "?")[:8] + (f" (shared with {', '.join(mates)})" if mates else "")
        isa = ",".join(f for f in p.isa_flags if f.startswith(("avx512_", "amx", "avx_vnni", "avx2")))
        gpus = ", ".join(g.get("name", "?") for g in p.gpus) or "-"
        avail = ", ".join(f"{b}[{'/'.join(i.get('devices') or [])}]" for b, i in p.backends.items()
                          if i.get("available") and b != "null")
        rows.append([p.node_key, p.node_id[:12], host, "+".join(p.kinds), p.cpu_model, p.cores,
                     round(p.ram_mb / 1024, 1), isa or "-", gpus, avail or "-"])
    return cols, rows


def _prf(r: dict) -> Any:
    if r.get("f1_macro") is None:
        return None
    return f"{r['precision_macro']:.4f} / {r['recall_macro']:.4f} / {r['f1_macro']:.4f}"


def _row(r: dict) -> list[Any]:
    if r["status"] != "ok":
        status = f"{r['status']}: {r.get('stage') or ''} {r.get('error') or ''}".replace("  ", " ")
    else:   # an ok row that failed a validity rule says so, with its reasons
        status = "ok" if r.get("valid") is not False else f"invalid: {r.get('validity') or ''}"
    bs = r["batch_size"]
    if r.get("scenario") not in (None, "latency"):   # throughput: batch size x requests in flight
        bs = f"{bs} x{r.get('streams') or '?'} thr"
    return [r["model"], r["compression"], r["backend"], r["device"], r.get("dtype"), bs,
            r.get("size_mb"), r.get("size_compressed_mb"), r.get("latency_p50_ms"), r.get("latency_p90_ms"),
            r.get("throughput_ips"), r.get("ram_peak_mb"), r.get("ram_delta_mb"), r.get("vram_peak_mb"), _prf(r),
            r.get("top1_agreement"), status[:90]]


def results_tables(rows: list[dict]) -> list[tuple[str, str]]:
    """One table per hardware (kind and host), rows sorted by model, batch size, then p50 latency."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["hw_kind"], r["hostname"], r["node_id"])].append(r)
    out = []
    for (kind, host, node_id), members in sorted(groups.items()):
        members.sort(key=lambda r: (r["model"], r["batch_size"], r["status"] != "ok",
                                    r.get("latency_p50_ms") or float("inf"), r["backend"], r["compression"]))
        title = f"== {kind} on {host} ({node_id[:12]}) =="
        out.append((title, render(list(RESULT_COLUMNS), [_row(r) for r in members], "table")))
    return out
