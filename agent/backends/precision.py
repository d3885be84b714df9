"""Helpers the backends share for their precision variants: what an engine really computes in (counting
conv/linear layers per precision) and calibration batches for static quantization."""
from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np


def majority_dtype(counts: Mapping[str, int], default: str = "fp32") -> str:
    """The precision most conv/linear layers compute in (ties go to the lower precision)."""
    rank = {"int8": 0, "fp16": 1, "bf16": 2, "fp32": 3}
    live = {k: v for k, v in counts.items() if v > 0}
    if not live:
        return default
    return min(live, key=lambda k: (-live[k], rank.get(k, 9)))


def describe(counts: Mapping[str, int]) -> str:
    """'12 int8, 4 fp32' (most first)."""
    return ", ".join(f"{n} {k}" for k, n in Counter({k: v for k, v in counts.items() if v}).most_common())


def calibration_batches(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`x` cut into full batches of `batch_size` (wrapping around so every image is used at least once)."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("no calibration images")
    n = -(-len(x) // batch_size) * batch_size
    idx = np.arange(n) % len(x)
    return [np.ascontiguousarray(x[idx[i:i + batch_size]]) for i in range(0, n, batch_size)]
