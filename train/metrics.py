"""Classification metrics in plain numpy (accuracy, balanced accuracy, per-class P/R/F1, confusion, ECE)."""
from __future__ import annotations

from typing import Any

import numpy as np

from fer_runtime.labels import LABELS, NUM_CLASSES


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """A confusion matrix as rates of its true class (each row sums to 1; a row without samples stays 0)."""
    cm = np.asarray(cm, float)
    return cm / np.maximum(cm.sum(1, keepdims=True), 1)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence over equal-width bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_report(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """All the numbers ``fer-train evaluate`` reports, as a JSON-ready dict."""
    y_pred = probs.argmax(1)
    cm = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "nll": float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1)).mean()),
        "ece": expected_calibration_error(probs, y_true),
        "per_class": {
            LABELS[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i in range(NUM_CLASSES)
        },
        "confusion": cm.tolist(),
    }
