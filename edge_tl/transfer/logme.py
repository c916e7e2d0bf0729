"""LogME: the evidence of a Bayesian linear model on frozen features, a transferability score.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML
2021 (arXiv:2102.11005), Algorithm 1. For each class ``k`` the one-hot target ``y_k`` is modelled as
``y_k = F w + noise`` with prior ``w ~ N(0, 1/alpha I)`` and noise ``N(0, 1/beta)``; alpha and beta
maximise the marginal likelihood (MacKay's fixed-point updates) and the score is the log evidence per
sample, averaged over classes. Higher is better; it compares feature extractors on the same labels.

Written here (60 lines of numpy) because the authors' reference code is not a maintained package.
"""

from __future__ import annotations

import numpy as np


def _evidence(s2: np.ndarray, uty: np.ndarray, y_norm2: float, n: int, d: int,
              max_iter: int = 100, tol: float = 1e-5) -> tuple[float, float, float]:
    """Maximised log evidence for one target. ``s2``: the nonzero eigenvalues of ``F^T F`` (length r),
    ``uty``: ``U^T y`` in the same basis (``F = U S V^T``), ``y_norm2``: ``||y||^2``.
    Returns (log evidence, alpha, beta)."""
    alpha, beta = 1.0, 1.0
    # ||y||^2 minus the part in F's column space: the residual that no w can remove
    outside = max(y_norm2 - float(uty @ uty), 0.0)
    for _ in range(max_iter):
        t = beta * s2 / (alpha + beta * s2)  # shrinkage of each direction
        gamma = float(t.sum())
        m2 = float(np.sum((beta * np.sqrt(s2) * uty / (alpha + beta * s2)) ** 2))  # ||m||^2
        res2 = float(np.sum(((1.0 - t) * uty) ** 2)) + outside  # ||F m - y||^2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    t = beta * s2 / (alpha + beta * s2)
    m2 = float(np.sum((beta * np.sqrt(s2) * uty / (alpha + beta * s2)) ** 2))
    res2 = float(np.sum(((1.0 - t) * uty) ** 2)) + outside
    # log det(alpha I_d + beta F^T F): d - r eigenvalues of F^T F are zero
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * np.log(alpha)
    ev = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
          - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
    return float(ev), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of ``features`` (N, D) float for integer ``labels`` (N,): the maximised log evidence
    per sample, averaged over the one-hot targets of every class present. Typically between -1 and 3
    for classification; only differences between feature extractors on the same labels mean anything.

    Raises ValueError for fewer than 2 samples or mismatched lengths.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise ValueError(f"LogME needs (N, D) features and N labels with N >= 2, got {f.shape} and {y.shape}")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    u, s2 = u[:, keep], s[keep] ** 2
    scores = []
    for k in np.unique(y):
        yk = (y == k).astype(np.float64)
        ev, _, _ = _evidence(s2, u.T @ yk, float(yk @ yk), n, d)
        scores.append(ev / n)
    return float(np.mean(scores))
