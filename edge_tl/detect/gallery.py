"""The pictures of a detection report (``detect_plot``): a few evaluation images with the ground-truth boxes,
the reference's (torch) and the candidate's (the exported target) detections, for the target page's grid
(drawn by ``bench.charts.detections_grid_html``).

Which images, deterministically: those where reference and candidate disagree most first (boxes of one
without a match in the other: same class, IoU >= 0.5, among the boxes drawn), then the rest in file-name
order, spread evenly over it (file names often start with the class: the first twelve of NEU-DET's are all
``crazing``).
Each image is a small JPEG data URI, so the report stays one file (as an anomaly report's heat maps);
boxes stay in the original image's pixels and are drawn over it as SVG.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import MATCH_IOU, box_agreement
from .nms import Detections

GRID_IMAGES = 12
THUMB_PX = 320  # longest side of an embedded JPEG: about 10-20 kB each
JPEG_QUALITY = 80
MIN_SCORE = 0.3  # detections drawn (and compared for the order): mAP counts lower ones, a picture of them is noise
MAX_BOXES = 8  # per model and image, highest scores first: a texture class (crazing) fires 20 boxes over 0.3


def _shown(d: Detections, min_score: float) -> Detections:
    keep = np.flatnonzero(np.asarray(d.scores) >= min_score)[:MAX_BOXES]
    return Detections(np.asarray(d.boxes)[keep], np.asarray(d.scores)[keep], np.asarray(d.labels)[keep])


def disagreement(reference: Detections, candidate: Detections, min_score: float = MIN_SCORE) -> int:
    """Boxes (score >= ``min_score``) of either model without a match in the other (same class, IoU >= 0.5)."""
    a = box_agreement([_shown(candidate, min_score)], [_shown(reference, min_score)], iou=MATCH_IOU)
    return a["reference_boxes"] + a["candidate_boxes"] - 2 * a["matched"]


def pick(paths: Sequence[str], reference: Sequence[Detections], candidate: Sequence[Detections],
         n: int = GRID_IMAGES, min_score: float = MIN_SCORE) -> list[tuple[int, int]]:
    """(image index, disagreement) of the ``n`` images to show: those with a disagreement first, most first
    (ties by file name, then path); the places left go to the others, spread evenly over their file-name order
    and shown in it."""
    def name(i: int) -> tuple[str, str]:
        return Path(paths[i]).name, paths[i]

    scored = [(disagreement(r, c, min_score), i) for i, (r, c) in enumerate(zip(reference, candidate, strict=True))]
    differ = sorted((t for t in scored if t[0] > 0), key=lambda t: (-t[0], *name(t[1])))[:n]
    rest = sorted((i for k, i in scored if k == 0), key=name)
    left = min(n - len(differ), len(rest))
    step = len(rest) / left if left else 0.0
    return [(i, k) for k, i in differ] + [(rest[int(j * step)], 0) for j in range(left)]


def _jpeg(path: Path) -> str:
    from ..preprocess import load_image

    img = load_image(path)
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _rows(d: Detections, min_score: float) -> list[list[float]]:
    d = _shown(d, min_score)
    return [[*(round(float(v), 1) for v in b), int(y), round(float(s), 3)]
            for b, y, s in zip(d.boxes, d.labels, d.scores, strict=True)]


def gallery(root: Path, items: Sequence[Any], reference: Sequence[Detections], candidate: Sequence[Detections],
            classes: Sequence[str], n: int = GRID_IMAGES, min_score: float = MIN_SCORE) -> dict[str, Any]:
    """The report's ``detect_plot``: ``images`` ([{path, width, height, jpeg (data URI), disagreement,
    truth [[x1, y1, x2, y2, class]], reference / candidate [[x1, y1, x2, y2, class, score]]}], boxes in the
    original image's pixels, classes as indices into the report's ``classes``), ``boxes_per_class`` (ground
    truth of the whole evaluation set), ``min_score``, ``match_iou`` and ``order`` (in words).

    ``items``: the evaluation images (``detect.data.Annotated``, paths relative to ``root``); ``reference``
    and ``candidate``: their detections in original pixels, one per item. An image that can no longer be
    read is left out of the grid (its figures were measured already)."""
    counts = np.bincount(np.concatenate([np.asarray(a.labels, np.int64) for a in items] or [np.zeros(0, np.int64)]),
                         minlength=len(classes))
    images = []
    for i, k in pick([a.path for a in items], reference, candidate, n, min_score):
        a = items[i]
        try:
            jpeg = _jpeg(root / a.path)
        except Exception:  # noqa: BLE001 - a picture is not worth failing a measured bench
            continue
        images.append({"path": a.path, "width": int(a.width), "height": int(a.height), "jpeg": jpeg,
                       "disagreement": k,
                       "truth": [[*(round(float(v), 1) for v in b), int(y)] for b, y in zip(a.boxes, a.labels,
                                                                                             strict=True)],
                       "reference": _rows(reference[i], min_score), "candidate": _rows(candidate[i], min_score)})
    return {"images": images, "boxes_per_class": {c: int(counts[j]) for j, c in enumerate(classes)},
            "min_score": min_score, "match_iou": MATCH_IOU,
            "max_boxes": MAX_BOXES,
            "order": f"most disagreement between reference and candidate first (boxes scoring >= {min_score:g} "
                     f"without a match of the same class at IoU >= {MATCH_IOU:g}), then the others spread evenly "
                     "over the file names, in their order"}
