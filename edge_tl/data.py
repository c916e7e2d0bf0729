"""ImageFolder scanning with robust decoding, the stratified split, and eval.npz.

A folder per class, images inside. Every file is decoded once up front: a corrupt, truncated or
empty file is skipped with one warning naming it and recorded, so a training run never dies mid-epoch
on a bad image, and "a class has no usable image" is known before anything is written.
"""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .preprocess import IMAGE_SUFFIXES, load_image

log = logging.getLogger("edge_tl")


@dataclass
class Sample:
    """One usable image: its path relative to the data root, and its class index."""

    path: str
    label: int


@dataclass
class ImageFolder:
    """A scanned image folder: class names, usable samples and the files that were skipped."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def abspath(self, sample: Sample) -> Path:
        return self.root / sample.path


def _check(path: Path) -> str | None:
    """None when the file decodes fully, else the reason it does not."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        load_image(path)
    except Exception as exc:  # noqa: BLE001 - any decode failure means "skip this file"
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, hidden files ignored)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_image_folder(root: str | os.PathLike[str], classes: list[str] | None = None,
                      workers: int = 4) -> ImageFolder:
    """Scan ``root`` (one sub-folder per class), decoding every image to find the bad ones.

    ``classes`` fixes the class list and order (used for ``bench --data`` on a new folder: it must
    hold the same classes). Raises DataError for an unusable folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataError(f"{root} needs at least two class folders, found {len(classes)}")
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"{root} lacks class folder(s) {', '.join(missing)} (expected {classes})")
    files = [(p, i) for i, c in enumerate(classes) for p in list_images(root / c)]
    if not files:
        raise DataError(f"no images found under {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(_check, [p for p, _ in files]))
    samples, skipped = [], []
    for (path, label), reason in zip(files, reasons, strict=True):
        rel = str(path.relative_to(root))
        if reason is None:
            samples.append(Sample(rel, label))
        else:
            skipped.append({"path": rel, "reason": reason})
    if skipped:
        names = ", ".join(s["path"] for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        log.warning("skipped %d unreadable image(s): %s", len(skipped), names)
    counts = np.bincount([s.label for s in samples], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"class folder(s) with no usable image: {', '.join(empty)} under {root}")
    return ImageFolder(root, list(classes), samples, skipped)


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class, reproducibly from ``seed``; every class with ≥ 2 images gets ≥ 1 of each."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: s.path)
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        n_val = min(max(n_val, 1), len(group) - 1) if len(group) >= 2 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def split_to_json(folder: ImageFolder, train: list[Sample], val: list[Sample], seed: int,
                  val_fraction: float) -> dict:
    """The content of ``split.json``."""
    return {
        "root": str(folder.root.resolve()),
        "classes": folder.classes,
        "seed": seed,
        "val_fraction": val_fraction,
        "train": [[s.path, s.label] for s in train],
        "val": [[s.path, s.label] for s in val],
        "skipped": folder.skipped,
    }


def split_from_json(split: dict) -> tuple[Path, list[Sample], list[Sample]]:
    """Inverse of split_to_json: (root, train, val)."""
    def conv(rows: list) -> list[Sample]:
        return [Sample(p, int(label)) for p, label in rows]

    return Path(split["root"]), conv(split["train"]), conv(split["val"])


def class_counts(samples: list[Sample], n_classes: int) -> list[int]:
    return np.bincount([s.label for s in samples], minlength=n_classes).astype(int).tolist()
