"""Read a YAML sweep file strictly: plain data only, with the line and column of every value.

`read_yaml` refuses, each in one line naming the file: a missing path, a directory, anything that
is not a regular file, a file over `MAX_BYTES`, bytes that are not UTF-8 text, more than one
document, a tag other than the plain ones (str, int, float, bool, null, timestamp, seq, map),
a document that expands to more than `MAX_NODES` values through aliases (an "alias bomb"), and
nesting deeper than `MAX_DEPTH`. A key given twice in one mapping is collected as an error (with
the line of the second one) so that it is reported together with the schema's errors.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from fleetbench.shared.errors import SweepError, printable

MAX_BYTES = 1 << 20        # a sweep is a few hundred bytes; 1 MiB leaves ample room
MAX_NODES = 100_000        # values after alias expansion
MAX_DEPTH = 64
_PLAIN = "tag:yaml.org,2002:"
SAFE_TAGS = frozenset(_PLAIN + t for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map"))

Path_ = tuple  # a path into the document: keys (str) and list indices (int)


@dataclass
class Document:
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)      # value -> (line, col), 1-based
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # mapping key -> (line, col)
    errors: list[tuple[tuple[int, int], Path_, str]] = field(default_factory=list)

    def where(self, path: Path_, key: bool = False) -> Optional[tuple[int, int]]:
        """The position of `path` (of its key when `key`), else of its nearest ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        p = tuple(path)
        while p not in self.marks and p:
            p = p[:-1]
        return self.marks.get(p)


def read_text(path: Path) -> str:
    """The file's text, or SweepError in one line for anything that is not a small UTF-8 text file."""
    try:
        return _read_text(path)
    except SweepError as e:
        raise SweepError(printable(str(e))) from None


def _read_text(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SweepError(f"{path}: is a directory, not a sweep file") from None
    if not stat.S_ISREG(st.st_mode):
        raise SweepError(f"{path}: not a regular file") from None
    if st.st_size > MAX_BYTES:
        raise SweepError(f"{path}: {st.st_size} bytes, over the {MAX_BYTES // 1024} KiB limit of a sweep file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SweepError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise SweepError(f"{path}: over the {MAX_BYTES // 1024} KiB limit of a sweep file")
    if b"\0" in raw:
        raise SweepError(f"{path}: binary file (NUL byte at offset {raw.index(0)}), not a YAML sweep")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SweepError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return text.removeprefix("\ufeff")


def read_yaml(path: str | Path) -> Document:
    p = Path(path)
    return parse_yaml(read_text(p), str(p))


def parse_yaml(text: str, origin: str) -> Document:
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            what = (e.problem or e.context or "syntax error").strip()
            raise SweepError(printable(f"{origin}{where}: invalid YAML: {what}")) from None
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SweepError(printable(f"{origin}: invalid YAML: {first}")) from None
        doc = Document(data=None)
        if node is None:
            return doc
        doc.data = _Walker(loader, doc, origin).build(node, (), 0)
        return doc
    finally:
        loader.dispose()


def _pos(node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _show(path: Path_) -> str:
    from fleetbench.shared.sweep import show_path
    return show_path(path) or "(top level)"


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, doc: Document, origin: str):
        self.loader, self.doc, self.origin = loader, doc, origin
        self.count = 0
        self.active: set[int] = set()

    def _refuse(self, node, path: Path_, msg: str) -> SweepError:
        line, col = _pos(node)
        return SweepError(printable(f"{self.origin}:{line}:{col}: {_show(path)}: {msg}"))

    def build(self, node, path: Path_, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self._refuse(node, path, f"the document expands to more than {MAX_NODES} values "
                                           "(aliases repeated too often); refused")
        if depth > MAX_DEPTH:
            raise self._refuse(node, path, f"nested deeper than {MAX_DEPTH} levels; refused")
        if node.tag not in SAFE_TAGS:
            tag = node.tag.replace(_PLAIN, "!!")
            raise self._refuse(node, path, f"YAML tag {tag} is not allowed (plain values, lists and mappings only)")
        if id(node) in self.active:
            raise self._refuse(node, path, "an alias refers to a value that contains it (recursive); refused")
        self.doc.marks[path] = _pos(node)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
                raise self._refuse(node, path, f"cannot read {node.value!r} as {node.tag.replace(_PLAIN, '')}"
                                               f" ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
            return self._mapping(node, path, depth)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node, path: Path_, depth: int) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _PLAIN + "merge":
                raise self._refuse(key_node, path, "merge keys (<<) are not allowed; write the keys out")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _PLAIN + "str":
                raise self._refuse(key_node, path, f"mapping keys must be plain text, got "
                                                   f"{key_node.tag.replace(_PLAIN, '!!')} {_short(key_node)}")
            key = key_node.value
            if key in out:
                first = self.doc.key_marks[path + (key,)]
                self.doc.errors.append((_pos(key_node), path + (key,),
                                        f"duplicate key (first given at line {first[0]})"))
                self.build(value_node, path + (key,) + ("<dup>",), depth + 1)   # still checked and counted
                continue
            self.doc.key_marks[path + (key,)] = _pos(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out


def _short(node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return repr(node.value[:40])
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
