"""Accuracy figures from logits, with numpy only (usable on a device with no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (labels.astype(np.int64), preds.astype(np.int64)), 1)
    return m


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """top-1, balanced accuracy, per-class recall and confusion matrix of ``logits`` against ``labels``.

    Balanced accuracy is the mean recall over the classes that have evaluation images (scikit-learn's
    ``balanced_accuracy_score``): on a line where 70 % of the parts are good, top-1 can read 0.85 while
    a defect class is caught 3 times in 10; balanced accuracy shows it. Classes without evaluation
    images get recall ``None`` and are left out of the mean.
    """
    preds = logits.argmax(axis=1)
    cm = confusion(labels, preds, len(classes))
    support = cm.sum(axis=1)
    recall = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    seen = [r for r in recall.values() if r is not None]
    return {
        "top1": float((preds == labels).mean()) if len(labels) else 0.0,
        "balanced_accuracy": float(np.mean(seen)) if seen else 0.0,
        "per_class_recall": recall,
        "confusion": cm.tolist(),
        "n": len(labels),
    }


def agreement(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose argmax equals the reference's argmax."""
    if len(reference) == 0:
        return 0.0
    return float((candidate.argmax(axis=1) == reference.argmax(axis=1)).mean())


def max_abs_diff(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)))) if len(
        reference) else 0.0
