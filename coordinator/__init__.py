"""The coordinator: validates a sweep, discovers the fleet, plans jobs, dispatches them with Ray,
and is the only writer of the DuckDB results file."""
import os

# Ray 2.60 turns 127.0.0.1 into the machine's network address unless this is set before import.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
