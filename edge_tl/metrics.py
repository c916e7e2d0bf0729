"""Accuracy figures from logits, with numpy only (usable on a device with no torch or scikit-learn).

The layer below training, export, bench and the tasks: each of them measures with these functions.

Classification: ``classification_metrics``, ``agreement``, ``max_abs_diff``.
Anomaly: figures from normalised scores. A normalised score ``s`` is the raw score divided by the shipped
threshold: ``s > 1`` is ``defect``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------
# Classification


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


# --------------------------------------------------------------------------------------------------
# Anomaly (good-only models)


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """Normalised scores (N,) from an anomaly graph's logits (N, 2) = ``[0, s - 1]``."""
    return (logits[:, 1] - logits[:, 0] + 1.0).astype(np.float64)


def auroc(labels: np.ndarray, s: np.ndarray) -> float | None:
    """Image AUROC (defect = 1 positive), None without both classes.

    scikit-learn's ``roc_auc_score`` where it is installed; otherwise the same number from the
    Mann-Whitney U statistic with tied scores given their mean rank (so a device bench without
    scikit-learn reports it too).
    """
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return None
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s), np.float64)
        sorted_s = s[order]
        i = 0
        while i < len(s):  # mean rank over each run of ties (1-based)
            j = i
            while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
                j += 1
            ranks[order[i:j + 1]] = (i + j) / 2 + 1
            i = j + 1
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(roc_auc_score(labels, s))


def worse_than_chance(auroc_value: float | None, where: str = "held-out") -> str | None:
    """A warning when an AUROC is below 0.5 (a coin would rank the images better), else None."""
    if auroc_value is None or auroc_value >= 0.5:
        return None
    return (f"{where} AUROC {auroc_value:.3f} is worse than chance (0.5): to these features the defect images "
            "look more normal than the good ones. Check that the good and defect folders are not swapped "
            "(--ok-class names the good one), then that the defects are visible at this input size and resize "
            "(--input-size, --resize)")


def decision_metrics(s: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUROC, F1, false-reject and escape rates of normalised scores ``s`` against labels (0 good,
    1 defect); a rate is None when its class has no images."""
    pred = s > 1.0
    good, bad = labels == 0, labels == 1
    tp = int((pred & bad).sum())
    return {"n_good": int(good.sum()), "n_defect": int(bad.sum()), "auroc": auroc(labels, s),
            "f1": 2 * tp / (int(pred.sum()) + int(bad.sum())) if bad.any() else None,
            "false_reject_rate": float(pred[good].mean()) if good.any() else None,
            "escape_rate": float((~pred[bad]).mean()) if bad.any() else None}


def compare(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The candidate's anomaly figures against the reference's (both logits (N, 2)): the report fields
    ``auroc``, ``f1``, ``false_reject_rate``, ``escape_rate``, ``decision_agreement``,
    ``max_score_drift`` (max |Δs|, in units of the threshold) and ``auroc_drop``."""
    s_c, s_r = scores_from_logits(candidate), scores_from_logits(reference)
    cand, ref = decision_metrics(s_c, labels), decision_metrics(s_r, labels)
    drop = ref["auroc"] - cand["auroc"] if cand["auroc"] is not None and ref["auroc"] is not None else None
    return {"candidate": cand | {"decision_agreement": float(((s_c > 1) == (s_r > 1)).mean()) if len(s_c) else 0.0,
                                 "max_score_drift": float(np.abs(s_c - s_r).max()) if len(s_c) else 0.0,
                                 "auroc_drop": drop},
            "reference": ref}
