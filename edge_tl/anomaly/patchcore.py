"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022): a memory
bank of patch features of good images (greedy coreset, :mod:`.coreset`); a patch's distance is its
Euclidean distance to the nearest bank entry, written as matrix products ``‖a‖² − 2a·b + ‖b‖²``
(``cdist`` does not export), min over the bank; the image score is the max over patches. The paper's
nearest-neighbour reweighting of the score is left out.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from .methods import AnomalyMethod, FitOptions, Fitted, register

# Patches kept per fit before the coreset (a random subset when there are more): bounds memory and the
# coreset's time on a CPU (k-center is k passes over the pool).
MAX_POOL = 200_000


def fit_bank(feats: list[np.ndarray], options: FitOptions) -> Fitted:
    """The memory bank: a greedy coreset of the good images' patches (``options.bank_size`` entries, or
    ``options.coreset`` of all patches)."""
    from .coreset import greedy_coreset

    dim = feats[0].shape[1]
    total = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in feats)
    patches = np.concatenate([f.transpose(0, 2, 3, 1).reshape(-1, dim) for f in feats])
    rng = np.random.default_rng(options.seed)
    if len(patches) > MAX_POOL:
        patches = patches[np.sort(rng.choice(len(patches), MAX_POOL, replace=False))]
    k = options.bank_size if options.bank_size is not None else max(1, math.ceil(options.coreset * total))
    k = min(k, len(patches))
    started = time.perf_counter()
    idx = greedy_coreset(patches, k, seed=options.seed)
    bank = np.ascontiguousarray(patches[idx], dtype=np.float32)
    return Fitted({"bank": bank, "bank_sq": (bank * bank).sum(1)}, size=len(bank), stored=("bank",), info={
        "patches": int(total), "pool": len(patches), "entries": int(k), "fraction": k / total,
        "coreset_seconds": time.perf_counter() - started,
        "selection": "greedy k-center on a 64-d random projection (Sener & Savarese 2018)"})


@functools.cache
def head_class() -> type:
    """The torch module class (defined on first use: ``import edge_tl`` must not import torch)."""
    import torch
    import torch.nn as nn

    class PatchCoreHead(nn.Module):
        """Features -> raw distance map (N, 1, h, w): each patch's Euclidean distance to its nearest bank entry."""

        def __init__(self, bank: int, dim: int) -> None:
            super().__init__()
            self.register_buffer("bank", torch.zeros(bank, dim))
            self.register_buffer("bank_sq", torch.zeros(bank))

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            n, _, h, w = f.shape
            a = f.flatten(2).transpose(1, 2)  # (N, P, D)
            d2 = (a * a).sum(-1, keepdim=True) - 2.0 * torch.matmul(a, self.bank.t()) + self.bank_sq
            nearest = d2.min(-1).values.clamp_min(0.0)
            return nearest.sqrt().reshape(n, 1, h, w)

    return PatchCoreHead


PATCHCORE = register(AnomalyMethod(
    name="patchcore", source="Roth et al., CVPR 2022", summary="a bank of good patches, position-free",
    fit=lambda feats, assign, options: fit_bank(feats, options),
    head=lambda bank, dim, clusters: head_class()(bank, dim), default_dim=lambda channels: channels,
    why_no_modes="PatchCore's bank already holds every mode"))
