"""A raced run's own part of the report (search: race): per node what the race did with its time, and
per race the winner with the configurations tied with it, read from `race_blocks` and `results`."""
from __future__ import annotations

import json
from typing import Optional

from fleetbench.coordinator import race
from fleetbench.coordinator.report.compose import RACE_ANSWER as ANSWER
from fleetbench.coordinator.report.compose import RACE_ANSWER_NOTE as ANSWER_NOTE
from fleetbench.coordinator.report.compose import RACE_SUMMARY as SUMMARY
from fleetbench.coordinator.report.compose import RACE_SUMMARY_NOTE as SUMMARY_NOTE
from fleetbench.shared.sweep import SearchSpec


def tables(con, run_id: str) -> Optional[tuple[list[list[str]], list[list[str]]]]:
    """(summary rows, answer rows) of a raced run; None for a run that did not race."""
    has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'race_blocks'").fetchone()[0]
    if not has or not con.execute("SELECT count(*) FROM race_blocks WHERE run_id = ?", [run_id]).fetchone()[0]:
        return None

    def fetch(sql: str, params: list) -> list:
        return con.execute(sql, params).fetchall()

    spec = fetch("SELECT spec FROM sweeps WHERE run_id = ?", [run_id])
    search = SearchSpec(**(json.loads(spec[0][0]).get("search") or {})) if spec and spec[0][0] else SearchSpec()
    keys = dict(fetch("SELECT node_id, coalesce(node_key, hostname) FROM nodes WHERE run_id = ?", [run_id]))
    summary = []
    for s in race.summary(fetch, run_id):
        est = s["exhaustive_estimate_s"]
        summary.append([keys.get(s["node_id"], s["node_id"][:12]), str(s["raced"]), str(s["eliminated_quality"]),
                        str(s["eliminated_speed"]), str(s["measured_in_full"]), f"{s['race_s']:.1f}",
                        f"{est:.1f}" if est else "-", f"{s['race_s'] / est:.2f}" if est else "-"])
    answer = [[keys.get(a["node_id"], a["hostname"]), a["model"], str(a["batch_size"]), a["winner"],
               ", ".join(f"{name} ({p:.2f})" for name, p in a["tied"])] for a in race.answers(fetch, run_id, search)]
    return summary, answer




def load(db: str, run_id: str) -> Optional[tuple[list[list[str]], list[list[str]]]]:
    """The race's tables of a run, read on a short read-only connection (None: the run did not race)."""
    from fleetbench.coordinator.report.data import connect
    con = connect(db)
    try:
        return tables(con, run_id)
    finally:
        con.close()


def render(db: str, run_id: str, out=None, got=None) -> None:
    """Print the race's tables (nothing for a run that did not race)."""
    from fleetbench.coordinator.report.render_term import print_table
    got = got if got is not None else load(db, run_id)
    if got is None:
        return
    print_table(SUMMARY, got[0], title=SUMMARY_NOTE, file=out)
    print_table(ANSWER, got[1], title=ANSWER_NOTE, file=out)
