"""`coordinator report`: read a run once, compose it, print it and write the files asked for."""
from __future__ import annotations

import logging
import sys
from typing import Optional

from fleetbench.coordinator.outputs import check_outputs, write_atomic

log = logging.getLogger(__name__)


def report(db: str, run_id: Optional[str] = None, sweep: Optional[str] = None, html: Optional[str] = None,
           md: Optional[str] = None, max_drop: float = 0.01, out=None, quiet: bool = False, force: bool = False):
    from fleetbench.coordinator.report import compose, data, plots, render_html, render_md, render_term
    check_outputs([("--html", html), ("--md", md)], force=force, db=db)
    from fleetbench.coordinator.report import race_answer
    rep = compose.compose(data.load(db, run_id, sweep), max_drop=max_drop)
    rep.race = race_answer.load(db, rep.data.run.run_id)   # a raced run's own tables (None otherwise)
    if not quiet:
        render_term.render(rep, file=out or sys.stdout)
        race_answer.render(db, rep.data.run.run_id, out or sys.stdout, rep.race)
    if md:
        write_atomic(md, render_md.render(rep))
    if html:
        figures = plots.all_plots(rep.data.rows, rep.front, rep.data.samples)
        write_atomic(html, render_html.render(rep, figures))
    return rep
