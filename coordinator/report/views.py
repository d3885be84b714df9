"""The SQL views every rendering reads: `course` (per row) and `hardware` (per configuration, nodes side by side).

The store creates them in the file (so `coordinator query "SELECT * FROM course"` works); a report
on a read-only connection creates the same SQL as TEMP views, so a file written before they
existed reads the same way.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

COURSE_COLUMNS = (
    "sweep", "run_id", "job_id", "node", "hardware", "hw_kind", "hostname", "node_id", "model", "compression",
    "backend", "device", "dtype", "batch_size", "scenario", "status", "stage", "error", "valid", "validity",
    "iterations",
    "size_mb", "size_compressed_mb", "latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms",
    "latency_p90_ms", "latency_p99_ms",
    "throughput_ips", "ram_peak_mb", "ram_delta_mb", "vram_peak_mb", "precision_macro", "recall_macro",
    "f1_macro", "accuracy", "top1_agreement", "quality_metric", "quality", "ref_quality", "quality_drop",
    "size_x", "compressed_x", "p50_x", "f1_diff", "speedup_vs_eager",
)

# {valid} is `r.valid` where the results table has that column, else TRUE; {validity} and {scenario} likewise
# (else NULL and 'latency').
_COURSE = """
CREATE OR REPLACE {temp} VIEW course AS
-- One row per result of every run, named and judged:
--   node              stable node name (deploy/start-node.sh --name, else the host name)
--   hardware          CPU model, cores and GPUs of that node
--   valid             FALSE where the row's measuring window was judged unclean (else TRUE)
--   validity          the reasons of an invalid row
--   scenario          latency | throughput
--   quality_metric    f1 | accuracy | agreement: the first the row and its reference both have
--   quality           that metric's value; ref_quality: the same for eager fp32 (pytorch, none)
--                     on the same node, model and device (else cpu); agreement's reference is 1
--   quality_drop      ref_quality - quality (positive: worse than the reference)
--   size_x, compressed_x, p50_x, f1_diff
--                     change against the `none` row of the same run, node, model, backend,
--                     device and batch size (ratios; f1_diff is a difference); p50_x only
--                     where both rows are valid (size and quality do not depend on the window)
--   speedup_vs_eager  eager fp32 p50 (same device, else cpu; same batch size) / this p50
WITH hw AS (   -- per node and run, not per row: the JSON is parsed once per node
    SELECT run_id, node_id, node_key,
           concat_ws(', ', cpu_model, CAST(cores AS VARCHAR) || ' cores',
                     nullif(array_to_string(json_extract_string(gpus, '$[*].name'), ', '), '')) AS hardware
    FROM nodes
), named AS (
    SELECT r.*, {valid} AS valid_row, {validity} AS validity_row,
           {scenario} AS scenario_row, coalesce(n.node_key, r.hostname, r.node_id) AS node, n.hardware
    FROM results AS r LEFT JOIN hw AS n ON n.run_id = r.run_id AND n.node_id = r.node_id
), ok AS (
    SELECT * FROM named WHERE status = 'ok' AND valid_row
), base AS (   -- size and quality do not depend on a clean timing window; p50 does
    SELECT run_id, node, model, backend, device, batch_size, scenario_row, size_mb, size_compressed_mb,
           CASE WHEN valid_row THEN latency_p50_ms END AS latency_p50_ms, f1_macro
    FROM named WHERE status = 'ok' AND compression = 'none'
), eager AS (
    SELECT run_id, node, model, device, batch_size, scenario_row, min(latency_p50_ms) AS p50
    FROM ok WHERE backend = 'pytorch' AND compression = 'none' AND latency_p50_ms > 0
    GROUP BY ALL
), ref AS (
    SELECT run_id, node, model, device, arg_min(f1_macro, batch_size) AS f1,
           arg_min(accuracy, batch_size) AS acc
    FROM ok WHERE backend = 'pytorch' AND compression = 'none'
    GROUP BY ALL
), judged AS (
    SELECT named.*, coalesce(rs.f1, rc.f1) AS ref_f1, coalesce(rs.acc, rc.acc) AS ref_acc
    FROM named
    LEFT JOIN ref AS rs ON rs.run_id = named.run_id AND rs.node = named.node
          AND rs.model = named.model AND rs.device = named.device
    LEFT JOIN ref AS rc ON rc.run_id = named.run_id AND rc.node = named.node
          AND rc.model = named.model AND rc.device = 'cpu'
), q AS (
    SELECT *,
           CASE WHEN f1_macro IS NOT NULL AND ref_f1 IS NOT NULL THEN 'f1'
                WHEN accuracy IS NOT NULL AND ref_acc IS NOT NULL THEN 'accuracy'
                WHEN top1_agreement IS NOT NULL THEN 'agreement' END AS quality_metric
    FROM judged
)
SELECT q.sweep, q.run_id, q.job_id, q.node, q.hardware, q.hw_kind, q.hostname, q.node_id, q.model,
       q.compression, q.backend, q.device, q.dtype, q.batch_size, q.scenario_row AS scenario, q.status, q.stage,
       q.error, q.valid_row AS valid, q.validity_row AS validity, q.iterations, q.size_mb, q.size_compressed_mb, q.latency_p50_ms,
       q.latency_p50_ci_low_ms, q.latency_p50_ci_high_ms, q.latency_p90_ms, q.latency_p99_ms, q.throughput_ips,
       q.ram_peak_mb, q.ram_delta_mb,
       q.vram_peak_mb, q.precision_macro, q.recall_macro, q.f1_macro, q.accuracy, q.top1_agreement,
       q.quality_metric,
       CASE q.quality_metric WHEN 'f1' THEN q.f1_macro WHEN 'accuracy' THEN q.accuracy
            WHEN 'agreement' THEN q.top1_agreement END AS quality,
       CASE q.quality_metric WHEN 'f1' THEN q.ref_f1 WHEN 'accuracy' THEN q.ref_acc
            WHEN 'agreement' THEN 1.0 END AS ref_quality,
       ref_quality - quality AS quality_drop,
       q.size_mb / nullif(b.size_mb, 0) AS size_x,
       q.size_compressed_mb / nullif(b.size_compressed_mb, 0) AS compressed_x,
       CASE WHEN q.valid_row THEN q.latency_p50_ms / nullif(b.latency_p50_ms, 0) END AS p50_x,
       q.f1_macro - b.f1_macro AS f1_diff,
       CASE WHEN q.latency_p50_ms > 0 THEN coalesce(es.p50, ec.p50) / q.latency_p50_ms END
           AS speedup_vs_eager
FROM q
LEFT JOIN base AS b ON b.run_id = q.run_id AND b.node = q.node AND b.model = q.model
      AND b.backend = q.backend AND b.device = q.device AND b.batch_size = q.batch_size
      AND b.scenario_row = q.scenario_row
      AND q.status = 'ok'
LEFT JOIN eager AS es ON es.run_id = q.run_id AND es.node = q.node AND es.model = q.model
      AND es.batch_size = q.batch_size AND es.device = q.device AND es.scenario_row = q.scenario_row
LEFT JOIN eager AS ec ON ec.run_id = q.run_id AND ec.node = q.node AND ec.model = q.model
      AND ec.batch_size = q.batch_size AND ec.device = 'cpu' AND ec.scenario_row = q.scenario_row
"""

_HARDWARE = """
CREATE OR REPLACE {temp} VIEW hardware AS
-- The ok rows of the latest run of every sweep, one row per (model, compression, backend,
-- device, batch size) and, per node, <node>_p50_ms and <node>_quality side by side.
-- Recreated when a run adds nodes: PIVOT in a view needs its node names spelled out.
{select}
"""

_HARDWARE_SELECT = """SELECT * FROM (
    SELECT sweep, run_id, model, compression, backend, device, batch_size, node,
           latency_p50_ms, quality
    FROM course WHERE status = 'ok' AND valid AND {where}
) PIVOT (first(latency_p50_ms) AS p50_ms, first(quality) AS quality
         FOR node IN ({nodes}) GROUP BY sweep, run_id, model, compression, backend, device, batch_size)
ORDER BY sweep, model, batch_size, backend, device, compression"""

LATEST_RUNS = "run_id IN (SELECT arg_max(run_id, started_at) FROM sweeps GROUP BY sweep)"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def course_sql(result_columns: set[str], temp: bool = False) -> str:
    valid = "coalesce(r.valid, TRUE)" if "valid" in result_columns else "TRUE"
    validity = "r.validity" if "validity" in result_columns else "CAST(NULL AS VARCHAR)"
    scenario = "coalesce(r.scenario, 'latency')" if "scenario" in result_columns else "'latency'"
    return _COURSE.format(temp="TEMP" if temp else "", valid=valid, validity=validity, scenario=scenario)


def hardware_select(nodes: list[str], where: str = LATEST_RUNS) -> str:
    """The cross-hardware PIVOT over `nodes` (in that order) for the runs `where` selects."""
    names = ", ".join(_quote(n) for n in nodes) or "NULL"
    return _HARDWARE_SELECT.format(where=where, nodes=names)


def _columns(con) -> set[str]:
    return {row[0] for row in con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'results'").fetchall()}


def _node_names(con, where: str = LATEST_RUNS) -> list[str]:
    """Nodes of the runs: from `nodes` (known when a run starts) and from rows without a nodes entry."""
    return [r[0] for r in con.execute(
        f"SELECT node FROM (SELECT coalesce(node_key, hostname, node_id) AS node FROM nodes WHERE {where} "
        f"UNION SELECT node FROM course WHERE {where}) WHERE node IS NOT NULL ORDER BY node").fetchall()]


def install(con, temp: bool = False) -> None:
    """Create (or replace) `course` and `hardware` on `con`; TEMP ones on a read-only connection."""
    con.execute(course_sql(_columns(con), temp))
    select = hardware_select(_node_names(con))
    con.execute(_HARDWARE.format(temp="TEMP" if temp else "", select=select))
