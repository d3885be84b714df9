"""`coordinator report`: read a run once, compose it, print it and write the files asked for."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, text_or_bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(*paths: Optional[str]) -> None:
    """Bad output paths are bad input: checked before anything is read or written."""
    from fleetbench.shared.errors import SweepError
    for p in paths:
        if p and not Path(p).resolve().parent.is_dir():
            raise SweepError(f"{p}: no such directory {Path(p).resolve().parent}")


def report(db: str, run_id: Optional[str] = None, sweep: Optional[str] = None, html: Optional[str] = None,
           md: Optional[str] = None, max_drop: float = 0.01, out=None, quiet: bool = False):
    from fleetbench.coordinator.report import compose, data, plots, render_html, render_md, render_term
    check_writable(html, md)
    rep = compose.compose(data.load(db, run_id, sweep), max_drop=max_drop)
    if not quiet:
        render_term.render(rep, file=out or sys.stdout)
    if md:
        write_atomic(md, render_md.render(rep))
    if html:
        figures = plots.all_plots(rep.data.rows, rep.front, rep.data.samples)
        write_atomic(html, render_html.render(rep, figures))
    return rep
