"""The answer from stored rows: SQL views (the one computation), then terminal, Markdown and HTML renderings.

`views` defines `course` (one row per result with its node's stable name, its hardware and the
change against the `none` row) and `hardware` (the same configuration on every node side by side);
`recommend` picks per node from `course` rows; `render_*` and `plots` only draw those rows.
"""
from fleetbench.coordinator.report.fleet import fleet_table

__all__ = ["fleet_table"]
