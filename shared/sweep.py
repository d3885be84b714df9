"""The sweep file: a strict, typed schema validated once at load.

Every validation error names its path (``models[0].source: unknown scheme 'tim'``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetbench.shared.errors import SweepError

BACKENDS = ("pytorch", "torchscript", "onnxruntime", "openvino", "tensorrt", "tflite")
SOURCE_SCHEMES = ("timm", "python", "onnx")
DATASET_KINDS = ("digits", "imagefolder", "synthetic")
HW_KINDS = ("cpu", "nvidia", "intel")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    name: str = Field(min_length=1)
    source: str
    checkpoint: Optional[str] = None
    pretrained: bool = False
    num_classes: int = Field(gt=0)
    input_size: tuple[int, int, int] = (3, 224, 224)

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme, sep, rest = v.partition(":")
        if not sep or not rest:
            raise ValueError(f"expected <scheme>:<target> with scheme one of {', '.join(SOURCE_SCHEMES)}")
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r} (valid: {', '.join(SOURCE_SCHEMES)})")
        if scheme == "python" and rest.count(":") != 1:
            raise ValueError("python source must be python:<module>:<callable>")
        return v

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) <= 0:
            raise ValueError("all dimensions must be positive")
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
    path: Optional[str] = None
    limit: Optional[int] = Field(default=None, gt=0)
    calibration: int = Field(default=64, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _path(self) -> "DatasetSpec":
        if self.kind == "imagefolder" and not self.path:
            raise ValueError("imagefolder needs path:")
        return self


_METHOD_PARAM = {"none": None, "fp16": None, "bf16": None, "int8-dynamic": None, "int8-static": None,
                 "prune": "percent", "prune-channels": "percent", "cluster": "clusters"}


class CompressionSpec(_Strict):
    """One compression method with its parameters; ``name`` is its canonical text form."""

    method: str
    percent: Optional[float] = None
    clusters: Optional[int] = None
    layers: Literal["all", "conv", "linear"] = "all"

    @model_validator(mode="after")
    def _check(self) -> "CompressionSpec":
        if self.method not in _METHOD_PARAM:
            raise ValueError(f"unknown method {self.method!r} (valid: {', '.join(_METHOD_PARAM)})")
        need = _METHOD_PARAM[self.method]
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
            raise ValueError(f"percent must be in (0, 100), got {self.percent:g}")
        if self.clusters is not None and not 2 <= self.clusters <= 65536:
            raise ValueError(f"clusters must be in [2, 65536], got {self.clusters}")
        return self

    @property
    def name(self) -> str:
        base = self.method
        if self.percent is not None:
            base += f"-{self.percent:g}"
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
        if value in _METHOD_PARAM and _METHOD_PARAM[value] is None:
            return cls(method=value)
        m = re.fullmatch(r"(prune-channels|prune|cluster)-(\d+(?:\.\d+)?)", value)
        if not m:
            raise ValueError(f"unknown method {value!r} (valid: {', '.join(_METHOD_PARAM)}; "
                             "prune-<percent>, prune-channels-<percent>, cluster-<k>)")
        method, num = m.groups()
        if method == "cluster":
            if "." in num:
                raise ValueError(f"cluster count must be an integer, got {num}")
            return cls(method=method, clusters=int(num))
        return cls(method=method, percent=float(num))


class MeasureSpec(_Strict):
    warmup_iters: int = Field(default=10, ge=0)
    min_iters: int = Field(default=50, gt=0)
    min_duration_s: float = Field(default=2.0, ge=0)
    max_duration_s: float = Field(default=30.0, gt=0)
    threads: Optional[int] = Field(default=None, gt=0)
    # timed windows per job: in this process, or each in a fresh process (repeat_mode: process)
    repeats: int = Field(default=1, ge=1, le=100)
    repeat_mode: Literal["same", "process"] = "same"
    # validity thresholds: a row breaking any of them is stored with valid = false and the reason
    p99_min_samples: int = Field(default=100, ge=0, le=10_000_000)
    max_cv_pct: float = Field(default=10.0, gt=0, le=1000)
    max_other_cpu_cores: float = Field(default=0.25, ge=0, le=4096)
    max_steal_pct: float = Field(default=5.0, ge=0, le=100)
    # throughput scenario: concurrent requests in flight (default: the node's physical cores)
    streams: Optional[int] = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _order(self) -> "MeasureSpec":
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be >= min_duration_s")
        return self


class Sweep(_Strict):
    name: str = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    dataset: DatasetSpec = DatasetSpec()
    compression: list[CompressionSpec] = Field(default_factory=lambda: [CompressionSpec(method="none")])
    backends: list[str] = Field(min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["auto"])
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    scenarios: list[Literal["latency", "throughput"]] = Field(default_factory=lambda: ["latency"], min_length=1)
    targets: list[str] = Field(default_factory=lambda: ["all"])
    measure: MeasureSpec = MeasureSpec()
    timeout_s: float = Field(default=900.0, gt=0)

    @field_validator("compression", mode="before")
    @classmethod
    def _parse_compression(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            try:
                out.append(CompressionSpec.parse(item))
            except ValidationError as e:
                raise ValueError(f"[{i}] {_first_msg(e)}") from None
            except ValueError as e:
                raise ValueError(f"[{i}] {e}") from None
        return out

    @field_validator("backends")
    @classmethod
    def _backends(cls, v: list[str]) -> list[str]:
        for i, b in enumerate(v):
            if b not in BACKENDS and b != "null":
                raise ValueError(f"[{i}] unknown backend {b!r} (valid: {', '.join(BACKENDS)})")
        return _unique(v)

    @field_validator("scenarios")
    @classmethod
    def _scenarios(cls, v: list[str]) -> list[str]:
        return _unique(v)

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if not v or min(v) <= 0:
            raise ValueError("batch sizes must be positive integers")
        return _unique(v)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            kind, sep, rest = t.partition(":")
            if t == "all":
                continue
            if not sep or not rest or kind not in ("kind", "node"):
                raise ValueError(f"[{i}] bad target {t!r} (all | kind:<kind> | node:<hostname or id>)")
            if kind == "kind" and rest not in HW_KINDS:
                raise ValueError(f"[{i}] unknown kind {rest!r} (valid: {', '.join(HW_KINDS)})")
        return v

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


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _first_msg(e: ValidationError) -> str:
    err = e.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    path = _loc(err["loc"])
    if msg.startswith("[") and "]" in msg:  # list validators put the index in the message
        idx, _, msg = msg.partition("] ")
        path += idx + "]"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required"
    return f"{path}: {msg}" if path else msg


def parse_sweep(data: Any, origin: str = "sweep") -> Sweep:
    if not isinstance(data, dict):
        raise SweepError(f"{origin}: expected a mapping at top level")
    try:
        return Sweep(**data)
    except ValidationError as e:
        n = e.error_count()
        more = f" (and {n - 1} more)" if n > 1 else ""
        raise SweepError(f"{origin}: {_first_msg(e)}{more}") from None


def load_sweep(path: str | Path) -> Sweep:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SweepError(f"{p}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SweepError(f"{p}: invalid YAML{where}") from None
    return parse_sweep(data, str(p))
