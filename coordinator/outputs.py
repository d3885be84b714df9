"""Every file a command writes (query --output, report --html/--md) is checked here first and written here.

`check_output` says whether a path may be written, before anything is read or computed:
- never the results database itself (same path, a hard link to it, or its `<db>.*` side files);
- never a path that is not a regular file: a directory, a device (/dev/full), a FIFO, a socket, or a
  symbolic link (/dev/stdout is one): the atomic rename would replace the link or the node;
- never an existing file unless `--force` is given; and never one path for two outputs of one command.
`write_atomic` writes a temporary file beside the path and renames it into place (a reader sees the old
file or the new one, never half of one); a write that fails (disk full) leaves the old file as it was.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

from fleetbench.shared.errors import FleetError, SweepError

PathLike = Union[str, Path]
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _is_db(path: Path, db: Path) -> bool:
    """`path` is the database or one of its side files (<db>.writer, <db>.wal, ...), by name or by inode."""
    target, base = path.resolve(), db.resolve()
    if target == base or target.parent == base.parent and target.name.startswith(base.name + "."):
        return True
    return _same_file(path, db)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: PathLike, flag: str, force: bool = False, db: Optional[PathLike] = None,
                 reads: Iterable[tuple[str, Optional[PathLike]]] = ()) -> Path:
    """Refuse (SweepError, one line naming `flag`) a path this command must not write; returns it.
    `reads`: (flag, path) of files the command reads (the -f SQL file): never written, not even with --force."""
    path = Path(path)
    where = f"{flag} {path}"
    if not str(path) or str(path).endswith(os.sep):
        raise SweepError(f"{where}: not a file name")
    if db is not None and _is_db(path, Path(db)):
        raise SweepError(f"{where}: is the results database (--db); refused, nothing was written")
    for other, read in reads:
        if read and (path.resolve() == Path(read).resolve() or _same_file(path, Path(read))):
            raise SweepError(f"{where}: is the file {other} reads; refused, nothing was written")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise SweepError(f"{where}: cannot be checked ({e.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise SweepError(f"{where}: is {_kind(st.st_mode)}, not a regular file; refused, nothing was written")
    if st is not None and not force:
        raise SweepError(f"{where}: exists; give --force to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise SweepError(f"{where}: no such directory {parent.resolve()}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SweepError(f"{where}: cannot create a file in {parent.resolve()} (not writable by this user)")
    return path


def check_outputs(outputs: Iterable[tuple[str, Optional[PathLike]]], force: bool = False,
                  db: Optional[PathLike] = None) -> None:
    """check_output for each (flag, path) given, and no two of them the same file."""
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if not path:
            continue
        check_output(path, flag, force, db)
        key = Path(path).resolve()
        if key in seen:
            raise SweepError(f"{flag} {path}: the same file as {seen[key]}; give each output its own file")
        seen[key] = flag


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    The file gets the mode a plain `open` would give it (an existing file keeps its own). The path is
    checked again just before the rename: something that became a non-regular file meanwhile is left alone.
    A failed write (ENOSPC, EIO) raises FleetError with one line and leaves no temporary file behind.
    """
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise FleetError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(path))
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise SweepError(f"{path}: became {_kind(st.st_mode)} while it was written; left alone")
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise FleetError(f"{path}: cannot write ({e.strerror}); nothing was changed") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
