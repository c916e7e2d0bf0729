"""A small synthetic anomaly set: good textures, and the same textures with a pasted scratch or spot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def texture(seed: int, size: int = 96) -> np.ndarray:
    """A good part: fine horizontal grain with noise (float, 0..255)."""
    rng = np.random.default_rng(seed)
    yy = np.mgrid[0:size, 0:size][0]
    period, phase = rng.uniform(5, 6), rng.uniform(0, 2 * np.pi)
    base = np.sin(yy / period * 2 * np.pi + phase) * 40 + 128
    return base + rng.normal(0, 8, base.shape)


def paste_defect(arr: np.ndarray, seed: int) -> tuple[np.ndarray, list[int]]:
    """A dark diagonal scratch or a bright spot at a random place; returns the image and its box
    [x0, y0, x1, y1] in pixels."""
    rng = np.random.default_rng(seed)
    size = arr.shape[0]
    out = arr.copy()
    cx, cy = (int(v) for v in rng.integers(size // 5, size - size // 5, 2))
    r = size // 10
    yy, xx = np.mgrid[0:size, 0:size]
    if seed % 2:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        out[mask] = 250
    else:
        mask = (np.abs((xx - cx) - (yy - cy)) <= 1) & (np.abs(xx - cx) <= 2 * r)
        out[mask] = 5
    ys, xs = np.nonzero(mask)
    return out, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L").convert("RGB").save(path)


def write_anomaly_set(root: Path, n_train: int = 24, n_good_val: int = 10, n_defect: int = 10,
                      size: int = 96) -> Path:
    """``root/train/good`` (good only) and ``root/test/{good,defect}``; the defects' boxes go to
    ``root/boxes.json`` (file name -> [x0, y0, x1, y1] in the image's pixels)."""
    for i in range(n_train):
        save(texture(i, size), root / "train" / "good" / f"g{i:03d}.png")
    for i in range(n_good_val):
        save(texture(1000 + i, size), root / "test" / "good" / f"g{i:03d}.png")
    boxes = {}
    for i in range(n_defect):
        arr, box = paste_defect(texture(2000 + i, size), i)
        save(arr, root / "test" / "defect" / f"d{i:03d}.png")
        boxes[f"d{i:03d}.png"] = box
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def write_two_mode_set(root: Path, n_train: int = 20, n_test: int = 5, size: int = 96) -> Path:
    """Two kinds of good part (the grain horizontal, or turned 90 degrees), ``n_train`` of each in
    ``root/train/good``; ``root/test/{good,defect}`` hold both kinds."""
    for i in range(n_train):
        save(texture(i, size), root / "train" / "good" / f"h{i:03d}.png")
        save(texture(100 + i, size).T, root / "train" / "good" / f"v{i:03d}.png")
    for i in range(n_test):
        save(texture(1000 + i, size), root / "test" / "good" / f"h{i:03d}.png")
        save(texture(1100 + i, size).T, root / "test" / "good" / f"v{i:03d}.png")
        save(paste_defect(texture(2000 + i, size), i)[0], root / "test" / "defect" / f"h{i:03d}.png")
        save(paste_defect(texture(2100 + i, size).T, i)[0], root / "test" / "defect" / f"v{i:03d}.png")
    return root
