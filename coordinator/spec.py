"""The spec a run stores (`sweeps.spec`), and what changed between a stored spec and a sweep file.

A run is one spec: `--resume` continues the latest run of the sweep only when the file still says what that
run was started with, field for field, and its model files hold the same bytes. Otherwise it is refused,
naming what changed (a run without --resume starts a new one)."""
from __future__ import annotations

import json
from typing import Any, Optional

from fleetbench.shared.errors import SweepError, printable
from fleetbench.shared.sweep import Sweep

FILES = "file_sha256"   # model name -> sha256 of the checkpoint or ONNX file shipped to the agents


def spec_of(sweep: Sweep, hashes: dict[str, str]) -> dict[str, Any]:
    """What a run stores: the validated sweep (defaults filled in) and the content hash of each model file."""
    spec = sweep.model_dump(mode="json")
    spec[FILES] = dict(sorted(hashes.items()))
    return spec


def spec_json(sweep: Sweep, hashes: dict[str, str]) -> str:
    return json.dumps(spec_of(sweep, hashes), sort_keys=True)


def _normalised(stored: Any) -> Optional[dict[str, Any]]:
    """A stored spec read with this version's schema (a field added since takes its default), or None."""
    if not isinstance(stored, dict):
        return None
    files = stored.get(FILES, {})
    try:
        sweep = Sweep.model_validate({k: v for k, v in stored.items() if k != FILES})
    except ValueError:
        return None
    return spec_of(sweep, files if isinstance(files, dict) else {})


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """`path: old -> new` for every leaf that differs (lists of another length count as one change)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += changes(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {_show(old)} -> {_show(new)}"]


def _show(value: Any, limit: int = 60) -> str:
    text = value if value == "(absent)" else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_same(run_id: str, stored_text: Optional[str], sweep: Sweep, hashes: dict[str, str], sweep_path: str) -> None:
    """SweepError in one line when the run's stored spec is not what `sweep` and its files say now."""
    try:
        stored = _normalised(json.loads(stored_text or "null"))
    except ValueError:
        stored = None
    if stored is None:
        raise SweepError(f"--resume: run {run_id} has no spec this version can read, so it cannot be shown to be "
                         f"the same sweep; run without --resume to start a new run")
    diff = changes(stored, spec_of(sweep, hashes))
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise SweepError(printable(f"--resume: {sweep_path} is not the sweep run {run_id} was started with: "
                                   f"{'; '.join(diff[:3])}{more}; a run holds one spec: run without --resume "
                                   "to start a new run"))
