"""Quality sequentially (a race's quality phase, docs/search.md): the evaluation set in a fixed seeded
order, in chunks, against the fp32 reference; after each chunk the exact bound of shared/race_stats.py
says within, outside or not yet, and the check stops at the first answer. Runs where the engine is
(the measuring process or the job's process): numpy and the statistics only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fleetbench.agent.quality import predict
from fleetbench.shared import race_stats


@dataclass(frozen=True)
class RaceEvidence:
    """A race step's evidence (the Result column `race`, JSON)."""

    race: str


@dataclass
class Sequential:
    """What the check needs beside the engine: the order, the reference's predictions and the labels
    (in dataset order) and the rule's settings."""

    order: np.ndarray
    reference: np.ndarray
    labels: Optional[np.ndarray]
    bound: float
    alpha: float
    chunk: int

    @classmethod
    def for_job(cls, job, reference: np.ndarray, labels: Optional[np.ndarray]) -> "Sequential":
        s = job.search
        order = race_stats.seeded_order(len(reference), s.seed)
        return cls(order, np.asarray(reference), None if labels is None else np.asarray(labels),
                   s.quality_bound, s.alpha, s.chunk)

    def counts(self, pred: np.ndarray, n: int) -> dict[str, Any]:
        """The figures the verdict is computed from (what the row keeps as evidence)."""
        idx = self.order[:n]
        ref = self.reference[idx]
        out = {"n": n, "total": len(self.order), "disagree": int(np.sum(pred[:n] != ref)),
               "bound": self.bound, "alpha": self.alpha, "chunk": self.chunk}
        if self.labels is not None:
            y = self.labels[idx]
            out["worse"] = int(np.sum((ref == y) & (pred[:n] != y)))
            out["better"] = int(np.sum((ref != y) & (pred[:n] == y)))
        return out


verdict = race_stats.verdict_of


def predict_sequential(run, x: np.ndarray, batch_size: int, seq: Sequential,
                       num_classes: Optional[int] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Predictions in the seeded order until the verdict is within or outside (or the set ends):
    (predictions of order[:n], the counts)."""
    preds: list[np.ndarray] = []
    n, counts = 0, {}
    while n < len(seq.order):
        idx = seq.order[n:n + seq.chunk]
        preds.append(predict(run, np.ascontiguousarray(x[idx]), batch_size, num_classes))
        n += len(idx)
        counts = seq.counts(np.concatenate(preds), n)
        if verdict(counts).decision != race_stats.UNDECIDED:
            break
    return (np.concatenate(preds) if preds else np.zeros(0, np.int64)), counts


def evidence(counts: dict[str, Any]) -> RaceEvidence:
    v = verdict(counts)
    return RaceEvidence(json.dumps({"phase": "quality", **counts, "decision": v.decision, "drop": v.drop,
                       "low": v.low, "high": v.high}, sort_keys=True))
