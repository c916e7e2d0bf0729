"""The QC decision of a detection bundle, its tuning on the validation images, and the golden-box check
(numpy only).

Rule (also written into every detection bundle as ``policy.rule``)::

    boxes    = per-class NMS of the graph's boxes and scores with the run's ``postprocess`` parameters,
               mapped back to the original image's pixels (``runtime.nms``)
    decision = "defect" if any box of a defect class scores >= that class's threshold, otherwise "ok"
    label    = the class of the highest-scoring such box ("ok" when there is none)
    score    = that box's score (for "ok": the highest score of a defect-class box, 0 when there is none)

Boxes of ok classes (``--ok-class``: a fiducial, an accepted mark) never make a part a defect. There is no
``review``: a box either reaches its threshold or it does not.

Tuning (``tune_box_threshold``), one threshold for every defect class: an *escape* is a validation image
with a true box of a defect class on which no defect-class box reaches the threshold (where the box lies is
not asked: a part with a defect that is flagged is caught); a *false reject* is an image without a true
defect box that is decided ``defect``. ``--max-escape`` picks the highest threshold whose escapes are within
the target, ``--max-false-reject`` the lowest whose false rejects are, both claimed only when the one-sided
95 % Clopper-Pearson upper bound on those images is within it (``policy.rate_upper_bound``), as the
classifier's tuning does. The images that tune the threshold also report it: the rates are optimistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .nms import Detections, iou_matrix
from .policy import DEFAULT_CONFIDENCE, _events_allowed, _too_few, make_policy, rate_upper_bound

BOX_RULE = ("boxes: per-class NMS of the graph's boxes and scores (detect.nms), in the original image's pixels; "
            "decision = 'defect' if any box of a defect class has a score >= that class's threshold, otherwise "
            "'ok'; label = the class of the highest-scoring such box ('ok' when none), score = its score (for "
            "'ok': the highest defect-class box score, 0 when there is none)")
DEFECT_BOX = "defect_box"  # the reason of a defect decision: a box of a defect class reached its threshold
NO_DEFECT_BOX = "no_defect_box"  # the reason of an ok decision
MATCH_IOU = 0.5  # a box finds a true box of its class at this IoU (box recall and precision, golden picks)
GOLDEN_IOU = 0.99  # a golden box is reproduced when it overlaps the expected one at least this much


@dataclass(frozen=True)
class BoxPolicy:
    """Which box classes are defects and the score each needs (``thresholds``: per class, aligned with
    ``classes``; ok classes hold +inf, never reached)."""

    classes: tuple[str, ...]
    ok_classes: tuple[str, ...]
    defect_classes: tuple[str, ...]
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.classes):
            raise ConfigError(f"{len(self.thresholds)} box thresholds for {len(self.classes)} classes")
        for c, t in zip(self.classes, self.thresholds, strict=True):
            if c in self.defect_classes and not 0.0 <= t <= 1.0:
                raise ConfigError(f"the box threshold of {c} must be between 0 and 1, got {t}")

    @property
    def threshold(self) -> float | None:
        """The one threshold every defect class shares, None when they differ."""
        values = {t for c, t in zip(self.classes, self.thresholds, strict=True) if c in self.defect_classes}
        return values.pop() if len(values) == 1 else None

    def with_threshold(self, value: float) -> BoxPolicy:
        """This policy with ``value`` as every defect class's threshold."""
        return BoxPolicy(self.classes, self.ok_classes, self.defect_classes,
                         tuple(float(value) if c in self.defect_classes else math.inf for c in self.classes))

    def _limits(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.thresholds, np.float64)[np.asarray(labels, np.int64)]

    def passes(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(M,) bool: the boxes of a defect class at or above its threshold (the ones that decide)."""
        if not len(labels):
            return np.zeros(0, bool)
        return np.asarray(scores, np.float64) >= self._limits(labels)

    def defect_score(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The highest score of a defect-class box, -1.0 when the image has none."""
        if not len(labels):
            return -1.0
        mine = np.isfinite(self._limits(labels))
        return float(np.max(np.asarray(scores)[mine])) if mine.any() else -1.0

    def decide(self, labels: np.ndarray, scores: np.ndarray) -> tuple[str, int, float, str]:
        """(decision, class index (-1 for ok), score, reason) of one image's boxes (``labels`` (M,) class
        indices, ``scores`` (M,)), per the rule in the module docstring."""
        hit = np.flatnonzero(self.passes(labels, scores))
        if len(hit):
            i = hit[np.argmax(np.asarray(scores)[hit])]
            return "defect", int(labels[i]), float(scores[i]), DEFECT_BOX
        return "ok", -1, max(0.0, self.defect_score(labels, scores)), NO_DEFECT_BOX

    def to_dict(self) -> dict[str, Any]:
        return {"rule": BOX_RULE, "ok_classes": list(self.ok_classes), "defect_classes": list(self.defect_classes),
                "thresholds": {c: float(t) for c, t in zip(self.classes, self.thresholds, strict=True)
                               if c in self.defect_classes},
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict[str, Any], classes: Sequence[str]) -> BoxPolicy:
        given = d["thresholds"]
        return cls(tuple(classes), tuple(d["ok_classes"]), tuple(d["defect_classes"]),
                   tuple(float(given[c]) if c in d["defect_classes"] else math.inf for c in classes))


def make_box_policy(classes: Sequence[str], ok_classes: Sequence[str] | None = None,
                    defect_classes: Sequence[str] | None = None, threshold: float = 0.5) -> BoxPolicy:
    """A box policy from the user's class lists (split as :func:`policy.make_policy` does) and one threshold."""
    split = make_policy(classes, ok_classes, defect_classes)
    return BoxPolicy(split.classes, split.ok_classes, split.defect_classes,
                     tuple(float(threshold) if c in split.defect_classes else math.inf for c in split.classes))


def true_defects(policy: BoxPolicy, truths: Sequence[dict[str, Any]]) -> np.ndarray:
    """(N,) bool: the images with a true box of a defect class."""
    defect = np.isin(np.arange(len(policy.classes)), [policy.classes.index(c) for c in policy.defect_classes])
    return np.array([bool(defect[np.asarray(t["labels"], np.int64)].any()) if len(t["labels"]) else False
                     for t in truths], bool)


def match_boxes(boxes: np.ndarray, labels: np.ndarray, t_boxes: np.ndarray, t_labels: np.ndarray,
             iou: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching in the boxes' order (highest score first): (boxes matched (M,) bool, truths
    matched (T,) bool); a box matches an unmatched true box of its class at IoU >= ``iou``."""
    got = np.zeros(len(labels), bool)
    taken = np.zeros(len(t_labels), bool)
    if not len(labels) or not len(t_labels):
        return got, taken
    ious = iou_matrix(boxes, t_boxes)
    for i, c in enumerate(labels):
        cand = np.where((np.asarray(t_labels) == c) & ~taken, ious[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= iou:
            got[i], taken[j] = True, True
    return got, taken


def box_policy_stats(policy: BoxPolicy, dets: Sequence[Detections], truths: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the policy does on labelled images (``dets`` and ``truths`` in the same pixels, one per image):
    escapes and false rejects (see the module docstring), the share decided defect, and box recall and
    precision of the boxes that decide (a true defect-class box found by a deciding box of its class at IoU >=
    ``MATCH_IOU``; a deciding box that finds one)."""
    defect = true_defects(policy, truths)
    decisions = np.array([policy.decide(d.labels, d.scores)[0] for d in dets], dtype="<U6")
    n_defect, n_ok = int(defect.sum()), int((~defect).sum())
    escapes = int((defect & (decisions == "ok")).sum())
    false_rejects = int((~defect & (decisions == "defect")).sum())
    defect_idx = [policy.classes.index(c) for c in policy.defect_classes]
    true_boxes = found = deciding = right = 0
    for d, t in zip(dets, truths, strict=True):
        keep = policy.passes(d.labels, d.scores)
        t_labels = np.asarray(t["labels"], np.int64)
        mine = np.isin(t_labels, defect_idx)
        hit, taken = match_boxes(np.asarray(d.boxes)[keep], np.asarray(d.labels)[keep],
                              np.asarray(t["boxes"], np.float32).reshape(-1, 4)[mine], t_labels[mine])
        true_boxes += int(mine.sum())
        found += int(taken.sum())
        deciding += int(keep.sum())
        right += int(hit.sum())

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    return {"n": len(dets), "n_defect": n_defect, "n_ok": n_ok, "escapes": escapes,
            "escape_rate": rate(escapes, n_defect), "false_rejects": false_rejects,
            "false_reject_rate": rate(false_rejects, n_ok),
            "defect_rate": rate(int((decisions == "defect").sum()), len(dets)),
            "true_defect_boxes": true_boxes, "deciding_boxes": deciding,
            "box_recall": rate(found, true_boxes), "box_precision": rate(right, deciding), "match_iou": MATCH_IOU,
            "definitions": "n_defect: images with a true box of a defect class; escape: such an image decided ok; "
                           "false reject: an image without one decided defect; box recall: true defect-class boxes "
                           "found by a deciding box of their class (IoU >= match_iou); box precision: deciding boxes "
                           "that find one"}


def tune_box_threshold(policy: BoxPolicy, dets: Sequence[Detections], truths: Sequence[dict[str, Any]], *,
                       floor: float, max_escape: float | None = None, max_false_reject: float | None = None,
                       confidence: float | None = DEFAULT_CONFIDENCE) -> tuple[BoxPolicy, dict[str, Any]]:
    """One threshold for every defect class, tuned on labelled images to ``max_escape`` (the highest
    threshold whose escapes are provably within it: as few false rejects as that allows) or to
    ``max_false_reject`` (the lowest whose false rejects are: as few escapes as that allows).

    ``floor``: the NMS score threshold (no box scores below it, so no threshold below it differs from it).
    Provably: the Clopper-Pearson upper bound at ``confidence`` (None: the observed rate, for analysis only).
    With too few images to show the target even with no event, the policy keeps its stated threshold and
    ``target_met`` is False; so it is when defect images without any defect-class box already escape more
    than the target allows (the threshold is then ``floor``: every box counts). Returns the tuned policy and
    a record (target, whether met and why not, the threshold and where it came from, the upper bound, and
    :func:`box_policy_stats` of the tuned policy). ConfigError for a bad target or no image to tune on.
    """
    if (max_escape is None) == (max_false_reject is None):
        raise ConfigError("tune the box threshold to one of --max-escape and --max-false-reject")
    target = max_escape if max_escape is not None else max_false_reject
    assert target is not None
    flag = "--max-escape" if max_escape is not None else "--max-false-reject"
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"{flag} must be in [0, 1), got {target}")
    default = policy.threshold if policy.threshold is not None else 0.5
    conf = confidence or DEFAULT_CONFIDENCE
    top = np.array([policy.defect_score(d.labels, d.scores) for d in dets])
    defect = true_defects(policy, truths)
    reason = None
    if max_escape is not None:
        n = int(defect.sum())
        if n == 0:
            raise ConfigError("no validation image has a true box of a defect class: cannot tune --max-escape")
        allowed = _events_allowed(n, max_escape, confidence)
        ranked = np.sort(top[defect])  # an image escapes when its best defect box is below the threshold
        forced = int((ranked < 0).sum())
        if allowed < 0:
            threshold, met, source = default, False, "default"
            reason = _too_few("defect validation image(s)", n, max_escape, conf, default, "box threshold")
        elif forced > allowed:
            threshold, met, source = floor, False, "every box counts"
            reason = (f"{forced} of {n} defect validation image(s) have no box of a defect class at all: no "
                      f"threshold brings the escape rate within {max_escape:g}; every box (score >= the NMS "
                      f"floor {floor:g}) counts")
        else:
            # The `allowed` lowest escape: those strictly below ranked[allowed].
            threshold, met, source = (float(ranked[allowed]) if allowed < n else 1.0), True, "tuned"
        key, events = "escape", "escapes"
    else:
        n = int((~defect).sum())
        if n == 0:
            raise ConfigError("every validation image has a true box of a defect class: cannot tune "
                              "--max-false-reject (a false reject is an image without one decided defect)")
        allowed = _events_allowed(n, target, confidence)
        ranked = np.sort(top[~defect])[::-1]  # rejected when its best defect box reaches the threshold
        if allowed < 0:
            threshold, met, source = default, False, "default"
            reason = _too_few("validation image(s) without a defect box", n, target, conf, default, "box threshold")
        elif allowed >= n or ranked[allowed] < floor:
            threshold, met, source = floor, True, "tuned"  # every box may count
        else:
            above = float(np.nextafter(ranked[allowed], np.inf))
            threshold, met, source = min(above, 1.0), above <= 1.0, "tuned"
            if not met:
                reason = (f"{allowed + 1} image(s) without a defect box have a defect-class box of score 1: no "
                          f"threshold brings the false-reject rate within {target:g}")
        key, events = "false_reject", "false_rejects"
    tuned = policy.with_threshold(max(floor, min(1.0, threshold)) if source != "default" else threshold)
    stats = box_policy_stats(tuned, dets, truths)
    record = {f"target_{key}": target, "target_met": met, "confidence": confidence, "threshold": tuned.threshold,
              "threshold_source": source, f"{key}_upper_bound": rate_upper_bound(stats[events], n, conf),
              "reason": reason, "tuned_on": "validation images (the same ones report it: optimistic)", **stats}
    return tuned, record


# -- the golden check ------------------------------------------------------------------------------


def box_dicts(det: Detections, classes: Sequence[str], digits: int | None = None) -> list[dict[str, Any]]:
    """One image's boxes as ``{class, score, x1, y1, x2, y2}`` dicts, highest score first (``digits``: round
    pixel coordinates to so many decimals and scores to 6; None: full precision)."""
    out = []
    for b, s, c in zip(np.asarray(det.boxes, np.float64).reshape(-1, 4), det.scores, det.labels, strict=True):
        px = [float(v) if digits is None else round(float(v), digits) for v in b]
        out.append({"class": classes[int(c)], "score": float(s) if digits is None else round(float(s), 6),
                    "x1": px[0], "y1": px[1], "x2": px[2], "y2": px[3]})
    return out


def _coords(boxes: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float64).reshape(-1, 4)


def _near(score: float, edge: float, tol: dict[str, float]) -> bool:
    return abs(score - edge) <= tol["atol"] + tol["rtol"] * abs(edge)


def _borderline(boxes: Sequence[dict[str, Any]], nms: dict[str, Any], tol: dict[str, float]) -> np.ndarray:
    """(M,) bool: boxes that another build of the backend may keep or drop: a score within the tolerance of
    the NMS score floor, or, when the image reached ``max_detections``, of the lowest score kept."""
    floor = float(nms.get("score_threshold", 0.0))
    cap = nms.get("max_detections")
    last = boxes[-1]["score"] if boxes and cap is not None and len(boxes) >= int(cap) else None
    return np.array([_near(b["score"], floor, tol) or (last is not None and _near(b["score"], last, tol))
                     for b in boxes], bool)


def golden_box_problem(expected: Sequence[dict[str, Any]], got: Sequence[dict[str, Any]], tol: dict[str, float],
                       nms: dict[str, Any]) -> str | None:
    """Why ``got`` does not reproduce ``expected`` (one image's box dicts, highest score first), or None.

    Each expected box needs a box of its class at IoU >= ``tol["iou"]`` whose score is within ``atol + rtol *
    |score|``, and each box got needs an expected one likewise (one to one, in score order); boxes at the
    edge of NMS's cut-offs (:func:`_borderline`) may be missing on either side.
    """
    iou_floor = float(tol.get("iou", GOLDEN_IOU))
    e_xy, g_xy = _coords(expected), _coords(got)
    ious = iou_matrix(e_xy, g_xy) if len(expected) and len(got) else np.zeros((len(expected), len(got)))
    taken = np.zeros(len(got), bool)
    e_edge, g_edge = _borderline(expected, nms, tol), _borderline(got, nms, tol)
    for i, e in enumerate(expected):
        ok = [j for j, g in enumerate(got) if not taken[j] and g["class"] == e["class"] and ious[i, j] >= iou_floor
              and abs(g["score"] - e["score"]) <= tol["atol"] + tol["rtol"] * abs(e["score"])]
        if ok:
            taken[max(ok, key=lambda j: ious[i, j])] = True
        elif not e_edge[i]:
            best = float(ious[i].max()) if len(got) else 0.0
            return (f"expected box {e['class']} {e['score']:.4f} at ({e['x1']:.1f}, {e['y1']:.1f}, {e['x2']:.1f}, "
                    f"{e['y2']:.1f}) not reproduced (best IoU {best:.3f} with any box)")
    extra = [j for j in np.flatnonzero(~taken) if not g_edge[j]]
    if extra:
        g = got[extra[0]]
        return (f"{len(extra)} box(es) not expected, first {g['class']} {g['score']:.4f} at ({g['x1']:.1f}, "
                f"{g['y1']:.1f}, {g['x2']:.1f}, {g['y2']:.1f})")
    return None
