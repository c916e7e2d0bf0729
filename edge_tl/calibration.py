"""The INT8 calibration set: which images the quantiser sees, chosen so that the choice can be audited.

Two recipes (``calibration/README.md``):

* **training split** (default): images from ``split.json``'s ``train`` list only, class-balanced
  (round-robin over the classes), in a seeded order, ``calibration_size`` of them (300 by default);
* **a folder** (``--calibration DIR``): unlabelled images from the production camera, found
  recursively, capped to ``calibration_size`` in a seeded order. A plain-text file with one image path
  per line works too.

In both recipes an image whose bytes equal a validation image is left out: the validation split is
what the accuracy gates are measured on, so calibrating on it would flatter the INT8 model. Every
image used is recorded (path + sha256) in the target's ``calibration.json``.

The *selection set* (``build_selection_set``) is a third, labelled set: the images the INT8 accuracy
fallback chooses its float layers on. It is drawn from the training split too, class-balanced, and
is disjoint by sha256 from both the validation images (which then judge the chosen graph, held out)
and the calibration images (whose ranges the quantiser fitted, so their errors are the smallest).
Only when the training split is too small to spare enough images does it fall back to the
calibration images, and it says so.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Sample, list_images
from .errors import DataError
from .manifest import read_json, sha256_file, write_json
from .preprocess import IMAGE_SUFFIXES, Preprocess, load_image
from .progress import progress
from .rundir import RunDir

log = logging.getLogger("edge_tl")

DEFAULT_SEED = 0
SOURCE_TRAIN = "train-split"
SOURCE_FOLDER = "folder"
SOURCE_LIST = "list"


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs and the record of where each one came from."""

    inputs: np.ndarray  # (N, 3, H, W) float32, the run's preprocessing
    images: list[dict[str, Any]]  # {"path", "sha256", "class"} per row of ``inputs``
    source: str  # SOURCE_TRAIN | SOURCE_FOLDER | SOURCE_LIST
    root: str
    requested: int
    seed: int
    classes: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    excluded_validation: list[str] = field(default_factory=list)

    @property
    def per_class(self) -> dict[str, int] | None:
        """Images per class (None for unlabelled folders)."""
        if self.classes is None:
            return None
        counts = dict.fromkeys(self.classes, 0)
        for im in self.images:
            counts[im["class"]] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        """What the target manifest records (the per-image list is in calibration.json)."""
        return {"source": self.source, "root": self.root, "n": len(self.images), "requested": self.requested,
                "seed": self.seed, "per_class": self.per_class, "skipped": len(self.skipped),
                "excluded_as_validation": len(self.excluded_validation)}

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """The content of ``calibration.json``."""
        return {**self.summary(), **extra, "images": self.images, "skipped_files": self.skipped,
                "excluded_as_validation_files": self.excluded_validation}


def balanced_order(samples: list[Sample], seed: int = DEFAULT_SEED) -> list[Sample]:
    """All ``samples`` in a class-balanced, seeded order: one per class in turn, each class shuffled.

    Taking the first N of this order gives every class N / n_classes images (a class with fewer
    images gives all it has, the others fill in). The order depends only on the paths and the seed.
    """
    rng = random.Random(seed)
    queues: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.label, s.path)):
        queues.setdefault(s.label, []).append(s)
    for label in sorted(queues):
        rng.shuffle(queues[label])
    order: list[Sample] = []
    depth = max((len(q) for q in queues.values()), default=0)
    for i in range(depth):
        order.extend(queues[label][i] for label in sorted(queues) if i < len(queues[label]))
    return order


def _validation_hashes(run: RunDir) -> tuple[set[str], set[Path]]:
    """sha256 and resolved paths of the validation images (what calibration must never use)."""
    root, _train, val = run.split()
    hashes, paths = set(), set()
    for s in val:
        p = root / s.path
        paths.add(p.resolve())
        if p.is_file():
            hashes.add(sha256_file(p))
    return hashes, paths


def _user_candidates(source: Path) -> tuple[Path, list[Path], str]:
    """(root, image files, kind) for ``--calibration``: a folder (recursive) or a list file."""
    if not source.exists():
        raise DataError(f"calibration folder not found: {source}")
    if source.is_dir():
        files = list_images(source)
        if not files:
            raise DataError(f"no images under calibration folder {source} (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)})")
        return source, files, SOURCE_FOLDER
    # A text file listing images, one per line (relative paths are relative to the file).
    lines = [ln.strip() for ln in source.read_text(errors="replace").splitlines()]
    files = [(source.parent / ln) if not Path(ln).is_absolute() else Path(ln)
             for ln in lines if ln and not ln.startswith("#")]
    if not files:
        raise DataError(f"calibration list {source} names no images")
    return source.parent, files, SOURCE_LIST


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def build_calibration_set(run: RunDir, pre: Preprocess, classes: list[str], size: int,
                          user_source: str | Path | None = None, seed: int = DEFAULT_SEED,
                          quiet: bool = True) -> CalibrationSet:
    """Choose, decode and preprocess the calibration images for a run.

    ``user_source`` None: the training split (class-balanced). Otherwise a folder of unlabelled images
    (recursive) or a text file listing them. Undecodable files are skipped with a warning; images
    identical to a validation image are left out with a warning. Raises DataError when nothing usable
    is left.
    """
    if size < 1:
        raise DataError(f"calibration size must be at least 1, got {size}")
    validation = _validation_hashes(run)
    if user_source is not None:
        return user_calibration(user_source, pre, size, validation, seed, quiet)
    root, train, val = run.split()
    val_rel = {s.path for s in val}
    # A corrupt split listing one image on both sides must not leak validation into calibration.
    train = [s for s in train if s.path not in val_rel]
    candidates = [(root / s.path, s.path, classes[s.label]) for s in balanced_order(train, seed)]
    return calibration_from(candidates, pre, size, validation, SOURCE_TRAIN, str(root), seed, list(classes), quiet)


def user_calibration(user_source: str | Path, pre: Preprocess, size: int,
                     validation: tuple[set[str], set[Path]], seed: int = DEFAULT_SEED,
                     quiet: bool = True) -> CalibrationSet:
    """``--calibration``: up to ``size`` unlabelled images of a folder (recursive) or a list file, in a seeded
    order, none equal to a ``validation`` image (sha256s, resolved paths); :func:`calibration_from`."""
    root, files, source = _user_candidates(Path(user_source))
    files = sorted(files)
    # Seeded rather than alphabetical: the first N names of a camera folder are often one shift.
    random.Random(seed).shuffle(files)
    return calibration_from([(p, _rel(p, root), None) for p in files], pre, size, validation, source, str(root),
                            seed, None, quiet)


def calibration_from(candidates: list[tuple[Path, str, str | None]], pre: Preprocess, size: int,
                     validation: tuple[set[str], set[Path]], source: str, root_str: str, seed: int,
                     classes: list[str] | None, quiet: bool = True) -> CalibrationSet:
    """The first ``size`` usable images of ``candidates`` ((file, path as recorded, class or None), in the order
    to take them), each through ``pre`` (the run's evaluation preprocessing: resize, crop or letterbox,
    normalise). An image whose bytes or path equal a ``validation`` image's is left out, an unreadable one
    skipped (both with a warning). ``classes`` None: unlabelled. DataError when none is usable."""
    val_hashes, val_paths = validation
    xs: list[np.ndarray] = []
    images: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    excluded: list[str] = []
    with progress(quiet) as bar:
        task = bar.add_task("calibration", total=min(size, len(candidates)), info=source)
        for path, rel, cls in candidates:
            if len(images) >= size:
                break
            try:
                digest = sha256_file(path)
                if digest in val_hashes or path.resolve() in val_paths:
                    excluded.append(rel)
                    continue
                xs.append(pre(load_image(path)))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, never fatal
                skipped.append({"path": rel, "reason": f"{type(exc).__name__}: {exc}".strip()})
                continue
            images.append({"path": rel, "sha256": digest, "class": cls})
            bar.advance(task)
    if skipped:
        names = ", ".join(s["path"] for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        log.warning("calibration: skipped %d unreadable image(s): %s", len(skipped), names)
    if excluded:
        log.warning("calibration: left out %d image(s) identical to validation images (the gates are "
                    "measured on those): %s", len(excluded), ", ".join(excluded[:5]))
    if not images:
        raise DataError(f"no usable calibration images in {root_str}")
    if len(images) < size:
        log.warning("calibration: %d image(s) available, %d requested", len(images), size)
    return CalibrationSet(np.stack(xs).astype(np.float32, copy=False), images, source, root_str, size, seed,
                          classes=classes, skipped=skipped, excluded_validation=excluded)


SELECTION_SIZE = 300  # images the INT8 fallback chooses its float layers on
SELECTION_MIN = 20  # fewer disjoint training images than this: choose on the calibration images instead
SELECTION_SEED = DEFAULT_SEED + 1
SELECTION_TRAIN = "train-split, not calibration"
SELECTION_THRESHOLD = "threshold half of the labelled images"
SELECTION_CALIBRATION = "calibration images"
# An anomaly run's threshold images are labelled good and defect, never fitted on, and lie around the
# threshold as new images do; its training images are good images the head was fitted on, which score
# far below the threshold, so INT8 flips few of them. On elpv (PaDiM, OpenVINO) float layers chosen on
# 300 training images reached agreement 1.0 there and 0.983 on the held-out half. All threshold images
# are used, up to this many: a decision gate of 0.99 needs several hundred images to resolve.
SELECTION_THRESHOLD_MAX = 1000


@dataclass
class SelectionSet:
    """Labelled, preprocessed images the INT8 fallback chooses its float layers on (never validation)."""

    inputs: np.ndarray  # (N, 3, H, W) float32, the run's preprocessing
    labels: np.ndarray  # (N,) int64 class indices
    images: list[dict[str, Any]]  # {"path", "sha256", "class"} per row of ``inputs``
    source: str  # SELECTION_TRAIN | SELECTION_THRESHOLD | SELECTION_CALIBRATION
    root: str
    seed: int
    classes: list[str]
    note: str | None = None  # why the calibration images were used, when they were
    # Per class, how many of its images are calibration images (a class calibration left none of): see
    # ``balance_per_class``. Empty when none are.
    from_calibration: dict[str, int] = field(default_factory=dict)
    without_images: list[str] = field(default_factory=list)  # classes with no image here at all

    @property
    def per_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for im in self.images:
            counts[im["class"]] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        out = {"source": self.source, "root": self.root, "n": len(self.images), "seed": self.seed,
               "per_class": self.per_class, "disjoint_from_calibration": self.source != SELECTION_CALIBRATION
               and not self.from_calibration, "disjoint_from_validation": True,
               "per_class_from_calibration": dict(self.from_calibration),
               "classes_without_images": list(self.without_images), "balance": BALANCE_RULE}
        return out | ({"note": self.note} if self.note else {})


BALANCE_RULE = ("class-balanced: each class gets an equal share of the images (size / classes), a class with "
                "fewer than its share gives all it has (the others fill in); a class whose images all went to "
                "calibration gets up to its share of its calibration images (per_class_from_calibration: "
                "judged a little optimistically, but judged), and a class with no image here at all is named "
                "(classes_without_images): no estimate covers it")


def balance_per_class(inputs: np.ndarray, labels: np.ndarray, images: list[dict[str, Any]], classes: list[str],
                      size: int, cset: CalibrationSet,
                      ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], dict[str, int], list[str]]:
    """Give each class that has no image outside calibration up to its share (``size`` / classes) of its
    calibration images, and name the classes left with none.

    Calibration draws class-balanced first, so a small class (fewer training images than two shares)
    can be all calibration images, leaving the selection set none: on an imbalanced line the INT8 verdict
    then never saw the rare defects (issue 26: {Blowhole 11, Break 0, Crack 0, Fray 0, Free 285, Uneven 4}).
    Judging a class on images whose ranges calibration fitted is a little optimistic; not judging it at
    all is worse. Unlabelled calibration images (``--calibration DIR``) cannot top anything up.
    """
    share = max(1, size // max(1, len(classes)))
    have = dict.fromkeys(classes, 0)
    for im in images:
        have[im["class"]] += 1
    taken = {im["sha256"] for im in images}
    extra: dict[str, list[int]] = {}
    if cset.source == SOURCE_TRAIN:
        for row, im in enumerate(cset.images):
            c = im.get("class")
            if c in have and have[c] == 0 and len(extra.get(c, [])) < share and im["sha256"] not in taken:
                extra.setdefault(c, []).append(row)
                taken.add(im["sha256"])
    rows = [r for c in classes for r in extra.get(c, [])]
    if rows:
        index = {c: i for i, c in enumerate(classes)}
        add = cset.inputs[rows]
        inputs = add if not len(images) else np.concatenate([inputs, add])
        labels = np.concatenate([labels, np.asarray([index[cset.images[r]["class"]] for r in rows], np.int64)])
        images = images + [dict(cset.images[r]) | {"from_calibration": True} for r in rows]
        log.warning("INT8 selection set: %s had no image(s) left outside calibration; topped up from their "
                    "calibration images (judged a little optimistically)",
                    ", ".join(f"{c} {len(extra[c])}" for c in classes if c in extra))
    from_cal = {c: len(extra[c]) for c in classes if c in extra}
    counts = dict.fromkeys(classes, 0)
    for im in images:
        counts[im["class"]] += 1
    missing = [c for c in classes if counts[c] == 0]
    if missing:
        log.warning("INT8 selection set: no image of class(es) %s outside validation: the INT8 fallback cannot "
                    "judge them (add training images of them)", ", ".join(missing))
    return inputs, labels, images, from_cal, missing


def _disjoint_images(pool: list[Sample], root: Path, pre: Preprocess, classes: list[str], size: int, seed: int,
                     exclude: tuple[tuple[set[str], set[Path]], set[str], set[str]], what: str,
                     quiet: bool) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Up to ``size`` images of ``pool`` in class-balanced seeded order, preprocessed, skipping validation
    images (by hash, path or split entry), calibration images and duplicates: inputs, labels, records."""
    (val_hashes, val_paths), val_rel, calibration = exclude
    taken = set(calibration)
    xs: list[np.ndarray] = []
    images: list[dict[str, Any]] = []
    labels: list[int] = []
    with progress(quiet) as bar:
        task = bar.add_task("selection set", total=size, info=what)
        for s in balanced_order([s for s in pool if s.path not in val_rel], seed):
            if len(images) >= size:
                break
            path = root / s.path
            try:
                digest = sha256_file(path)
                if digest in val_hashes or digest in taken or path.resolve() in val_paths:
                    continue
                xs.append(pre(load_image(path)))
            except Exception:  # noqa: BLE001 - unreadable now: the selection set just has one image fewer
                continue
            taken.add(digest)  # a duplicate file in the split counts once
            images.append({"path": s.path, "sha256": digest, "class": classes[s.label]})
            labels.append(s.label)
            bar.advance(task)
    inputs = np.stack(xs).astype(np.float32, copy=False) if xs else np.zeros((0,), np.float32)
    return inputs, np.asarray(labels, np.int64), images


def build_selection_set(run: RunDir, pre: Preprocess, classes: list[str], cset: CalibrationSet,
                        size: int = SELECTION_SIZE, seed: int = SELECTION_SEED, minimum: int = SELECTION_MIN,
                        quiet: bool = True) -> SelectionSet:
    """Up to ``size`` training-split images, class-balanced and seeded (``BALANCE_RULE``,
    ``balance_per_class``), whose bytes are neither a validation image nor a calibration image of ``cset``
    (but for a class calibration took whole). An anomaly run (``split.json`` has ``threshold`` images)
    chooses on all its threshold images instead (up to ``SELECTION_THRESHOLD_MAX``),
    and on its training images only when fewer than ``minimum`` threshold images remain.

    Fewer than ``minimum`` such images (a tiny training split, or a calibration size that takes all
    of it): the calibration images themselves, when they are labelled training images, with a
    ``note`` saying so; the fallback then chooses on images whose ranges the quantiser fitted, which
    flatters INT8 a little more. The validation split is never used: it judges the result.
    """
    split = read_json(run.finetune / "split.json")
    root, train, val = run.split()
    exclude = _validation_hashes(run), {s.path for s in val}, {im["sha256"] for im in cset.images}
    threshold = [Sample(p, int(y)) for p, y in split.get("threshold", [])]
    if threshold:
        n = max(size, min(len(threshold), SELECTION_THRESHOLD_MAX))
        xs, labels, images = _disjoint_images(threshold, root, pre, classes, n, seed, exclude, SELECTION_THRESHOLD,
                                              quiet)
        if len(images) >= min(minimum, n):
            xs, labels, images, from_cal, missing = balance_per_class(xs, labels, images, list(classes), n, cset)
            return SelectionSet(xs, labels, images, SELECTION_THRESHOLD, str(root), seed, list(classes),
                                from_calibration=from_cal, without_images=missing)
        log.warning("INT8 selection set: only %d threshold image(s) (fewer than %d): choosing on training images",
                    len(images), minimum)
    xs, labels, images = _disjoint_images(train, root, pre, classes, size, seed, exclude, SELECTION_TRAIN, quiet)
    if len(images) >= min(minimum, size):
        xs, labels, images, from_cal, missing = balance_per_class(xs, labels, images, list(classes), size, cset)
        return SelectionSet(xs, labels, images, SELECTION_TRAIN, str(root), seed, list(classes),
                            from_calibration=from_cal, without_images=missing)
    if cset.source != SOURCE_TRAIN:
        raise DataError(f"only {len(images)} training image(s) are neither validation nor calibration images, "
                        f"and the calibration images ({cset.source}) carry no labels: the INT8 fallback has "
                        f"nothing to choose on (it needs {minimum}; use a larger training split)")
    note = (f"the training split leaves only {len(images)} image(s) outside the validation and calibration "
            f"sets (fewer than {minimum}): float layers are chosen on the {len(cset.images)} calibration "
            "images, whose ranges the quantiser fitted, so the choice is somewhat optimistic; the held-out "
            "check on validation is still independent")
    log.warning("INT8 selection set: %s", note)
    index = {c: i for i, c in enumerate(classes)}
    return SelectionSet(cset.inputs, np.asarray([index[im["class"]] for im in cset.images], np.int64),
                        list(cset.images), SELECTION_CALIBRATION, cset.root, cset.seed, list(classes), note)


def write_calibration_json(path: str | Path, cset: CalibrationSet, **extra: Any) -> None:
    """Write ``calibration.json`` (atomically): summary, method and every image's path and sha256."""
    write_json(path, cset.to_json(**extra))
