"""What an engine really computes in: counting the conv/linear layers per precision."""
from __future__ import annotations

from collections import Counter
from typing import Mapping


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
