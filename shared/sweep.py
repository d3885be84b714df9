"""The sweep file: a strict, typed schema validated once at load.

Strict means: unknown keys, duplicate keys and wrong types are errors (a bool or a string is not a
number, a number is not a string), every number is finite and inside the range documented on its
field (see `coordinator schema`), and every error is reported at once, each as
``file:line:column: models[0].source: unknown scheme 'tim' (did you mean 'timm'?)``.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetbench.shared.errors import SweepError, printable, unsafe_char
from fleetbench.shared.vocab import BACKENDS as REGISTRY
from fleetbench.shared.vocab import METHODS, BackendName, HwKind
from fleetbench.shared.yamlread import show_path

# The registry's names; the test-only `null` engine is accepted but not advertised.
BACKENDS = tuple(n for n in REGISTRY if n != BackendName.NULL)
SOURCE_SCHEMES = ("timm", "python", "onnx")
DATASET_KINDS = ("digits", "imagefolder", "synthetic")
HW_KINDS = tuple(k.value for k in HwKind)

# Documented bounds (also in the JSON Schema and docs/sweep.md).
MAX_BATCH = 4096
MAX_CLASSES = 100_000
MAX_SIDE = 8192
MAX_SECONDS = 7 * 24 * 3600
MAX_ITERS = 10_000_000
MAX_NAME = 200


def did_you_mean(value: Any, choices) -> str:
    """`` (did you mean 'x'?)`` for a near-miss, else ''."""
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _plain(name: str) -> str:
    """A name is plain text: it is shown in terminals, Markdown and HTML, and typed back (`--sweep NAME`)."""
    if not name.strip():
        raise ValueError("must not be blank")
    bad = next((i for i, c in enumerate(name) if unsafe_char(c)), None)
    if bad is not None:
        raise ValueError(f"must be plain text: control character {name[bad]!r} at position {bad} "
                         "(no newline, tab, escape, NUL or direction mark)")
    return name


Name = Annotated[str, Field(max_length=MAX_NAME, json_schema_extra={"minLength": 1}), AfterValidator(_plain)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    name: Name
    source: str = Field(description="timm:<name> | python:<module>:<callable> | onnx:<file>")
    checkpoint: Optional[str] = Field(default=None, min_length=1)
    pretrained: bool = False
    num_classes: int = Field(gt=0, le=MAX_CLASSES)
    input_size: Annotated[tuple[Annotated[int, Field(gt=0, le=MAX_SIDE)], Annotated[int, Field(gt=0, le=MAX_SIDE)],
                                Annotated[int, Field(gt=0, le=MAX_SIDE)]],
                          Field(strict=False, description="[channels, height, width]")] = (3, 224, 224)

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme, sep, rest = v.partition(":")
        if not sep or not rest:
            raise ValueError(f"expected <scheme>:<target> with scheme one of {', '.join(SOURCE_SCHEMES)}")
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}{did_you_mean(scheme, SOURCE_SCHEMES)} "
                             f"(valid: {', '.join(SOURCE_SCHEMES)})")
        if scheme == "python" and rest.count(":") != 1:
            raise ValueError("python source must be python:<module>:<callable>")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "ModelSpec":
        if self.checkpoint and self.pretrained:
            raise ValueError("give either checkpoint or pretrained: true, not both")
        return self

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]


class DatasetSpec(_Strict):
    kind: Literal["digits", "imagefolder", "synthetic"] = "digits"
    path: Optional[str] = Field(default=None, min_length=1)
    limit: Optional[int] = Field(default=None, gt=0, le=MAX_ITERS)
    calibration: int = Field(default=64, gt=0, le=100_000)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _path(self) -> "DatasetSpec":
        if self.kind == "imagefolder" and not self.path:
            raise ValueError("imagefolder needs path:")
        return self


def exact(x: float) -> str:
    """The shortest text that reads back as exactly `x`, without an exponent: 50.0 -> '50',
    99.9999999 -> '99.9999999' (never '100'), 1e-09 -> '0.000000001'."""
    import decimal
    short = f"{x:g}"
    text = short if float(short) == x else repr(x)
    return format(decimal.Decimal(repr(x)), "f") if "e" in text else text


def _params() -> dict[str, Optional[str]]:
    """Method name -> the parameter it takes, read from the one method table each time."""
    return {name: info.param for name, info in METHODS.items()}


def _text_forms() -> str:
    return ", ".join(f"{m}-<{'k' if p == 'clusters' else p}>" for m, p in _params().items() if p)


class CompressionSpec(_Strict):
    """One compression method with its parameters; ``name`` is its canonical text form."""

    method: str
    percent: Optional[float] = None
    clusters: Optional[int] = None
    layers: Literal["all", "conv", "linear"] = "all"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """`cluster-32` and the other text forms become mappings; a mapping passes as it is."""
        if isinstance(value, str):
            return cls._text_fields(value)
        if not isinstance(value, (dict, CompressionSpec)):
            raise ValueError(f"expected a string like 'cluster-32' or a mapping, got {_describe(value)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "CompressionSpec":
        params = _params()
        if self.method not in params:
            raise ValueError(f"unknown method {self.method!r}{did_you_mean(self.method, params)} "
                             f"(valid: {', '.join(params)})")
        need = params[self.method]
        given = {k for k in ("percent", "clusters") if getattr(self, k) is not None}
        if need is None and given:
            raise ValueError(f"{self.method} takes no parameter")
        if need and need not in given:
            raise ValueError(f"{self.method} needs {need}")
        if given - {need} - {None}:
            raise ValueError(f"{self.method} does not take {', '.join(sorted(given - {need}))}")
        if self.layers != "all" and need is None:
            raise ValueError(f"{self.method} does not take layers (only prune, prune-channels and cluster do)")
        if self.percent is not None and not 0 < self.percent < 100:
            raise ValueError(f"percent must be in (0, 100), got {exact(self.percent)}")
        if self.clusters is not None and not 2 <= self.clusters <= 65536:
            raise ValueError(f"clusters must be in [2, 65536], got {self.clusters}")
        return self

    @property
    def name(self) -> str:
        base = self.method
        if self.percent is not None:
            base += f"-{exact(self.percent)}"   # the name is the value: two percents, two names
        if self.clusters is not None:
            base += f"-{self.clusters}"
        if self.layers != "all":
            base += f"@{self.layers}"
        return base

    @classmethod
    def parse(cls, value: Any) -> "CompressionSpec":
        if isinstance(value, CompressionSpec):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if not isinstance(value, str):
            raise ValueError(f"expected a string like 'cluster-32' or a mapping, got {type(value).__name__}")
        return cls(**cls._text_fields(value))

    @staticmethod
    def _text_fields(value: str) -> dict:
        params = _params()
        if value in params and params[value] is None:
            return {"method": value}
        with_param = sorted((m for m, p in params.items() if p), key=len, reverse=True)
        m = re.fullmatch(f"({'|'.join(map(re.escape, with_param))})" r"-(\d{1,9}(?:\.\d{1,9})?)", value)
        if not m:
            raise ValueError(f"unknown method {value!r}{did_you_mean(value, params)} "
                             f"(valid: {', '.join(params)}; {_text_forms()})")
        method, num = m.groups()
        if params[method] == "clusters":
            if "." in num:
                raise ValueError(f"{method} count must be an integer, got {num}")
            return {"method": method, "clusters": int(num)}
        return {"method": method, "percent": float(num)}


class MeasureSpec(_Strict):
    warmup_iters: int = Field(default=10, ge=0, le=MAX_ITERS)
    min_iters: int = Field(default=50, gt=0, le=MAX_ITERS)
    min_duration_s: float = Field(default=2.0, ge=0, le=MAX_SECONDS)
    max_duration_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    threads: Optional[int] = Field(default=None, gt=0)   # at most the node's usable CPUs: checked on the node
    # timed windows per job: in this process, or each in a fresh process (repeat_mode: process)
    repeats: int = Field(default=1, ge=1, le=100)
    repeat_mode: Literal["same", "process"] = "same"
    # validity thresholds: a row breaking any of them is stored with valid = false and the reason
    p99_min_samples: int = Field(default=100, ge=0, le=10_000_000)
    max_cv_pct: float = Field(default=15.0, gt=0, le=1000)
    max_other_cpu_cores: float = Field(default=0.25, ge=0, le=4096)
    max_steal_pct: float = Field(default=5.0, ge=0, le=100)
    # throughput scenario: concurrent requests in flight (default: the node's physical cores)
    streams: Optional[int] = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _order(self) -> "MeasureSpec":
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be >= min_duration_s")
        return self


class SearchSpec(_Strict):
    """How a sweep finds its answer (docs/search.md): every job in full, or a race that measures in full
    only what can still win."""

    strategy: Literal["exhaustive", "race"] = "exhaustive"
    quality_bound: float = Field(default=0.01, ge=0, le=1)   # the drop `best` accepts (agreement or accuracy)
    alpha: float = Field(default=0.03, gt=0, lt=0.5)          # error rate of each decision family
    chunk: int = Field(default=200, gt=0, le=MAX_ITERS)       # images per look of the sequential quality check
    block_s: float = Field(default=0.5, gt=0, le=MAX_SECONDS)  # one timing block's window
    min_rounds: int = Field(default=4, ge=2, le=100)
    max_rounds: int = Field(default=8, ge=2, le=100)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _rounds(self) -> "SearchSpec":
        if self.max_rounds < self.min_rounds:
            raise ValueError("max_rounds must be >= min_rounds")
        return self


def _backend(b: str) -> str:
    if b not in REGISTRY:
        raise ValueError(f"unknown backend {b!r}{did_you_mean(b, BACKENDS)} (valid: {', '.join(BACKENDS)})")
    return b


def _target(t: str) -> str:
    kind, sep, rest = t.partition(":")
    if t == "all":
        return t
    if not sep or not rest or kind not in ("kind", "node"):
        raise ValueError(f"bad target {t!r}{did_you_mean(t, ('all',) + tuple('kind:' + k for k in HW_KINDS))} "
                         "(all | kind:<kind> | node:<hostname or id>)")
    if any(unsafe_char(c) for c in rest):
        raise ValueError(f"bad target {t!r}: a node name is plain text (no control characters)")
    if kind == "kind" and rest not in HW_KINDS:
        raise ValueError(f"unknown kind {rest!r}{did_you_mean(rest, HW_KINDS)} (valid: {', '.join(HW_KINDS)})")
    return t


def _device(d: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}", d):
        raise ValueError(f"bad device {d!r} (auto, cpu, cuda, cuda:1, or a device name a backend reports)")
    return d


class Sweep(_Strict):
    name: Name
    models: list[ModelSpec] = Field(min_length=1)
    dataset: DatasetSpec = DatasetSpec()
    compression: list[CompressionSpec] = Field(default_factory=lambda: [CompressionSpec(method="none")],
                                               min_length=1)
    backends: list[Annotated[str, AfterValidator(_backend)]] = Field(min_length=1)
    devices: list[Annotated[str, AfterValidator(_device)]] = Field(default_factory=lambda: ["auto"], min_length=1)
    batch_sizes: list[Annotated[int, Field(gt=0, le=MAX_BATCH)]] = Field(default_factory=lambda: [1],
                                                                          min_length=1)
    scenarios: list[Literal["latency", "throughput"]] = Field(default_factory=lambda: ["latency"], min_length=1)
    targets: list[Annotated[str, AfterValidator(_target)]] = Field(default_factory=lambda: ["all"], min_length=1)
    measure: MeasureSpec = MeasureSpec()
    timeout_s: float = Field(default=900.0, gt=0, le=MAX_SECONDS)
    search: SearchSpec = SearchSpec()

    @field_validator("backends", "batch_sizes", "devices", "scenarios", "targets")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        return _unique(v)

    @model_validator(mode="after")
    def _unique_names(self) -> "Sweep":
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"models: duplicate name {sorted(dup)[0]!r}")
        comp = [c.name for c in self.compression]
        if len(set(comp)) != len(comp):
            raise ValueError("compression: duplicate entry")
        return self


def _unique(v: list) -> list:
    seen: list = []
    for x in v:
        if x in seen:
            raise ValueError(f"duplicate entry {x!r}")
        seen.append(x)
    return v


def _loc(loc: tuple) -> tuple:
    """A pydantic error location as a document path (validator names dropped)."""
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "tagged-union")))


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "text (quote it)",
             "bool_type": "true or false", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
             "int_parsing": "an integer", "float_parsing": "a number", "bool_parsing": "true or false"}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({str(value)[:40]})"


def _fields_at(path: tuple) -> list[str]:
    """The keys allowed in the mapping at `path` (for "did you mean")."""
    import typing
    cls: Any = Sweep
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        todo, cls = [field.annotation], None
        while todo:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                cls = t
                break
            todo.extend(typing.get_args(t))
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def _message(err: dict) -> tuple[tuple, str]:
    """(document path, message) of one pydantic error."""
    path, kind = _loc(err["loc"]), err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        msg = "unknown key" + did_you_mean(path[-1], _fields_at(path[:-1]))
    elif kind == "missing":
        msg = "required"
    elif kind in _EXPECTED:
        msg = f"expected {_EXPECTED[kind]}, got {_describe(err.get('input'))}"
    elif kind == "finite_number":
        msg = f"must be a finite number, got {err.get('input')!r}"
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        msg = f"{err.get('input')!r} is not one of {', '.join(choices)}{did_you_mean(err.get('input'), choices)}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        msg = f"{msg.removeprefix('Input should be ').replace('Input', 'must be')}, got {err.get('input')!r}"
        msg = msg if msg.startswith("must") else "must be " + msg
    elif kind == "too_short" and (err.get("ctx") or {}).get("min_length") == 1 and not err.get("input"):
        msg = "must not be empty"
    elif kind in ("too_short", "too_long"):
        msg = msg.replace("List", "list").replace("String", "text").replace("Tuple", "list")
    if msg.startswith("models: duplicate") or msg.startswith("compression: duplicate"):
        head, _, msg = msg.partition(": ")
        path = path + (head,)
    return path, msg


def parse_sweep(data: Any, origin: str = "sweep", doc=None) -> Sweep:
    """Validate `data` (from `read_yaml` when `doc` is given, for line numbers and duplicate keys).

    Raises SweepError whose lines are every error found, each `origin[:line:col]: path: message`.
    """
    errors: list[tuple[Optional[tuple[int, int]], str, str]] = []
    for pos, path, msg in (doc.errors if doc is not None else []):
        errors.append((pos, show_path(path), msg))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else _describe(data)
        errors.append(((1, 1) if doc is not None else None, "", f"expected a mapping at top level, got {got}"))
    else:
        try:
            sweep = Sweep.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                path, msg = _message(err)
                pos = doc.where(path, key=err["type"] == "extra_forbidden") if doc is not None else None
                errors.append((pos, show_path(path), msg))
        else:
            if not errors:
                return sweep
    errors.sort(key=lambda e: e[0] or (0, 0))
    lines = []
    for pos, path, msg in errors:
        where = f"{origin}:{pos[0]}:{pos[1]}" if pos else origin
        lines.append(printable(f"{where}: {path}: {msg}" if path else f"{where}: {msg}"))
    raise SweepError("\n".join(lines))


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; SweepError lists every problem, each with its line."""
    from fleetbench.shared.yamlread import read_yaml
    doc = read_yaml(path)
    return parse_sweep(doc.data, str(path), doc)


def sweep_json_schema() -> dict:
    """The JSON Schema of a sweep file (what `coordinator schema` prints, for editors)."""
    schema = Sweep.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleetbench sweep"
    comp = schema["properties"]["compression"]
    comp["items"] = {"anyOf": [
        {"type": "string", "description": "none, fp16, bf16, int8-dynamic, int8-static, prune-<percent>, "
                                          "prune-channels-<percent>, cluster-<k>"},
        comp["items"]]}
    return schema
