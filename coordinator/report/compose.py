"""One run's report as sections of text cells, composed once from the views' rows."""
from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from fleetbench.coordinator.report import table
from fleetbench.coordinator.report.data import RunData
from fleetbench.coordinator.report.recommend import Pick, best, pareto


@dataclass
class NodeSection:
    node: str
    hardware: str
    hw_kind: str
    tables: list[tuple[str, list[list[str]]]]   # (model, the course table of its ok rows)
    not_measured: list[list[str]]               # failed and unsupported rows
    warning: str = ""                           # why a node has no trusted row, said at its top

    @property
    def heading(self) -> str:
        return f"{self.node} — {self.hardware or 'hardware unknown'} ({self.hw_kind})"


# A raced run's tables (coordinator/report/race_answer.py fills them; every rendering shows them).
RACE_SUMMARY = ("node", "raced", "out at quality", "out at speed", "measured in full", "race node s",
                "exhaustive est. s", "share")
RACE_ANSWER = ("node", "model", "bs", "winner", "tied with it (P fastest)")
RACE_SUMMARY_NOTE = ("race: what each node measured (exhaustive estimate: every configuration at the mean cost "
                     "of the node's finals)")
RACE_ANSWER_NOTE = "race answer: the winner over the stored blocks and the configurations statistically tied with it"


@dataclass
class Report:
    data: RunData
    max_drop: float
    sections: list[NodeSection] = field(default_factory=list)
    hardware_columns: list[str] = field(default_factory=list)
    hardware_rows: list[list[str]] = field(default_factory=list)
    picks: list[Pick] = field(default_factory=list)
    best_rows: list[list[str]] = field(default_factory=list)
    front: set[str] = field(default_factory=set)
    race: Optional[tuple[list[list[str]], list[list[str]]]] = None   # a raced run's tables (race_answer.py)

    @property
    def title(self) -> str:
        return f"fleetbench report: sweep {self.data.run.sweep}, run {self.data.run.run_id}"

    @property
    def subtitle(self) -> str:
        run = self.data.run
        started = run.started_at
        when = started.isoformat(sep=" ", timespec="seconds") if isinstance(started, dt.datetime) else started
        ok = sum(r["status"] == "ok" for r in self.data.rows)
        return (f"started {when} UTC · status {run.status} · {len(self.data.rows)} rows ({ok} ok) · "
                f"{len(self.sections)} node(s) · database {self.data.db}")

    @property
    def best_note(self) -> str:
        return (f"Per node and model: the fastest ok row by p50 at the smallest batch size whose quality "
                f"(F1, else accuracy, else top-1 agreement) is within {self.max_drop:g} of eager fp32 "
                f"(pytorch, none). ‘pareto’ marks rows no other row beats on p50, quality and size at once.")


def _hardware_of(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for r in rows:
        out.setdefault(r["node"], (r.get("hardware") or "", r.get("hw_kind") or ""))
    return out


def _kind(reason: str) -> str:
    """A validity reason without its figures: `cv 31% > 15%` -> `cv`, `p99 from 50 samples ...` -> `p99 from`."""
    words = reason.split()
    kept = words[:1]
    for w in words[1:]:
        if w.startswith("(") or re.search(r"\d", w):
            break
        kept.append(w)
    return " ".join(kept)


def all_invalid(rows: list[dict[str, Any]]) -> str:
    """For a node whose ok rows were all judged invalid: how many, the reasons counted by kind, one in full."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or any(r.get("valid") is not False for r in ok):
        return ""
    reasons = [" ".join((r.get("validity") or "no reason recorded").split()) for r in ok]
    kinds = Counter(_kind(part) for reason in reasons for part in {p.strip() for p in reason.split(";")})
    counted = ", ".join(f"{kind} ({n} of {len(ok)})" for kind, n in kinds.most_common())
    return (f"Every measured row of this node ({len(ok)}) was judged invalid, so it has no recommendation and "
            f"no plot: {counted}. For example: {reasons[0]}")


def compose(data: RunData, max_drop: float = 0.01) -> Report:
    rep = Report(data, max_drop)
    rep.front = pareto(data.rows)
    rep.picks = best(data.rows, max_drop=max_drop)
    picked = {p.row["job_id"] for p in rep.picks if p.row}
    hw = _hardware_of(data.rows)
    for node in sorted(hw):
        mine = [r for r in data.rows if r["node"] == node]
        models = sorted({r["model"] for r in mine})
        tables = [(m, [table.course_cells(r, rep.front, picked) for r in mine
                       if r["model"] == m and r["status"] == "ok"]) for m in models]
        rep.sections.append(NodeSection(
            node, *hw[node], tables=tables,
            not_measured=[table.not_measured_cells(r) for r in mine if r["status"] != "ok"],
            warning=all_invalid(mine)))
    rep.hardware_columns, rep.hardware_rows = table.hardware_cells(data.hardware_columns, data.hardware_rows)
    rep.best_rows = [table.best_cells(p, hw.get(p.node, ("", ""))[0]) for p in rep.picks]
    return rep
