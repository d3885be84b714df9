"""The fleet as a table (what the probes saw); a run's rows are drawn by the report modules."""
from __future__ import annotations

from typing import Any

from fleetbench.shared.job import NodeProfile


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
