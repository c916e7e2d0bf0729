"""Non-maximum suppression and the map from the model's input pixels back to the image's, in numpy.

Torch-free on purpose: the exported graph ends at decoded boxes and per-class scores (``detect.model``), and
every consumer (torch-side evaluation, the ONNX check, the bundle, the device runtime) turns them into
detections with these functions, so they agree to the last box. A graph whose backend takes NMS inside it
(``BackendFacts.nms_in_graph``: TensorRT; ``detect.nms_graph``) ends instead at padded detections
(``NMS_OUTPUTS``); :func:`graph_detections` is the one path from either kind of graph's outputs to
``Detections``. It lives in ``runtime`` because the device
side may not import the task package (``edge_tl.detect`` imports the stages); ``edge_tl.detect.nms`` is
its old name, kept for manifests that cite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE_THRESHOLD = 0.05  # COCO evaluation's customary floor: low scores still count towards recall
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100  # COCO's maxDets


@dataclass
class Detections:
    """One image's detections: ``boxes`` (M, 4) float32 x1 y1 x2 y2, ``scores`` (M,) float32 in [0, 1],
    ``labels`` (M,) int64 class indices; sorted by score, highest first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (M, N) of boxes ``a`` (M, 4) and ``b`` (N, 4), x1 y1 x2 y2 (continuous coordinates: no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float = SCORE_THRESHOLD,
        iou_threshold: float = IOU_THRESHOLD, max_detections: int = MAX_DETECTIONS) -> Detections:
    """Per-class greedy NMS of one image's candidates.

    ``boxes`` (K, 4) x1 y1 x2 y2 and ``scores`` (K, C) per-class scores in [0, 1], as the exported graph
    gives them for one image. Every (candidate, class) pair at or above ``score_threshold`` is a candidate
    of that class; within a class, a candidate whose IoU with a kept higher-scoring one exceeds
    ``iou_threshold`` is dropped (ties in score: the lower index first, as ``np.argsort(kind="stable")``).
    The ``max_detections`` best survivors over all classes are returned, highest score first.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32)
    scores = scores.reshape(len(boxes), -1)
    idx, cls = np.nonzero(scores >= score_threshold)
    s = scores[idx, cls]
    order = np.argsort(-s, kind="stable")
    idx, cls, s = idx[order], cls[order], s[order]
    # Candidates in global score order: a candidate is suppressed only by higher-scoring ones of its class, so
    # each decision is final when made, and once max_detections are kept every later candidate would rank
    # below them. Stopping there gives the same answer as NMS over everything then a cut, in a fraction of the
    # time (this NMS is in every answer's latency on a device).
    cand = boxes[idx].astype(np.float64)
    area = np.clip(cand[:, 2] - cand[:, 0], 0, None) * np.clip(cand[:, 3] - cand[:, 1], 0, None)
    kept_of: dict[int, list[int]] = {}
    keep: list[int] = []
    for j in range(len(s)):
        if len(keep) >= max_detections:
            break
        mine = kept_of.setdefault(int(cls[j]), [])
        if mine:
            k = np.asarray(mine)
            lt = np.maximum(cand[k, :2], cand[j, :2])
            rb = np.minimum(cand[k, 2:], cand[j, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
            union = area[k] + area[j] - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
            if (iou > iou_threshold).any():
                continue
        mine.append(j)
        keep.append(j)
    kept = np.asarray(keep, np.int64)
    return Detections(boxes[idx[kept]].reshape(-1, 4), s[kept].astype(np.float32), cls[kept].astype(np.int64))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, **kwargs: Any) -> list[Detections]:
    """:func:`nms` per image of a batch: ``boxes`` (B, K, 4), ``scores`` (B, K, C)."""
    return [nms(b, s, **kwargs) for b, s in zip(boxes, scores, strict=True)]


# The outputs of a graph with NMS inside (``detect.nms_graph.append_nms``; the names and layout of TensorRT's
# EfficientNMS plugin, so a reader of either finds what it expects): num_detections (B,) int32, det_boxes
# (B, M, 4) x1 y1 x2 y2 input pixels, det_scores (B, M), det_classes (B, M) int32; rows past
# num_detections are padding (boxes and scores 0, class -1).
NMS_OUTPUTS = ("num_detections", "det_boxes", "det_scores", "det_classes")


def padded_detections(num: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                      ) -> list[Detections]:
    """Per image, the first ``num[i]`` rows of an NMS-inside graph's padded outputs (``NMS_OUTPUTS``; runners
    may hand them back as float32: counts and class indices are small integers, exact in float32)."""
    out = []
    for n, b, s, c in zip(np.asarray(num).reshape(-1), boxes, scores, classes, strict=True):
        k = round(float(n))
        out.append(Detections(np.asarray(b[:k], np.float32).reshape(-1, 4), np.asarray(s[:k], np.float32),
                              np.rint(np.asarray(c[:k], np.float64)).astype(np.int64)))
    return out


def graph_detections(outputs: Sequence[np.ndarray], nms_inside: bool = False, **nms_args: Any) -> list[Detections]:
    """A detection graph's outputs for a batch -> each image's detections in input pixels, highest score first.

    ``nms_inside`` False: ``outputs`` starts with boxes (B, K, 4) and scores (B, K, C), NMS runs here
    (:func:`batched_nms` with ``nms_args``). True: ``outputs`` are the four ``NMS_OUTPUTS`` of a graph that ran
    the same NMS itself (``nms_args`` are then the graph's, already applied). The one path from a graph's
    outputs to boxes: export checks, bench, bundle and the runtime all call it."""
    if nms_inside:
        if len(outputs) < len(NMS_OUTPUTS):
            raise ValueError(f"an NMS-inside graph has {len(NMS_OUTPUTS)} outputs ({', '.join(NMS_OUTPUTS)}), "
                             f"got {len(outputs)}")
        return padded_detections(*outputs[:len(NMS_OUTPUTS)])
    return batched_nms(outputs[0], outputs[1], **nms_args)


def to_image_pixels(boxes: np.ndarray, image_size: tuple[int, int], input_size: int,
                    resize_mode: str = "full") -> np.ndarray:
    """Boxes (M, 4) in the model's ``input_size`` x ``input_size`` pixels -> the original image's pixels,
    the preprocessing undone, clipped to the image. ``image_size``: (width, height). ``resize_mode``:
    ``full`` (the frame squeezed into the square) or ``letterbox`` (fitted and centred, padded)."""
    w, h = image_size
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    if resize_mode == "full":
        b[:, [0, 2]] *= w / input_size
        b[:, [1, 3]] *= h / input_size
    elif resize_mode == "letterbox":
        f = input_size / max(w, h)
        new_w, new_h = max(1, round(w * f)), max(1, round(h * f))
        ox, oy = (input_size - new_w) // 2, (input_size - new_h) // 2
        b[:, [0, 2]] = (b[:, [0, 2]] - ox) * (w / new_w)
        b[:, [1, 3]] = (b[:, [1, 3]] - oy) * (h / new_h)
    else:
        raise ValueError(f"detection boxes map back from resize mode full or letterbox, not {resize_mode!r}")
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b.astype(np.float32)


def to_input_pixels(boxes: np.ndarray, image_size: tuple[int, int], input_size: int,
                    resize_mode: str = "full") -> np.ndarray:
    """The inverse of :func:`to_image_pixels`: image pixels -> the model's input pixels (not clipped)."""
    w, h = image_size
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    if resize_mode == "full":
        b[:, [0, 2]] *= input_size / w
        b[:, [1, 3]] *= input_size / h
    elif resize_mode == "letterbox":
        f = input_size / max(w, h)
        new_w, new_h = max(1, round(w * f)), max(1, round(h * f))
        b[:, [0, 2]] = b[:, [0, 2]] * (new_w / w) + (input_size - new_w) // 2
        b[:, [1, 3]] = b[:, [1, 3]] * (new_h / h) + (input_size - new_h) // 2
    else:
        raise ValueError(f"detection boxes map to resize mode full or letterbox, not {resize_mode!r}")
    return b.astype(np.float32)
