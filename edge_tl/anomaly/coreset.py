"""Greedy coreset subsampling of a PatchCore memory bank.

Greedy k-center selection (Sener and Savarese, "Active Learning for Convolutional Neural Networks: A
Core-Set Approach", ICLR 2018), as PatchCore uses it: start from one patch, then repeatedly add the patch
farthest from everything chosen so far, so the bank covers the feature space of the good images with few
entries. Distances are taken after a random Gaussian projection to ``project_dim`` dimensions (PatchCore
§3.2; Johnson-Lindenstrauss), which keeps the selection fast on a CPU. No library does this selection
(scikit-learn has no k-center), hence our own ~30 lines.
"""

from __future__ import annotations

import numpy as np


def greedy_coreset(features: np.ndarray, k: int, seed: int = 0, project_dim: int = 64) -> np.ndarray:
    """Indices (k,) of a greedy k-center coreset of ``features`` (M, D), in selection order.

    ``k`` ≥ M returns every index. The first centre is drawn from ``seed``.
    """
    import torch

    m = len(features)
    if k >= m:
        return np.arange(m)
    if k < 1:
        raise ValueError("a coreset needs at least one entry")
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    if x.shape[1] > project_dim:
        proj = torch.randn(x.shape[1], project_dim, generator=gen) / project_dim ** 0.5
        x = x @ proj
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = int(torch.randint(m, (1,), generator=gen))
    sq = (x * x).sum(1)
    nearest = torch.full((m,), float("inf"))
    with torch.inference_mode():
        for i in range(1, k + 1):
            c = x[chosen[i - 1]]
            d = sq - 2.0 * (x @ c) + c.dot(c)  # squared distance to the newest centre
            torch.minimum(nearest, d, out=nearest)
            if i < k:
                chosen[i] = int(torch.argmax(nearest))
    return chosen
