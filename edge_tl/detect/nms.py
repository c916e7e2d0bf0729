"""The detector's NMS and pixel maps, under the name manifests of earlier exports cite: the code is
:mod:`edge_tl.runtime.nms` (the torch-free device side runs it; it may not import this task package)."""

from ..runtime.nms import (
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    Detections,
    batched_nms,
    iou_matrix,
    nms,
    to_image_pixels,
    to_input_pixels,
)

__all__ = ["IOU_THRESHOLD", "MAX_DETECTIONS", "SCORE_THRESHOLD", "Detections", "batched_nms", "iou_matrix", "nms",
           "to_image_pixels", "to_input_pixels"]
