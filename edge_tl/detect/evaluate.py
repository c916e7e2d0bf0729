"""Detection figures: mAP by pycocotools (the COCO definition) and box agreement between two models.

``detection_metrics`` is what finetune's early stopping, its manifest and (later) the bench report; its
fields ``map50`` and ``map50_95`` are fractions. ``box_agreement`` compares a candidate (an exported or
INT8 model) with the reference (the torch model) box by box: the bench's faithfulness figures.
Torch-free; pycocotools is imported inside :func:`detection_metrics` only.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..runtime.nms import Detections, iou_matrix

MATCH_IOU = 0.5
# A reference box at least this sure is one the line acts on; below it, boxes come and go with any noise (an INT8
# graph moves a 0.06 box under the 0.05 floor), as near-tie answers do for a classifier.
CONFIDENT_SCORE = 0.3


def _as_dict(d: Detections | Mapping[str, Any]) -> Mapping[str, Any]:
    return d.to_dict() if isinstance(d, Detections) else d


def detection_metrics(predictions: Sequence[Detections | Mapping[str, Any]],
                      truths: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """mAP of ``predictions`` against ``truths``, one entry per image in the same order.

    ``predictions[i]``: ``boxes`` (M, 4) x1 y1 x2 y2, ``scores`` (M,), ``labels`` (M,) class indices (a
    :class:`~.nms.Detections` or a mapping). ``truths[i]``: ``boxes`` (N, 4) and ``labels`` (N,), in the same
    pixels as the predictions. Computed by pycocotools' ``COCOeval`` (bbox, all areas, up to 100 detections
    an image): ``map50`` is AP at IoU 0.5, ``map50_95`` the mean over IoU 0.50:0.05:0.95, both averaged over
    the classes with a ground-truth box, as fractions (None when no class has one); ``per_class_ap50``:
    class name -> AP at IoU 0.5 (None for a class without a ground-truth box). ``images`` and ``boxes``
    count what was evaluated. Raises ValueError when the two lists differ in length, MissingExtraError
    without pycocotools (``pip install 'edge-tl[detect]'``).
    """
    from ..errors import require

    COCO = require("pycocotools.coco", "detect").COCO
    COCOeval = require("pycocotools.cocoeval", "detect").COCOeval
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} images")
    gt: dict[str, Any] = {"images": [], "annotations": [],
                          "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
    dets: list[dict[str, Any]] = []
    n_boxes = 0
    for i, (p, t) in enumerate(zip(predictions, truths, strict=True)):
        gt["images"].append({"id": i + 1})
        for b, c in zip(np.asarray(t["boxes"], np.float64).reshape(-1, 4), np.asarray(t["labels"]), strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            n_boxes += 1
            gt["annotations"].append({"id": n_boxes, "image_id": i + 1, "category_id": int(c) + 1,
                                      "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        p = _as_dict(p)
        for b, s, c in zip(np.asarray(p["boxes"], np.float64).reshape(-1, 4), np.asarray(p["scores"]),
                           np.asarray(p["labels"]), strict=True):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    has_gt = np.zeros(len(classes), bool)
    for a in gt["annotations"]:
        has_gt[a["category_id"] - 1] = True
    per_class: dict[str, float | None] = {c: None for c in classes}
    result = {"map50": None, "map50_95": None, "per_class_ap50": per_class, "images": len(truths),
              "boxes": n_boxes, "detections": len(dets), "source": "pycocotools COCOeval (bbox)"}
    if not has_gt.any():
        return result
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets) if dets else COCO()
        if not dets:
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: (IoU thresholds 10, recall points 101, classes K, area ranges 4, maxDets 3); -1 where a class
    # has no ground truth. Area "all" is index 0, maxDets 100 the last.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap = np.zeros((prec.shape[0], prec.shape[2]))
    for k in range(prec.shape[2]):
        for t in range(prec.shape[0]):
            v = prec[t, :, k]
            ap[t, k] = float(np.mean(np.clip(v, 0, None))) if (v > -1).any() else np.nan
    for k, c in enumerate(classes):
        if has_gt[k]:
            per_class[c] = float(ap[0, k])
    result["map50"] = float(np.nanmean(ap[0][has_gt]))
    result["map50_95"] = float(np.nanmean(ap[:, has_gt]))
    return result


def box_agreement(candidate: Sequence[Detections | Mapping[str, Any]],
                  reference: Sequence[Detections | Mapping[str, Any]], iou: float = MATCH_IOU,
                  min_reference_score: float = 0.0) -> dict[str, Any]:
    """How closely a candidate model's detections follow the reference model's, image by image.

    Both: one entry per image (``boxes`` (M, 4), ``scores`` (M,), ``labels`` (M,)), same pixels. Matching is
    greedy: the reference boxes in order of score (highest first) each take the unmatched candidate box of
    the same class with the highest IoU, when that IoU is at least ``iou``. Returns ``reference_boxes``,
    ``candidate_boxes``, ``matched``, ``matched_share`` (matched / reference boxes; 1.0 when the reference
    has none and neither has the candidate, else 0.0), ``mean_iou`` and ``mean_abs_score_diff`` over the
    matched pairs (None without a match), and ``min_iou`` of the matched pairs. ``min_reference_score``: only
    reference boxes scoring at least this count (and are matched, against every candidate box).
    """
    if len(candidate) != len(reference):
        raise ValueError(f"{len(candidate)} candidate images for {len(reference)} reference images")
    ious, diffs = [], []
    n_ref = n_cand = 0
    for cand, ref in zip(candidate, reference, strict=True):
        cand, ref = _as_dict(cand), _as_dict(ref)
        rb, rs, rl = (np.asarray(ref[k]) for k in ("boxes", "scores", "labels"))
        if min_reference_score > 0:
            keep = rs >= min_reference_score
            rb, rs, rl = rb[keep], rs[keep], rl[keep]
        cb, cs, cl = (np.asarray(cand[k]) for k in ("boxes", "scores", "labels"))
        n_ref, n_cand = n_ref + len(rs), n_cand + len(cs)
        if not len(rs) or not len(cs):
            continue
        m = iou_matrix(rb, cb)
        m[rl.reshape(-1, 1) != cl.reshape(1, -1)] = -1.0
        taken = np.zeros(len(cs), bool)
        for r in np.argsort(-rs, kind="stable"):
            row = np.where(taken, -1.0, m[r])
            j = int(np.argmax(row))
            if row[j] >= iou:
                taken[j] = True
                ious.append(float(row[j]))
                diffs.append(abs(float(rs[r]) - float(cs[j])))
    share = len(ious) / n_ref if n_ref else (1.0 if not n_cand else 0.0)
    return {"reference_boxes": n_ref, "candidate_boxes": n_cand, "matched": len(ious), "matched_share": share,
            "mean_iou": float(np.mean(ious)) if ious else None, "min_iou": float(np.min(ious)) if ious else None,
            "mean_abs_score_diff": float(np.mean(diffs)) if diffs else None, "match_iou": iou,
            "min_reference_score": min_reference_score}


def box_figures(candidate: Sequence[Detections | Mapping[str, Any]],
                reference: Sequence[Detections | Mapping[str, Any]]) -> dict[str, Any]:
    """A candidate's boxes against the reference's, as bench, the INT8 fallback and its verdict report them:
    ``box_agreement`` (share of all the reference's boxes matched), ``box_agreement_confident`` (of its boxes
    scoring at least ``CONFIDENT_SCORE``: what ``min_box_agreement`` gates; None without such a box) and
    ``box_match`` (the counts and IoU / score differences of the first)."""
    match = box_agreement(candidate, reference, iou=MATCH_IOU)
    sure = box_agreement(candidate, reference, iou=MATCH_IOU, min_reference_score=CONFIDENT_SCORE)
    # No confident reference box: nothing for the gate to judge (not measured), as a classifier without confident
    # answers; box_agreement's own rule (0.0 when the candidate has boxes) would fail a model that agrees.
    return {"box_agreement": match["matched_share"],
            "box_agreement_confident": sure["matched_share"] if sure["reference_boxes"] else None,
            "confident_boxes": sure["reference_boxes"], "box_match": match}
