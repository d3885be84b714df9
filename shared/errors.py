"""Project error types. Third-party exceptions are translated into these at one boundary per stage."""
from __future__ import annotations

STAGES = ("load", "compress", "export", "build", "measure", "evaluate")


class FleetError(Exception):
    """Base class of every error fleetbench raises on purpose."""


class SweepError(FleetError):
    """A sweep file (or CLI input) is invalid; the message names the file and field."""


class StoreError(FleetError):
    """The results database cannot be opened or queried."""


class Unsupported(FleetError):
    """A job that this node, backend or device cannot do. Becomes an `unsupported` row."""


class StageError(FleetError):
    """A job failed in one stage. Becomes a `failed` row with that stage."""

    def __init__(self, stage: str, message: str):
        assert stage in STAGES, stage
        super().__init__(message)
        self.stage = stage


def one_line(exc: BaseException, limit: int = 400) -> str:
    """A one-line description of an exception, for the `error` column."""
    text = str(exc).strip().splitlines()
    first = next((ln.strip() for ln in text if ln.strip()), "")
    msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, (StageError, Unsupported)):
        msg = first or type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with every character that would start a new line escaped (for one-line messages)."""
    return "".join(c if len(f"a{c}a".splitlines()) == 1 else repr(c)[1:-1] for c in text)
