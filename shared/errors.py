"""Project error types. Third-party exceptions are translated into these at one boundary per stage."""
from __future__ import annotations

from fleetbench.shared.vocab import Stage

STAGES = tuple(Stage)


class FleetError(Exception):
    """Base class of every error fleetbench raises on purpose.

    Each kind of refusal is one subclass; the Python API raises it and the command line prints its
    message (one line per problem) and exits with its `exit_code`."""

    exit_code = 1


class SweepError(FleetError):
    """Input refused before anything ran (a sweep file or dict, flags, --db, model or dataset files);
    the message has one line per problem, each naming the file or flag and the field."""

    exit_code = 2


class StoreError(FleetError):
    """The results database cannot be opened or queried (busy: a coordinator is writing it)."""


class ClusterError(FleetError):
    """The fleet cannot be used: the Ray cluster cannot be joined or the embedded one cannot start."""


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


# Invisible characters that reorder the text around them on a screen (a name could show as another).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_char(c: str) -> bool:
    """A character that is not plain text on a screen: a control character (C0, DEL, C1: newline, ESC, BEL,
    NUL...), a line or paragraph separator, a bidirectional override, or a lone surrogate."""
    import unicodedata
    return c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every character that is not plain text (see `unsafe_char`) written as its escape
    (`\\x1b`, `\\n`, `\\u202e`): one line that a terminal shows as it is. With `keep_newlines`, newlines and
    tabs stay (for multi-line text such as a traceback)."""
    keep = "\n\t" if keep_newlines else ""
    if text.isascii() and text.isprintable():    # the common case, fast
        return text
    return "".join(repr(c)[1:-1] if c not in keep and unsafe_char(c) else c for c in text)


class Interrupted(KeyboardInterrupt):
    """The coordinator got SIGINT or SIGTERM: in-flight jobs are cancelled, finished rows kept.

    A KeyboardInterrupt, so that no `except Exception` on the way turns it into a failed row."""

    def __init__(self, signum: int, hint: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum   # 130 for SIGINT, 143 for SIGTERM

    @property
    def signal_name(self) -> str:
        import signal
        return signal.Signals(self.signum).name

    def __str__(self) -> str:   # the line the command line prints, and what a notebook shows
        return f"interrupted by {self.signal_name}; {self.hint or 'rows stored so far are kept'}"
