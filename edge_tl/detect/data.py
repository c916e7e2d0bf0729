"""Detection data: Pascal VOC XML, COCO JSON and YOLO txt layouts read into one checked list of boxes.

Every layout ends as a :class:`DetectionSet`: per image its path (relative to the data folder), its size,
its boxes ``(N, 4)`` float32 ``x1 y1 x2 y2`` in the original image's pixels (continuous coordinates: a box
over the whole of a 200 px image is ``0 .. 200``) and its labels ``(N,)`` int64 indexing ``classes``.

Every box is checked: finite numbers, a known class, inside the image (an overshoot of up to
``CLIP_TOLERANCE`` of the side, at least 2 px, is clipped and counted in one warning; more is a bad
annotation), a positive size after clipping. A bad annotation is a warning naming the file and the reason
and an entry of ``DetectionSet.issues``; its image is left out whole, because a defect left without its box
would teach the head that the defect is background. An image whose file cannot be decoded is left out the
same way. Nothing usable left: a one-line DataError. An image whose annotation lists no object is kept as
a background image (the YOLO convention for an empty or missing label file).

Layouts (``detect_format`` picks one from the folder):

- ``voc``: one ``.xml`` per image (``<annotation>`` with ``<filename>``, ``<size>`` and ``<object>``s of
  ``<name>`` and ``<bndbox>`` xmin/ymin/xmax/ymax), anywhere below the folder (``Annotations/``,
  ``annotations/`` or beside the images); the image is found by ``<filename>``, else by the file's stem.
  Coordinates are taken as given (no VOC 1-based shift). Classes: every ``<name>`` seen, sorted.
- ``coco``: one or more COCO JSON files (``images``, ``annotations`` with ``bbox`` = x, y, width, height,
  ``categories``) in the folder or its ``annotations/``; image ``file_name``s relative to the JSON's folder,
  its ``images/`` sibling or the data folder. Classes: the categories by id.
- ``yolo``: one ``.txt`` per image (``class cx cy w h`` per line, fractions of the image), under
  ``labels/`` mirroring ``images/`` or beside the image; names from ``classes.txt``, ``obj.names`` or
  ``data.yaml`` (``names:``). An image without a label file is a background image.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import find_files, name_left_out
from ..errors import ConfigError, DataError

log = logging.getLogger("edge_tl")

FORMATS = ("voc", "coco", "yolo")
CLIP_TOLERANCE = 0.02  # share of the image side a box may overshoot and still be clipped (and counted)
MIN_CLIP_PIXELS = 2.0
NAMED_WARNINGS = 10  # bad annotations named one warning each; the rest are counted in one more line
YOLO_NAME_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")


@dataclass
class Annotated:
    """One image and its checked boxes: ``boxes`` (N, 4) float32 x1 y1 x2 y2 in original pixels,
    ``labels`` (N,) int64, ``width`` / ``height`` the decoded image's size in pixels."""

    path: str  # relative to the data folder
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int


@dataclass
class DetectionSet:
    """A read and checked detection folder. ``issues``: [{file, reason}] of every bad annotation and every
    image left out; ``clipped``: boxes clipped to the image by at most the tolerance."""

    root: Path
    format: str
    classes: list[str]
    images: list[Annotated]
    issues: list[dict[str, str]] = field(default_factory=list)
    clipped: int = 0

    def abspath(self, item: Annotated) -> Path:
        return self.root / item.path

    @property
    def n_boxes(self) -> int:
        return sum(len(a.labels) for a in self.images)


@dataclass
class _Raw:
    """An annotation as read: image file, the size it claims (or None), boxes with a class name or id."""

    source: str  # the annotation file, for messages
    image: Path | None
    size: tuple[int, int] | None
    boxes: list[tuple[float, float, float, float, Any]]
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- layout detection


def _coco_files(root: Path) -> list[Path]:
    found = []
    for folder in (root, root / "annotations"):
        if folder.is_dir():
            for p in sorted(folder.glob("*.json")):
                try:
                    with open(p, encoding="utf-8") as f:
                        head = json.load(f)
                except (OSError, ValueError):
                    continue
                if isinstance(head, dict) and "images" in head and "annotations" in head:
                    found.append(p)
    return found


def _is_yolo_line(line: str) -> bool:
    parts = line.split()
    if len(parts) != 5:
        return False
    try:
        int(parts[0])
        [float(v) for v in parts[1:]]
    except ValueError:
        return False
    return True


def _yolo_label_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.txt")):
        if p.name in YOLO_NAME_FILES or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        out.append(p)
    return out


def detect_format(root: str | os.PathLike[str]) -> str:
    """``coco`` when a COCO JSON lies in ``root`` or ``root/annotations``, else ``voc`` when an ``.xml``
    annotation lies below it, else ``yolo`` when a ``.txt`` label file does. DataError when none does."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if _coco_files(root):
        return "coco"
    if any(True for _ in root.rglob("*.xml")):
        return "voc"
    for p in _yolo_label_files(root):
        lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
        if lines and _is_yolo_line(lines[0]):
            return "yolo"
    raise DataError(f"{root} holds no detection annotations: no COCO JSON, no Pascal VOC .xml and no YOLO .txt "
                    "label file (name the layout with --format voc|coco|yolo)")


# ---------------------------------------------------------------- readers


def _image_index(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Image files below ``root`` by file name and by stem (several may share one)."""
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in find_files(root)[0]:
        by_name.setdefault(p.name, []).append(p)
        by_stem.setdefault(p.stem, []).append(p)
    return by_name, by_stem


def _nearest(candidates: list[Path], near: Path) -> Path:
    """Of images sharing a name, the one whose folder shares the longest path prefix with ``near``."""
    def shared(p: Path) -> int:
        return len(os.path.commonpath([str(p.parent), str(near.parent)]))
    return max(candidates, key=shared)


def _read_voc(root: Path) -> tuple[list[_Raw], list[str]]:
    by_name, by_stem = _image_index(root)
    raws, names = [], set()
    for xml in sorted(root.rglob("*.xml")):
        rel = str(xml.relative_to(root))
        if any(part.startswith(".") for part in xml.relative_to(root).parts):
            continue
        try:
            tree = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            raws.append(_Raw(rel, None, None, [], [f"not readable XML ({exc})"]))
            continue
        if tree.tag != "annotation":
            continue  # some other XML file
        filename = (tree.findtext("filename") or "").strip()
        cands = by_name.get(Path(filename).name) if filename else None
        cands = cands or by_stem.get(xml.stem)
        image = _nearest(cands, xml) if cands else None
        size = None
        w, h = tree.findtext("size/width"), tree.findtext("size/height")
        try:
            if w and h and int(float(w)) > 0 and int(float(h)) > 0:
                size = (int(float(w)), int(float(h)))
        except ValueError:
            pass
        raw = _Raw(rel, image, size, [])
        if image is None:
            raw.problems.append(f"image {filename or xml.stem} not found")
        for i, obj in enumerate(tree.findall("object")):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            try:
                coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
            except (TypeError, ValueError, AttributeError):
                raw.problems.append(f"object {i + 1} ({name or 'no name'}): bndbox missing or not numbers")
                continue
            if not name:
                raw.problems.append(f"object {i + 1}: no <name>")
                continue
            names.add(name)
            raw.boxes.append((*coords, name))  # type: ignore[arg-type]
        raws.append(raw)
    return raws, sorted(names)


def _read_coco(root: Path) -> tuple[list[_Raw], list[str]]:
    files = _coco_files(root)
    if not files:
        raise DataError(f"{root} holds no COCO JSON (a file with 'images' and 'annotations', in the folder or in "
                        "annotations/)")
    cat_names: dict[str, None] = {}
    raws: list[_Raw] = []
    for jf in files:
        data = json.loads(jf.read_text(encoding="utf-8"))
        cats = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
        for cid in sorted(cats):
            cat_names.setdefault(cats[cid], None)
        by_id: dict[Any, _Raw] = {}
        bases = [jf.parent, jf.parent / "images", jf.parent.parent / "images", root, root / "images"]
        for im in data["images"]:
            fname = str(im.get("file_name", ""))
            image = next((b / fname for b in bases if fname and (b / fname).is_file()), None)
            size = (int(im["width"]), int(im["height"])) if im.get("width") and im.get("height") else None
            raw = _Raw(f"{jf.relative_to(root)}#image {im.get('id')} ({fname})", image, size, [])
            if image is None:
                raw.problems.append(f"image {fname} not found")
            by_id[im.get("id")] = raw
            raws.append(raw)
        for a in data["annotations"]:
            raw = by_id.get(a.get("image_id"))
            if raw is None:
                log.warning("%s: annotation %s names image id %s, which the file does not list; left out",
                            jf.name, a.get("id"), a.get("image_id"))
                continue
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                raw.problems.append(f"annotation {a.get('id')}: bbox missing or not 4 numbers")
                continue
            cid = a.get("category_id")
            raw.boxes.append((x, y, x + w, y + h, cats.get(cid, f"category id {cid}")))
    return raws, list(cat_names)


def _yolo_names(root: Path) -> list[str] | None:
    for name in YOLO_NAME_FILES:
        for p in (root / name, *sorted(root.glob(f"*/{name}"))):
            if not p.is_file():
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
            if p.suffix in (".yaml", ".yml"):
                names = _yaml_names(text)
                if names:
                    return names
            else:
                names = [ln.strip() for ln in text.splitlines() if ln.strip()]
                if names:
                    return names
    return None


def _yaml_names(text: str) -> list[str] | None:
    """``names:`` of an Ultralytics data.yaml: ``[a, b]``, a ``- a`` list or a ``0: a`` mapping."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if not ln.startswith("names:"):
            continue
        rest = ln[len("names:"):].strip()
        if rest.startswith("["):
            return [v.strip().strip("'\"") for v in rest.strip("[]").split(",") if v.strip()]
        out: dict[int, str] = {}
        for sub in lines[i + 1:]:
            s = sub.strip()
            if not sub.startswith((" ", "\t", "-")) or not s:
                break
            if s.startswith("-"):
                out[len(out)] = s[1:].strip().strip("'\"")
            elif ":" in s:
                k, v = s.split(":", 1)
                out[int(k)] = v.strip().strip("'\"")
        return [out[k] for k in sorted(out)] or None
    return None


def _read_yolo(root: Path) -> tuple[list[_Raw], list[str]]:
    names = _yolo_names(root)
    if names is None:
        raise DataError(f"{root}: YOLO labels give class numbers only; put the class names, one a line, in "
                        f"{root / 'classes.txt'} (or a data.yaml with names:)")
    raws = []
    for img in find_files(root)[0]:
        rel = img.relative_to(root)
        parts = list(rel.parts)
        cands = [img.with_suffix(".txt")]
        if "images" in parts:
            j = len(parts) - 1 - parts[::-1].index("images")
            cands.insert(0, root.joinpath(*parts[:j], "labels", *parts[j + 1:]).with_suffix(".txt"))
        label = next((c for c in cands if c.is_file()), None)
        raw = _Raw(str(label.relative_to(root)) if label else str(rel), img, None, [])
        if label is not None:
            for n, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                if not _is_yolo_line(line):
                    raw.problems.append(f"line {n}: not 'class cx cy w h'")
                    continue
                c, cx, cy, w, h = line.split()
                # Fractions of the image: scaled to pixels once the image's size is known (_check_raw).
                raw.boxes.append((float(cx) - float(w) / 2, float(cy) - float(h) / 2,
                                  float(cx) + float(w) / 2, float(cy) + float(h) / 2, int(c)))
        raws.append(raw)
    return raws, names


# ---------------------------------------------------------------- checks


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) of the decoded image (EXIF orientation applied, as training sees it), or why not."""
    from ..preprocess import load_image

    try:
        if path.stat().st_size == 0:
            return "empty file"
        return load_image(path).size
    except Exception as exc:  # noqa: BLE001 - any decode failure leaves the image out, named
        return f"{type(exc).__name__}: {exc}".strip()


def _check_raw(raw: _Raw, size: tuple[int, int], index: dict[Any, int], fractions: bool,
               ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(boxes (N, 4) float32, labels (N,), problems, boxes clipped) of one image's annotation."""
    w, h = size
    problems = list(raw.problems)
    boxes, labels, clipped = [], [], 0
    tol_x, tol_y = max(MIN_CLIP_PIXELS, CLIP_TOLERANCE * w), max(MIN_CLIP_PIXELS, CLIP_TOLERANCE * h)
    for i, (x1, y1, x2, y2, cls) in enumerate(raw.boxes):
        what = f"box {i + 1} ({cls})"
        if cls not in index:
            known = f"class numbers 0..{len(index) - 1}" if fractions else f"{len(index)} known classes"
            problems.append(f"{what}: unknown class (the run has {known})")
            continue
        if fractions:
            x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            problems.append(f"{what}: coordinates are not finite numbers")
            continue
        if x1 < -tol_x or y1 < -tol_y or x2 > w + tol_x or y2 > h + tol_y:
            problems.append(f"{what}: [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} image")
            continue
        c = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
        if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
            problems.append(f"{what}: [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has no positive width and height")
            continue
        clipped += c != (x1, y1, x2, y2)
        boxes.append(c)
        labels.append(index[cls])
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), problems, clipped)


def read_detection_set(data_dir: str | os.PathLike[str], format: str = "auto",  # noqa: A002 - the CLI's name
                       classes: list[str] | None = None, workers: int = 4) -> DetectionSet:
    """Read and check the detection folder ``data_dir`` (module docstring).

    ``format``: ``auto`` (:func:`detect_format`), ``voc``, ``coco`` or ``yolo``. ``classes``: fixes the class
    list and its order (a box of another class is then a bad annotation); default: the layout's own.
    Raises ConfigError for an unknown format, DataError when the folder is missing, holds no annotation of
    the layout, or leaves no image with a usable box.
    """
    root = Path(data_dir)
    if format not in ("auto", *FORMATS):
        raise ConfigError(f"unknown --format {format!r}; choose auto, {', '.join(FORMATS)}")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    fmt = detect_format(root) if format == "auto" else format
    reader = {"voc": _read_voc, "coco": _read_coco, "yolo": _read_yolo}[fmt]
    raws, found = reader(root)
    if not raws:
        raise DataError(f"{root} holds no {fmt} annotation")
    names = list(classes) if classes is not None else found
    if not names:
        raise DataError(f"{root}: the {fmt} annotations name no class")
    index: dict[Any, int] = {n: i for i, n in enumerate(names)}
    if fmt == "yolo":  # YOLO lines give the class's number
        index = {i: i for i in range(len(names))}
    images = [r.image for r in raws if r.image is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = dict(zip(images, pool.map(_image_size, images), strict=True))
    out, issues, clipped, bad_shown = [], [], 0, 0
    mismatched: list[str] = []

    def bad(file: str, reason: str) -> None:
        nonlocal bad_shown
        issues.append({"file": file, "reason": reason})
        if bad_shown < NAMED_WARNINGS:
            log.warning("bad annotation in %s: %s; image left out", file, reason)
        bad_shown += 1

    for raw in raws:
        if raw.image is None:
            for p in raw.problems:
                bad(raw.source, p)
            continue
        size = sizes[raw.image]
        if isinstance(size, str):
            bad(raw.source, f"image {raw.image.relative_to(root)} cannot be decoded ({size})")
            continue
        if raw.size is not None and raw.size != size:
            mismatched.append(raw.source)
        boxes, labels, problems, n_clipped = _check_raw(raw, size, index, fmt == "yolo")
        if problems:
            for p in problems:
                bad(raw.source, p)
            continue
        clipped += n_clipped
        out.append(Annotated(str(raw.image.relative_to(root)), boxes, labels, size[0], size[1]))
    if bad_shown > NAMED_WARNINGS:
        log.warning("%d more bad annotation(s) not named here (the manifest lists them all)",
                    bad_shown - NAMED_WARNINGS)
    if clipped:
        log.warning("clipped %d box(es) overshooting their image by at most %.0f%% of its side (or %g px) to its "
                    "border", clipped, CLIP_TOLERANCE * 100, MIN_CLIP_PIXELS)
    if mismatched:
        log.warning("the size written in %s differs from the decoded image's; boxes are read in the decoded "
                    "image's pixels", name_left_out(mismatched, "annotation(s)"))
    if not any(len(a.labels) for a in out):
        first = f" (first: {issues[0]['file']}: {issues[0]['reason']})" if issues else ""
        raise DataError(f"no image with a usable box under {root} ({fmt} layout){first}")
    return DetectionSet(root, fmt, names, out, issues, clipped)


# ---------------------------------------------------------------- split and counts


def split_images(images: list[Annotated], val_fraction: float = 0.2, seed: int = 0,
                 ) -> tuple[list[Annotated], list[Annotated]]:
    """(train, val): a seeded split by image (every box of an image stays with it), ``val_fraction`` of the
    images held out, at least one on each side. DataError for a fraction outside (0, 1) or under 2 images."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if len(images) < 2:
        raise DataError(f"detection needs at least 2 images to split into training and validation, got {len(images)}")
    order = sorted(range(len(images)), key=lambda i: images[i].path)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(images) * val_fraction)), len(images) - 1)
    val = sorted((images[i] for i in order[:n_val]), key=lambda a: a.path)
    train = sorted((images[i] for i in order[n_val:]), key=lambda a: a.path)
    return train, val


def class_counts(images: list[Annotated], classes: list[str]) -> dict[str, dict[str, int]]:
    """Per class: ``boxes`` and ``images`` (holding at least one of its boxes), plus the split's totals
    under ``"all"`` (``images`` counts background images too)."""
    out = {c: {"boxes": 0, "images": 0} for c in classes}
    for a in images:
        for k in np.unique(a.labels):
            out[classes[int(k)]]["images"] += 1
        for k in a.labels:
            out[classes[int(k)]]["boxes"] += 1
    out["all"] = {"boxes": sum(len(a.labels) for a in images), "images": len(images)}
    return out
