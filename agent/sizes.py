"""Artifact size: bytes of every file on disk, and the same after zstd (where clustering and pruning show)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable

MB = 2**20


def artifact_files(paths: Iterable[Path]) -> list[Path]:
    """Every regular file of an artifact: given files, and all files under given directories."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            out.append(p)
    seen: set[Path] = set()
    unique = []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def size_bytes(paths: Iterable[Path]) -> int:
    return sum(f.stat().st_size for f in artifact_files(paths))


def compressed_bytes(paths: Iterable[Path], level: int = 9) -> int:
    """Total bytes after compressing each file with zstd (gzip where zstandard is missing)."""
    compress: Callable[[bytes], bytes]
    try:
        import zstandard
        compress = zstandard.ZstdCompressor(level=level).compress
    except ImportError:  # pragma: no cover - zstandard is a base dependency
        import gzip
        compress = functools.partial(gzip.compress, compresslevel=level)
    return sum(len(compress(f.read_bytes())) for f in artifact_files(paths))
