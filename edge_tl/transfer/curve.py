"""``edge-tl curve``: top-1 against labelled images per class, so a user knows how many to label.

The split is ``finetune``'s (``stratified_split`` with the same ``--val-fraction`` and ``--seed``): the
validation images are never trained on and are the same for every point. For each shot count ``k`` and
repeat ``r`` a linear probe (``probe.fit_linear``) is fit on ``k`` training images per class drawn with
seed ``seed * 1000 + r`` and scored on the whole validation split. Same seeds, same figures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("edge_tl")


def parse_shots(text: str) -> list[int | None]:
    """``"1,5,10,all"`` -> ``[1, 5, 10, None]`` (None: every training image). ConfigError otherwise."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            out.append(None)
            continue
        try:
            k = int(part)
        except ValueError:
            raise ConfigError(f"--shots takes numbers and 'all' separated by commas, got {part!r}") from None
        if k < 1:
            raise ConfigError(f"--shots must be at least 1, got {k}")
        out.append(k)
    if not out:
        raise ConfigError("--shots is empty")
    return sorted(set(out), key=lambda k: float("inf") if k is None else k)


def draw_shots(labels: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Indices of ``k`` images per class of ``labels`` (every image of a smaller class; all for None)."""
    if k is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(labels == c), min(k, int(np.sum(labels == c))), replace=False)
           for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def learning_curve(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   shots: list[int | None], repeats: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """One row per shot count: ``{"shots": k or "all", "images": training images used (mean),
    "top1_mean", "top1_std", "top1_min", "top1_max", "top1": [per repeat], "seeds": [...]}``.
    Top-1 is on (``val_x``, ``val_y``). "all" is one fit (its draws would all be equal)."""
    from .probe import fit_linear

    if repeats < 1:
        raise ConfigError("--repeats must be at least 1")
    rows = []
    for k in shots:
        seeds = [seed * 1000 + r for r in range(1 if k is None else repeats)]
        accs, used = [], []
        for s in seeds:
            idx = draw_shots(train_y, k, s)
            probe = fit_linear(train_x[idx], train_y[idx], seed=s)
            accs.append(float(np.mean(probe.predict(val_x) == val_y)))
            used.append(len(idx))
        a = np.asarray(accs)
        rows.append({"shots": "all" if k is None else k, "images": float(np.mean(used)),
                     "top1_mean": float(a.mean()), "top1_std": float(a.std()), "top1_min": float(a.min()),
                     "top1_max": float(a.max()), "top1": accs, "seeds": seeds})
        log.info("curve: %s per class -> top-1 %.4f ± %.4f", rows[-1]["shots"], a.mean(), a.std())
    return rows


def run_curve(data_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
              input_size: int | None = None, shots: str = "1,5,10,20,all", repeats: int = 3, seed: int = 0,
              val_fraction: float = 0.2, engine: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Features of ``arch``/``weights`` on ``data_dir`` (cached in ``out/cache``), the curve, and
    ``out/curve.json`` + ``out/curve.html``. Returns the JSON's content."""
    from ..data import scan_image_folder, stratified_split
    from ..manifest import check_writable, write_json
    from ..stages.finetune import weights_preprocessing
    from ..weights import resolve_weights
    from .embed import pooled_features
    from .report import write_curve_html

    wanted = parse_shots(shots)
    out = Path(out)
    check_writable(out)
    folder = scan_image_folder(data_dir)
    train, val = stratified_split(folder.samples, val_fraction, seed)
    state, source = resolve_weights(arch, weights)
    pre = weights_preprocessing(arch, source, input_size)
    wid = source.get("sha256") or f"scratch:{seed}"
    common = {"weights_id": wid, "seed": seed, "cache_dir": out / "cache", "engine": engine, "quiet": quiet}
    xt, yt, bad_t = pooled_features(arch, state, pre, folder.root, train, desc="features (train)", **common)
    xv, yv, bad_v = pooled_features(arch, state, pre, folder.root, val, desc="features (val)", **common)
    rows = learning_curve(xt, yt, xv, yv, wanted, repeats, seed)
    result = {"data": str(folder.root.resolve()), "classes": folder.classes, "arch": arch, "weights": source,
              "preprocessing": pre.to_dict(), "seed": seed, "val_fraction": val_fraction, "repeats": repeats,
              "probe": "logistic regression on L2-normalised pooled features, C by stratified CV on the shots",
              "train_per_class": np.bincount(yt, minlength=len(folder.classes)).tolist(),
              "val_per_class": np.bincount(yv, minlength=len(folder.classes)).tolist(),
              "skipped": folder.skipped + [{"path": b.split(":", 1)[0], "reason": b.split(":", 1)[1].strip()}
                                           for b in bad_t + bad_v],
              "rows": rows}
    write_json(out / "curve.json", result)
    write_curve_html(out / "curve.html", result)
    return result
