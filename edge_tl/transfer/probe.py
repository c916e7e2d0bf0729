"""Probes of frozen features: how well a linear classifier or nearest neighbours separate the classes.

Features are L2-normalised first (SimpleShot: Wang et al., arXiv:1911.04623, shows this alone makes a
nearest-neighbour or linear few-shot classifier competitive). The linear probe is scikit-learn's
multinomial logistic regression whose regularisation is chosen by cross-validation on the training
images only (never on the images it is scored on).
"""

from __future__ import annotations

import warnings

import numpy as np

C_GRID = (0.1, 1.0, 10.0, 100.0)


def _normalize(x: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(x, dtype=np.float64))


def fit_linear(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A logistic-regression probe on L2-normalised ``x`` (N, D); C from ``C_GRID`` by stratified k-fold
    on ``x`` itself (k = min(5, smallest class)), C = 1 when a class has a single image."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    xn = _normalize(x)
    smallest = min(int(c) for c in np.unique(y, return_counts=True)[1]) if len(y) else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8's notices of changing defaults
        if smallest >= 2:
            cv = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)
            return _Probe(LogisticRegressionCV(Cs=list(C_GRID), cv=cv, scoring="neg_log_loss", max_iter=2000)
                          .fit(xn, y))
        return _Probe(LogisticRegression(C=1.0, max_iter=2000).fit(xn, y))


class _Probe:
    """A fitted classifier that normalises its input the way it was trained."""

    def __init__(self, clf) -> None:
        self.clf = clf

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict(_normalize(x))


def cv_probes(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, k: int = 5) -> dict[str, float]:
    """Cross-validated top-1 of a linear probe and of a ``k``-nearest-neighbour probe (cosine) over
    ``folds`` stratified folds of (``x`` (N, D), ``y`` (N,)). Each fold's probe is fit on the other folds
    only. The linear probe here has a fixed C = 1 (no inner search: it ranks candidates, and the inner
    search costs 20 fits per fold). Returns ``{"linear_top1", "knn_top1", "folds"}``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.unique(y, return_counts=True)[1]
    n_splits = int(min(folds, counts.min()))
    if n_splits < 2:
        raise ValueError("a cross-validated probe needs at least 2 images in every class")
    xn = _normalize(x)
    lin, knn = [], []
    for tr, te in StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(xn, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(xn[tr], y[tr])
        lin.append(float(np.mean(clf.predict(xn[te]) == y[te])))
        nn = KNeighborsClassifier(n_neighbors=min(k, len(tr)), metric="cosine").fit(xn[tr], y[tr])
        knn.append(float(np.mean(nn.predict(xn[te]) == y[te])))
    return {"linear_top1": float(np.mean(lin)), "knn_top1": float(np.mean(knn)), "folds": n_splits}
