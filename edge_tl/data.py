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


def _is_hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def find_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below ``folder``: recursive, sorted, hidden files and folders skipped.

    An image file is one whose suffix belongs to a format Pillow reads (``IMAGE_SUFFIXES``); the
    others are returned so that every scan can count and name what it left out.
    """
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if _is_hidden(p, folder) or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


def name_left_out(paths: list[str], what: str = "file(s) that are not images Pillow reads") -> str:
    """"3 file(s) ...: a.txt, b.csv, c.db" (at most ten names) for one warning line."""
    shown = ", ".join(paths[:10]) + (" …" if len(paths) > 10 else "")
    return f"{len(paths)} {what}: {shown}"


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (see ``find_files``); the other files are named in a warning."""
    images, others = find_files(folder)
    if others:
        log.warning("left out %s under %s", name_left_out([str(p.relative_to(folder)) for p in others]), folder)
    return images


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
    files: list[tuple[Path, int]] = []
    left_out: list[dict[str, str]] = []
    for i, c in enumerate(classes):
        images, others = find_files(root / c)
        files += [(p, i) for p in images]
        left_out += [{"path": str(p.relative_to(root)), "reason": f"not an image file Pillow reads "
                      f"(suffix {p.suffix.lower() or 'none'!r})"} for p in others]
    # Files beside the class folders, and (with a fixed class list) folders of other classes, hold no
    # sample either: say so rather than drop them without a word.
    stray = [p for p in root.iterdir() if not p.name.startswith(".") and p.is_file()]
    left_out += [{"path": p.name, "reason": "not in a class folder"} for p in sorted(stray)]
    other_classes = [d for d in found if d not in classes]
    if other_classes:
        log.warning("left out %s under %s", name_left_out(other_classes, "folder(s) that are not classes of "
                                                                          "the run"), root)
    if left_out:
        log.warning("left out %s", name_left_out([s["path"] for s in left_out], "file(s) that are not images "
                                                 "Pillow reads, or not in a class folder"))
    if not files:
        named = f"; left out {name_left_out([s['path'] for s in left_out])}" if left_out else ""
        raise DataError(f"no images found under {root} (no file with the suffix of a format Pillow reads){named}")
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
    return ImageFolder(root, list(classes), samples, left_out + skipped)


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class, reproducibly from ``seed``; every class with ≥ 2 images gets ≥ 1 of each.

    A class with a single image has nothing to hold out: it is trained on but never validated, so its
    recall is unknown. That is said here, at fine-tune time, naming the class (the first part of its
    samples' paths, which is the class folder for a scanned ImageFolder).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    unvalidated = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: s.path)
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        n_val = min(max(n_val, 1), len(group) - 1) if len(group) >= 2 else 0
        if n_val == 0:
            parts = Path(group[0].path).parts
            unvalidated.append(f"{parts[0] if len(parts) > 1 else f'#{label}'} ({len(group)} image)")
        val += group[:n_val]
        train += group[n_val:]
    if unvalidated:
        log.warning("class(es) %s too small to validate: no image held out, so their recall is not evaluated "
                    "(reported as 'not evaluated'; the bundle has no golden image of them); add images",
                    ", ".join(unvalidated))
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
