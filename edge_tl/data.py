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
from typing import Any

import numpy as np

from .errors import DataError
from .manifest import sha256_file
from .preprocess import IMAGE_SUFFIXES, load_image

log = logging.getLogger("edge_tl")


@dataclass
class Sample:
    """One usable image: its path relative to the data root, and its class index."""

    path: str
    label: int
    # sha256 of the file's bytes, from the scan (None for samples read back from split.json): identical
    # files are kept in one split (``stratified_split``). Not part of equality: a path names the sample.
    sha256: str | None = field(default=None, compare=False, repr=False)


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


def _check_and_hash(path: Path) -> tuple[str | None, str | None]:
    """(None or why the file is unusable, see ``_check``; the sha256 of a usable file's bytes)."""
    reason = _check(path)
    if reason is not None:
        return reason, None
    try:
        return None, sha256_file(path)
    except OSError as exc:  # removed or unreadable since it decoded
        return f"{type(exc).__name__}: {exc}".strip(), None


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


def class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder: ``root``'s sub-folders, sorted, hidden ones skipped."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def readable(paths: list[Path], root: Path | None = None, workers: int = 4
             ) -> tuple[list[Path], list[dict[str, str]]]:
    """(the images of ``paths`` that decode fully, [{path, reason}] of those that do not), decoded in
    ``workers`` threads; the skipped ones are named in one warning (relative to ``root`` when given)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(_check, paths))
    ok = [p for p, r in zip(paths, reasons, strict=True) if r is None]
    bad = [{"path": str(p.relative_to(root) if root is not None else p), "reason": r}
           for p, r in zip(paths, reasons, strict=True) if r is not None]
    if bad:
        log.warning("skipped %s", name_left_out([b["path"] for b in bad], "unreadable image(s)"))
    return ok, bad


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
    found = class_folders(root)
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
        checked = list(pool.map(_check_and_hash, [p for p, _ in files]))
    samples, skipped = [], []
    for (path, label), (reason, digest) in zip(files, checked, strict=True):
        rel = str(path.relative_to(root))
        if reason is None:
            samples.append(Sample(rel, label, digest))
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


def duplicate_groups(samples: list[Sample]) -> tuple[list[list[Sample]], list[list[Sample]]]:
    """Files with identical bytes (equal ``sha256``), as (groups under one label, groups under two or more
    labels); each group sorted by path, the groups by their first path. Samples without a sha256 are
    never grouped."""
    by_digest: dict[str, list[Sample]] = {}
    for s in samples:
        if s.sha256 is not None:
            by_digest.setdefault(s.sha256, []).append(s)
    groups = sorted((sorted(g, key=lambda s: s.path) for g in by_digest.values() if len(g) > 1),
                    key=lambda g: g[0].path)
    same = [g for g in groups if len({s.label for s in g}) == 1]
    conflicting = [g for g in groups if len({s.label for s in g}) > 1]
    return same, conflicting


def duplicate_summary(samples: list[Sample]) -> dict[str, Any]:
    """What split.json and the fine-tune manifest record about identical files among ``samples``:
    ``files``/``groups`` kept together in one split, and the ``conflicting_labels`` groups (their paths)
    that ``stratified_split`` leaves out of both splits."""
    same, conflicting = duplicate_groups(samples)
    return {"files": sum(map(len, same)), "groups": len(same),
            "conflicting_labels": [[s.path for s in g] for g in conflicting],
            "left_out": sum(map(len, conflicting))}


def _class_name(sample: Sample) -> str:
    """The class folder of a scanned sample (the first part of its path), else ``#label``."""
    parts = Path(sample.path).parts
    return parts[0] if len(parts) > 1 else f"#{sample.label}"


def _fill_val(units: list[list[Sample]], n_val: int) -> tuple[list[Sample], list[Sample]]:
    """(val, train) from shuffled ``units`` (identical files travel together): units in order while
    they fit in ``n_val`` images; if none fitted, the smallest unit that leaves training an image. With
    no duplicates (every unit one image) this is the first ``n_val`` images, as it always was."""
    total = sum(map(len, units))
    taken: list[int] = []
    n = 0
    for i, unit in enumerate(units):
        if n + len(unit) <= n_val:
            taken.append(i)
            n += len(unit)
    if not taken and n_val > 0:
        fits = [i for i, u in enumerate(units) if total - len(u) >= 1]
        taken = [min(fits, key=lambda i: (len(units[i]), i))] if fits else []
    chosen = set(taken)
    val = [s for i in taken for s in units[i]]
    train = [s for i, u in enumerate(units) if i not in chosen for s in u]
    return val, train


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class, reproducibly from ``seed``; every class with ≥ 2 images gets ≥ 1 of each.

    Identical files (same sha256, from the scan) always land in the same split: a byte copy of a
    training image in validation measures memory, not generalisation, and the QC policy would be tuned
    on it. They are counted in one warning. Identical files under two or more labels cannot both be
    right: they are left out of both splits and named in a warning (fix the labels; split.json records
    them, ``duplicate_summary``).

    A class with a single image has nothing to hold out: it is trained on but never validated, so its
    recall is unknown. That is said here, at fine-tune time, naming the class (the first part of its
    samples' paths, which is the class folder for a scanned ImageFolder).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    same, conflicting = duplicate_groups(samples)
    if conflicting:
        named = "; ".join(" = ".join(s.path for s in g) for g in conflicting[:5]) + (" …" if len(conflicting) > 5
                                                                                     else "")
        log.warning("%d identical file(s) in %d group(s) carry two or more labels and are left out of training "
                    "and validation (fix their labels): %s", sum(map(len, conflicting)), len(conflicting), named)
    if same:
        log.warning("%d duplicate file(s) in %d group(s) kept together in one split (identical bytes)",
                    sum(map(len, same)), len(same))
    left_out = {s.path for g in conflicting for s in g}
    unit_of = {s.path: g for g in same for s in g}
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    unvalidated, emptied = [], []
    for label in sorted(by_label):
        group = sorted((s for s in by_label[label] if s.path not in left_out), key=lambda s: s.path)
        if not group:
            emptied.append(_class_name(by_label[label][0]))
            continue
        units: list[list[Sample]] = []
        for s in group:  # a duplicate group is one unit, placed where its first path sorts
            unit = unit_of.get(s.path, [s])
            if unit[0] is s:
                units.append(unit)
        rng.shuffle(units)
        n_val = round(len(group) * val_fraction)
        n_val = min(max(n_val, 1), len(group) - 1) if len(units) >= 2 else 0
        if n_val == 0:
            unvalidated.append(f"{_class_name(group[0])} ({len(group)} image)")
        v, t = _fill_val(units, n_val)
        val += v
        train += t
    if emptied:
        raise DataError(f"class(es) {', '.join(emptied)} have no image left: every one is identical to an image of "
                        "another class (fix the labels)")
    if unvalidated:
        log.warning("class(es) %s too small to validate: no image held out, so their recall is not evaluated "
                    "(reported as 'not evaluated'; the bundle has no golden image of them); add images",
                    ", ".join(unvalidated))
    return train, val


def split_to_json(folder: ImageFolder, train: list[Sample], val: list[Sample], seed: int,
                  val_fraction: float) -> dict:
    """The content of ``split.json``: the split, the sha256 of every usable image (by path; a moved data
    folder can be checked against them) and what ``duplicate_summary`` found."""
    return {
        "root": str(folder.root.resolve()),
        "classes": folder.classes,
        "seed": seed,
        "val_fraction": val_fraction,
        "train": [[s.path, s.label] for s in train],
        "val": [[s.path, s.label] for s in val],
        "skipped": folder.skipped,
        "sha256": {s.path: s.sha256 for s in folder.samples if s.sha256 is not None},
        "duplicates": duplicate_summary(folder.samples),
    }


def data_fingerprint(folder: str | os.PathLike[str]) -> str:
    """sha256 over the relative path and the bytes' sha256 of every image file below ``folder``
    (``find_files``): equal exactly when the same images sit at the same paths. ``edge-tl run`` skips a
    fine-tune whose data has not changed by it."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for p in find_files(folder)[0]:
        h.update(f"{p.relative_to(folder).as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def split_from_json(split: dict) -> tuple[Path, list[Sample], list[Sample]]:
    """Inverse of split_to_json: (root, train, val)."""
    def conv(rows: list) -> list[Sample]:
        return [Sample(p, int(label)) for p, label in rows]

    return Path(split["root"]), conv(split["train"]), conv(split["val"])


def class_counts(samples: list[Sample], n_classes: int) -> list[int]:
    return np.bincount([s.label for s in samples], minlength=n_classes).astype(int).tolist()


# ---------------------------------------------------------------- a run's split: still there, or re-pointed

# Share of a run's split that may be missing before a stage refuses to start: a few deleted files are
# left out (named, as the scan does), more means the folder moved or was emptied, and going on would
# train on another data set than the one the run describes (or, at 100 %, on nothing).
MAX_MISSING_SHARE = 0.1


@dataclass
class SplitImages:
    """A run's split as a stage will read it: the folder, the samples present there, what is missing,
    and how a re-pointed folder's content was checked (``verified``)."""

    root: Path
    train: list[Sample]
    val: list[Sample]
    missing: list[str]
    verified: dict[str, object]

    def record(self, recorded_root: str) -> dict[str, object]:
        """What a stage's manifest records about the images it read."""
        return {"root": str(self.root), "split_root": recorded_root, "n_train": len(self.train),
                "n_val": len(self.val), "missing": self.missing, "verified": self.verified}


def split_hashes(split: dict) -> dict[str, str]:
    """Per-image sha256 (relative path -> hex digest) that ``split.json`` records (``sha256``); empty for a
    split.json written before it recorded them."""
    return {str(k): str(v) for k, v in (split.get("sha256") or {}).items()}


def locate_split(split: dict, data_dir: str | os.PathLike[str] | None = None, *,
                 origin: str = "split.json") -> SplitImages:
    """The run's split (``split.json``'s content) under its recorded folder, or under ``data_dir`` when the
    images were moved there (``--data``; the same relative paths), checked before any work starts.

    Raises DataError (one line: the folder expected and how to re-point) when more than
    ``MAX_MISSING_SHARE`` of the images, every training or every validation image is missing; fewer
    missing files are left out with one warning and listed in ``missing``. Under ``data_dir`` every
    present image must have the sha256 split.json records for it (``split_hashes``), or DataError names
    the files that differ; an older split.json without hashes gets a names-only check and a warning.
    ``origin`` names split.json in messages.
    """
    root, train, val = split_from_json(split)
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"--data folder not found: {root}")
    everything = train + val
    missing = [s.path for s in everything if not (root / s.path).is_file()]
    if everything and len(missing) > MAX_MISSING_SHARE * len(everything):
        first = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        if data_dir is not None:
            raise DataError(f"--data {root} lacks {len(missing)} of the {len(everything)} images listed in "
                            f"{origin} (first: {first}); point --data at the folder that holds the class "
                            f"folders {', '.join(split.get('classes', []))}")
        raise DataError(f"{len(missing)} of the {len(everything)} images of the run's split are missing under "
                        f"{root} (first: {first}): moved or deleted? Put them back, or re-point the run with "
                        "--data NEW_FOLDER (checked against the images recorded in "
                        f"{origin})")
    gone = set(missing)
    train = [s for s in train if s.path not in gone]
    val = [s for s in val if s.path not in gone]
    for name, left in (("training", train), ("validation", val)):
        if not left:
            raise DataError(f"none of the run's {name} images are left under {root}; put them back or re-point "
                            f"the run with --data NEW_FOLDER")
    if missing:
        log.warning("left out %s under %s", name_left_out(missing, "image(s) of the run's split that are gone"),
                    root)
    verified: dict[str, object] = {"against": None, "n": 0}
    if data_dir is not None:
        verified = _verify_moved(root, train + val, split_hashes(split))
    return SplitImages(root, train, val, missing, verified)


def _verify_moved(root: Path, samples: list[Sample], digests: dict[str, str]) -> dict[str, object]:
    """Check that ``root`` holds the run's images with the very bytes recorded (sha256) where a digest is
    known; DataError names the first files that differ."""
    return verify_hashes(root, [s.path for s in samples], digests)


def verify_hashes(root: Path, paths: list[str], digests: dict[str, str], *, moved: bool = True,
                  origin: str = "split.json") -> dict[str, object]:
    """Check that the images ``paths`` (relative to ``root``) have the bytes ``digests`` records for them
    (sha256, from ``split.json``: :func:`split_hashes`); a path without a digest is not checked.

    ``moved``: ``root`` is a ``--data`` folder the run's images were moved to (the message says so, and a
    split.json without digests is a warning); else ``root`` is the run's own folder (an image edited or
    replaced since the fine-tune). DataError (one line) names the first files that differ. Returns how
    the images were checked: ``{"against": "sha256" | None | "file names only ...", "n"}``."""
    checked = [p for p in paths if p in digests]
    if not checked:
        if not moved:
            return {"against": None, "n": 0}
        log.warning("--data %s: this run's split.json records no sha256 of its images (written by an older "
                    "version), so only their names were checked, not their content", root)
        return {"against": "file names only (split.json records no sha256)", "n": 0}
    from .manifest import sha256_file

    differ = [p for p in checked if sha256_file(root / p) != digests[p]]
    if differ and moved:
        raise DataError(f"--data {root}: {len(differ)} of {len(checked)} image(s) differ from the ones the run "
                        f"was trained on (sha256; first: {', '.join(differ[:3])}); point --data at the run's "
                        "own images")
    if differ:
        raise DataError(f"{len(differ)} of {len(checked)} image(s) under {root} changed since the run was "
                        f"fine-tuned (sha256 recorded in {origin}; first: {', '.join(differ[:3])}); put the "
                        "original images back, or fine-tune again")
    return {"against": "sha256", "n": len(checked)}
