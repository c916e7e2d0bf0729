"""Pooled features of a frozen backbone (the input of its classification head), cached on disk.

A candidate source is (architecture, weights, preprocessing); its features on a list of images are
computed once by ``features.PrefixEngine`` (ONNX Runtime on a CPU) and stored as ``<key>.npz`` in a
cache folder, where ``key`` hashes everything that changes them: the architecture, the weights' sha256,
the preprocessing contract and the image list. A later ``select``/``curve`` over the same images reuses
them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Sample
from ..manifest import atomic_path
from ..preprocess import Preprocess

log = logging.getLogger("edge_tl")


def cache_key(arch: str, weights_id: str, pre: Preprocess, root: Path, samples: list[Sample]) -> str:
    """A 16-hex-digit key for the features of ``samples`` under this candidate."""
    h = hashlib.sha256(json.dumps({"arch": arch, "weights": weights_id, "pre": pre.to_dict(),
                                   "root": str(Path(root).resolve())}, sort_keys=True).encode())
    for s in samples:
        h.update(f"{s.path}\0{s.label}\n".encode())
    return h.hexdigest()[:16]


def pooled_features(arch: str, state: dict[str, Any] | None, pre: Preprocess, root: Path, samples: list[Sample],
                    *, weights_id: str, seed: int = 0, cache_dir: Path | None = None, engine: str = "auto",
                    device: str = "cpu", quiet: bool = True, desc: str = "features",
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features (N, D) float32, labels (N,), files that failed) for ``samples`` in order, unreadable
    files dropped. ``state``: the backbone's state_dict (None: random initialisation from ``seed``, the
    scratch candidate); ``weights_id`` names it in the cache key (a sha256, or ``scratch:<seed>``).
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(arch, weights_id, pre, root, samples)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return z["features"], z["labels"], [str(b) for b in z["bad"]]
    import torch.nn as nn

    from ..features import PrefixEngine
    from ..models import build_model, get_arch, set_submodule
    from ..training import run_over

    model = build_model(arch, 2, state, seed=seed)
    set_submodule(model, get_arch(arch).head, nn.Identity())
    eng = PrefixEngine(model.eval(), (3, pre.crop, pre.crop), device, engine)
    out, labels, bad = run_over(eng, root, samples, pre, quiet=quiet, desc=desc)
    feats = out.numpy().astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=feats, labels=labels, bad=np.asarray(bad, dtype=str))
    return feats, labels, bad
