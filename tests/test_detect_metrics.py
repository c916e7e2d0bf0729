"""NMS on hand-made boxes, mAP (pycocotools) on crafted cases, box agreement, the map back to image pixels."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.detect.evaluate import box_agreement, detection_metrics
from edge_tl.runtime.nms import iou_matrix, nms, to_image_pixels, to_input_pixels


def test_nms_keeps_the_exact_survivors() -> None:
    boxes = np.array([[0, 0, 10, 10],     # a: best of class 0
                      [1, 0, 11, 10],     # IoU with a = 90/110 = 0.818: suppressed at 0.6
                      [0, 0, 10, 20],     # IoU with a = 0.5: kept at 0.6
                      [50, 50, 60, 60],   # elsewhere
                      [0, 0, 10, 10]],    # same place as a, but class 1 only: per-class NMS keeps it
                     np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.04, 0.3], [0.0, 0.6]], np.float32)
    d = nms(boxes, scores, score_threshold=0.05, iou_threshold=0.6, max_detections=10)
    np.testing.assert_array_equal(d.scores, np.array([0.9, 0.7, 0.6, 0.3], np.float32))
    np.testing.assert_array_equal(d.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(d.boxes, boxes[[0, 2, 4, 3]])
    # Lower IoU threshold: the 0.5-overlap box goes too; max_detections cuts the tail.
    d = nms(boxes, scores, score_threshold=0.05, iou_threshold=0.4, max_detections=2)
    np.testing.assert_array_equal(d.scores, np.array([0.9, 0.6], np.float32))
    # Score threshold: 0.04 of class 0 for box 3 never was a candidate; nothing above 0.95 at all.
    assert len(nms(boxes, scores, score_threshold=0.95)) == 0
    assert iou_matrix(boxes[:1], boxes[1:3]) == pytest.approx(np.array([[90 / 110, 0.5]]))


def test_image_pixels_round_trip() -> None:
    b = np.array([[10, 20, 110, 60]], np.float32)
    for mode in ("full", "letterbox"):
        back = to_image_pixels(to_input_pixels(b, (200, 100), 64, mode), (200, 100), 64, mode)
        np.testing.assert_allclose(back, b, atol=1e-3)
    np.testing.assert_allclose(to_input_pixels(b, (200, 100), 64, "full"), [[3.2, 12.8, 35.2, 38.4]], atol=1e-5)


def _truth():
    return [{"boxes": np.array([[10, 10, 30, 30], [40, 40, 60, 70]], np.float32), "labels": np.array([0, 1])},
            {"boxes": np.array([[5, 5, 25, 45]], np.float32), "labels": np.array([0])}]


def test_perfect_predictions_score_one() -> None:
    truth = _truth()
    preds = [{"boxes": t["boxes"], "scores": np.linspace(0.9, 0.5, len(t["labels"])), "labels": t["labels"]}
             for t in truth]
    m = detection_metrics(preds, truth, ["a", "b", "c"])
    assert m["map50"] == pytest.approx(1.0) and m["map50_95"] == pytest.approx(1.0)
    assert m["per_class_ap50"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}


def test_crafted_case_known_value() -> None:
    # One class, two boxes; the best detection is right, the second a false alarm, the second box missed.
    # COCO's 101-point interpolated precision is 1 at recalls 0..0.50 (51 points), 0 above: AP = 51/101.
    truth = [{"boxes": np.array([[10, 10, 30, 30], [40, 40, 60, 70]], np.float32), "labels": np.array([0, 0])}]
    preds = [{"boxes": np.array([[10, 10, 30, 30], [80, 80, 90, 90]], np.float32), "scores": np.array([0.9, 0.8]),
              "labels": np.array([0, 0])}]
    m = detection_metrics(preds, truth, ["a"])
    assert m["map50"] == pytest.approx(51 / 101) and m["map50_95"] == pytest.approx(51 / 101)
    # A box with IoU 17/30 = 0.567 counts at 0.5 and 0.55 only (2 of the 10 thresholds) - the other detection right.
    preds = [{"boxes": np.array([[10, 10, 30, 30], [40, 40, 60, 57]], np.float32), "scores": np.array([0.9, 0.8]),
              "labels": np.array([0, 0])}]
    m = detection_metrics(preds, truth, ["a"])
    assert m["map50"] == pytest.approx(1.0)
    # Thresholds 0.5 and 0.55: AP 1; from 0.6: only box 1 found, precision 1 up to recall 0.5: 51/101.
    assert m["map50_95"] == pytest.approx((2 * 1.0 + 8 * 51 / 101) / 10)


def test_no_predictions_and_mismatched_lengths() -> None:
    m = detection_metrics([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}] * 2,
                          _truth(), ["a", "b"])
    assert m["map50"] == 0.0 and m["per_class_ap50"] == {"a": 0.0, "b": 0.0}
    with pytest.raises(ValueError):
        detection_metrics([], _truth(), ["a"])


def test_box_agreement() -> None:
    ref = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
            "scores": np.array([0.9, 0.8, 0.7]), "labels": np.array([0, 1, 0])}]
    cand = [{"boxes": np.array([[0, 0, 10, 11], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
             "scores": np.array([0.85, 0.8, 0.7]), "labels": np.array([0, 1, 1])}]  # last: wrong class
    a = box_agreement(cand, ref)
    assert a["matched"] == 2 and a["reference_boxes"] == 3 and a["matched_share"] == pytest.approx(2 / 3)
    assert a["mean_iou"] == pytest.approx((100 / 110 + 1.0) / 2)
    assert a["mean_abs_score_diff"] == pytest.approx(0.025)
    same = box_agreement(ref, ref)
    assert same["matched_share"] == 1.0 and same["mean_iou"] == 1.0 and same["mean_abs_score_diff"] == 0.0


def test_nms_stops_at_max_detections_with_the_answer_of_a_full_pass() -> None:
    """Cutting after max_detections survivors equals NMS over every candidate then the cut: random candidates
    with duplicate boxes and tied scores, checked against a plain greedy NMS written out here."""
    from edge_tl.runtime.nms import iou_matrix, nms

    rng = np.random.default_rng(1)
    for trial in range(40):
        k, c = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        xy = np.round(rng.uniform(0, 200, (k, 2)) / 25) * 25
        boxes = np.concatenate([xy, xy + np.round(rng.uniform(5, 90, (k, 2)) / 25) * 25 + 5], 1).astype(np.float32)
        scores = np.round(rng.uniform(0, 1, (k, c)), 1).astype(np.float32)
        cap = int(rng.integers(1, 60))
        idx, cls = np.nonzero(scores >= 0.05)
        s = scores[idx, cls]
        order = np.argsort(-s, kind="stable")
        idx, cls, s = idx[order], cls[order], s[order]
        keep = []
        for j in range(len(s)):  # the plain greedy pass over every candidate
            rivals = [i for i in keep if cls[i] == cls[j]]
            if not rivals or (iou_matrix(boxes[idx[j]][None], boxes[idx[rivals]]) <= 0.6).all():
                keep.append(j)
        keep = keep[:cap]
        got = nms(boxes, scores, 0.05, 0.6, cap)
        assert np.array_equal(got.labels, cls[keep]) and np.array_equal(got.scores, s[keep]), trial
        assert np.array_equal(got.boxes, boxes[idx[keep]]), trial
