"""Quality of a model's predictions: scikit-learn metrics and agreement with the fp32 reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Quality:
    """The evaluate stage's figures (Result columns of the same names)."""

    top1_agreement: float
    eval_samples: int
    accuracy: Optional[float] = None
    precision_macro: Optional[float] = None
    recall_macro: Optional[float] = None
    f1_macro: Optional[float] = None


def quality(pred: np.ndarray, labels: Optional[np.ndarray], reference: np.ndarray) -> Quality:
    """Accuracy and macro precision/recall/F1 against `labels` (None: left None), and top-1 agreement
    with the reference predictions (the uncompressed fp32 eager model on the same inputs)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    pred = np.asarray(pred)
    agreement = float(np.mean(pred == np.asarray(reference)))
    if labels is None:
        return Quality(agreement, len(pred))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    return Quality(agreement, len(pred), accuracy=float(accuracy_score(labels, pred)), precision_macro=float(p),
                   recall_macro=float(r), f1_macro=float(f))


def batches(x: np.ndarray, batch_size: int):
    """Yield (batch, n_real) of exactly batch_size rows; the last batch is padded by repeating its rows."""
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        if n < batch_size:
            reps = np.resize(np.arange(n), batch_size)
            chunk = chunk[reps]
        yield np.ascontiguousarray(chunk), n


def predict(run, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Top-1 predictions of `run` over `x`, in batches of the engine's fixed batch size."""
    out = []
    for chunk, n in batches(x, batch_size):
        logits = np.asarray(run(chunk))
        out.append(logits.reshape(batch_size, -1)[:n].argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
