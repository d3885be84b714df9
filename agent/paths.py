"""The one place the node's cache folder is resolved."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$FLEETBENCH_CACHE (unset or empty: ~/.cache/fleetbench), `~` expanded, joined with `parts`."""
    base = os.environ.get("FLEETBENCH_CACHE") or str(Path.home() / ".cache" / "fleetbench")
    return Path(base).expanduser().joinpath(*parts)
