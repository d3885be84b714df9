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


class OutputError(ValueError):
    """A model's output that is not one row of logits per image."""


def logits(out, batch_size: int, num_classes: Optional[int] = None) -> np.ndarray:
    """One batch's output as a (batch_size, classes) array of real numbers, or OutputError saying what it is
    instead: a tuple or dict, complex or boolean values, a first axis that is not the batch, or (when
    `num_classes` is given) another number of logits per image."""
    if isinstance(out, dict) or not hasattr(out, "__array__"):
        size = f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else ""
        raise OutputError(f"the model returns a {type(out).__name__}{size}, not one array of logits "
                          f"(batch, num_classes): wrap it to return the logits alone")
    arr = np.asarray(out)
    if arr.dtype.kind not in "fiu":
        raise OutputError(f"the model's output has dtype {arr.dtype}, not real-valued logits")
    if arr.ndim == 0 or arr.shape[0] != batch_size:
        raise OutputError(f"the model's output has shape {tuple(arr.shape)} for a batch of {batch_size} images: "
                          "its first axis must be the batch")
    arr = arr.reshape(batch_size, -1)
    if num_classes is not None and arr.shape[1] != num_classes:
        raise OutputError(f"the model gives {arr.shape[1]} logits per image but num_classes is {num_classes}")
    return arr


def predict(run, x: np.ndarray, batch_size: int, num_classes: Optional[int] = None) -> np.ndarray:
    """Top-1 predictions of `run` over `x`, in batches of the engine's fixed batch size; an image whose
    logits are not all finite (NaN, inf) is predicted -1 (`nonfinite` counts them). OutputError when an
    output is not logits (`logits`)."""
    out = []
    for chunk, n in batches(x, batch_size):
        arr = logits(run(chunk), batch_size, num_classes)[:n]
        pred = arr.argmax(axis=1)
        if arr.dtype.kind == "f":
            pred[~np.isfinite(arr).all(axis=1)] = -1
        out.append(pred)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def nonfinite(pred: np.ndarray) -> int:
    """How many images `predict` found non-finite logits for."""
    return int(np.count_nonzero(np.asarray(pred) < 0))
