"""fleetbench: benchmark exported and compressed vision models across a fleet of unlike machines.

The Python API (installed as the `fleetbench` package; this folder is mapped to that name in
pyproject.toml, beside `fleetbench.agent`, `fleetbench.coordinator` and `fleetbench.shared`):

    import fleetbench
    res = fleetbench.run("examples/sweep.yaml")       # a path, a dict or a fleetbench.Sweep
    res.table()                                       # pandas DataFrame of the `course` view
    res.best(max_drop=0.01)                           # what to deploy, per node and model
    res.sql("SELECT * FROM hardware")                 # read-only SQL on the results
    fleetbench.open("results.duckdb").report(html="report.html")

See fleetbench.coordinator.api for each function, and docs/python-api.md. Importing this package
starts nothing and imports neither Ray nor torch: they load when a sweep runs.
"""
from fleetbench.coordinator.api import Report, Results, open, read_query, run
from fleetbench.shared.errors import ClusterError, FleetError, Interrupted, StoreError, SweepError
from fleetbench.shared.sweep import Sweep

__all__ = ["run", "open", "read_query", "Results", "Report", "Sweep", "FleetError", "SweepError", "ClusterError",
           "StoreError", "Interrupted", "__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":   # read when asked: the store module imports DuckDB
        from fleetbench.coordinator.store import fleetbench_version
        return fleetbench_version()
    raise AttributeError(f"module 'fleetbench' has no attribute {name!r}")
