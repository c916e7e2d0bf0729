"""NMS inside the detection graph, for the backends whose descriptor says so (``BackendFacts.nms_in_graph``).

:func:`append_nms` ends the exported box graph (``boxes`` (B, K, 4) input pixels, ``scores`` (B, K, C)) with
the standard ONNX ``NonMaxSuppression`` and the ops that turn its selected indices into fixed-shape, padded
detections (``runtime.nms.NMS_OUTPUTS``: ``num_detections`` (B,) int32, ``det_boxes`` (B, M, 4),
``det_scores`` (B, M), ``det_classes`` (B, M) int32, padding 0 / 0 / -1), highest score first per image.
Only standard ops (no TensorRT plugin), so ONNX Runtime runs the very graph a TensorRT device builds from, and
the export checks it here against the numpy NMS (``runtime.nms.nms``) on the validation images.

The same NMS as ``runtime.nms.nms``: per class, a (box, class) pair is a candidate when its score >=
``score_threshold`` (``NonMaxSuppression`` keeps scores strictly above its threshold, in ONNX Runtime and in
TensorRT's INMSLayer: the graph's threshold is the float32 just below, so ">" there is ">=" here for every
float32 score); a candidate is dropped when its IoU with a kept one of its class exceeds ``iou_threshold``;
the ``max_detections`` best over all classes are kept (per class at most as many: the best
``max_detections`` over all classes can hold no more of one class). The final ranking is one TopK over the
selected scores laid out box-major (index k * C + c), so equal scores rank by box then class, as the numpy
NMS's stable sort does (ONNX TopK: "the element with lower index appears first"; TensorRT does not promise it).

TensorRT (UNVERIFIED on hardware, from its documentation): the ONNX parser maps ``NonMaxSuppression`` to an
``INMSLayer`` from TensorRT 8.5 (onnx-tensorrt ``docs/operators.md``: "NonMaxSuppression | Y | FP32, FP16";
8.4 and older: experimental, through a plugin, output padded); its threshold inputs must be initializers
(they are), and TopK's ``K`` an initializer (it is). The layer sorts at most its TopK box limit of candidates
per image (5000; 2000 on SM 5.3 / 6.2, Jetson Nano and TX2, whose TensorRT stops at 8.2) before selecting:
the manifest records K x C (``nms_candidates``), and the export warns when the limit can cut candidates the
numpy NMS would consider. ScatterND / GatherND / GatherElements / TopK / Where are in the same operator table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, require
from ..runtime.nms import IOU_THRESHOLD, MAX_DETECTIONS, NMS_OUTPUTS, SCORE_THRESHOLD

# TensorRT INMSLayer's TopK box limit (its operator documentation): candidates considered per image.
TRT_NMS_TOPK_LIMIT = 5000
TRT_NMS_TOPK_LIMIT_SMALL = 2000  # SM 5.3 and 6.2 (Jetson Nano, TX2)
_P = "nms/"  # prefix of every name this module adds


def _shape(value_info: Any) -> list[int | str]:
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def append_nms(src: str | os.PathLike[str], dest: str | os.PathLike[str], locations: int, classes: int, *,
               score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
               max_detections: int = MAX_DETECTIONS) -> dict[str, Any]:
    """Write ``src`` (a box graph: outputs ``boxes`` (B, K, 4), ``scores`` (B, K, C); K ``locations`` and C
    ``classes``, as the detector's spec says: the exporter may leave them symbolic) with NMS appended to
    ``dest`` (atomically; ``dest`` may be ``src``). Returns what the manifest records: the output names,
    ``max_detections`` M (``min(max_detections, K * C)``), the thresholds as given and as written,
    ``nms_candidates`` (K * C) and ``opset``.

    ArtifactError (one line) when the graph is not a box graph (fixed dimensions other than ``locations`` /
    ``classes`` / 4) or its opset is below 13; ValueError for thresholds outside [0, 1] or ``max_detections``
    < 1."""
    onnx = require("onnx", "train")
    from onnx import TensorProto, helper, numpy_helper

    from ..manifest import atomic_path

    if not (0.0 <= score_threshold <= 1.0 and 0.0 <= iou_threshold <= 1.0) or int(max_detections) < 1:
        raise ValueError(f"NMS needs thresholds in [0, 1] and max_detections >= 1, got score {score_threshold}, "
                         f"IoU {iou_threshold}, {max_detections}")
    model = onnx.load(str(src))
    g = model.graph
    outs = {o.name: o for o in g.output}
    if set(outs) != {"boxes", "scores"}:
        raise ArtifactError(f"{src}: outputs {sorted(outs)}; NMS is appended to a box graph (boxes, scores)")
    bshape, sshape = _shape(outs["boxes"]), _shape(outs["scores"])
    k, c = int(locations), int(classes)
    fits = [(d, want) for d, want in zip((*bshape[1:], *sshape[1:]), (k, 4, k, c), strict=False)]
    if len(bshape) != 3 or len(sshape) != 3 or any(isinstance(d, int) and d != want for d, want in fits):
        raise ArtifactError(f"{src}: boxes {bshape} / scores {sshape}; NMS needs (B, {k}, 4) / (B, {k}, {c})")
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # NonMaxSuppression is opset 10/11; ReduceSum and Unsqueeze take axes as inputs from 13
        raise ArtifactError(f"{src}: opset {opset}; the NMS graph is written for opset 13 or newer")
    m = min(int(max_detections), k * c)
    # ">" in NonMaxSuppression is ">=" for float32 scores at the next float32 below the threshold.
    graph_threshold = float(np.nextafter(np.float32(score_threshold), np.float32(-np.inf)))

    def const(name: str, value: Any, dtype: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), _P + name))
        return _P + name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        g.node.append(helper.make_node(op, inputs, [_P + name], name=_P + name, **attrs))
        return _P + name

    max_per_class = const("max_output_boxes_per_class", [m], np.int64)
    iou = const("iou_threshold", [iou_threshold], np.float32)
    thr = const("score_threshold", [graph_threshold], np.float32)
    scores_ck = node("Transpose", ["scores"], "scores_bck", perm=[0, 2, 1])  # NMS wants (B, C, K)
    selected = node("NonMaxSuppression", ["boxes", scores_ck, max_per_class, iou, thr], "selected",
                    center_point_box=0)  # (S, 3) [batch, class, box]; corners in either order
    bkc = node("Gather", [selected, const("bkc", [0, 2, 1], np.int64)], "selected_bkc", axis=1)
    sel_scores = node("GatherND", ["scores", bkc], "selected_scores")  # (S,)
    # Every (box, class) pair NMS did not keep scores -1 (below any score), the kept ones their own score.
    minus_one = helper.make_tensor(_P + "minus_one", TensorProto.FLOAT, [1], [-1.0])
    empty = node("ConstantOfShape", [node("Shape", ["scores"], "scores_shape")], "unselected", value=minus_one)
    dense = node("ScatterND", [empty, bkc, sel_scores], "dense")  # (B, K, C)
    flat = node("Reshape", [dense, const("flat_shape", [0, -1], np.int64)], "dense_flat")  # (B, K*C), k*C + c
    g.node.append(helper.make_node("TopK", [flat, const("k", [m], np.int64)], [_P + "top", _P + "top_index"],
                                   name=_P + "topk", axis=1, largest=1, sorted=1))
    top, top_index = _P + "top", _P + "top_index"
    valid = node("Greater", [top, const("half", -0.5, np.float32)], "valid")  # (B, M) bool
    box = node("Div", [top_index, const("classes", c, np.int64)], "box_index")  # non-negative: floor division
    cls = node("Sub", [top_index, node("Mul", [box, _P + "classes"], "box_times_c")], "class_index")
    box3 = node("Unsqueeze", [box, const("axis2", [2], np.int64)], "box_index3")
    gather_shape = node("Concat", [node("Shape", [box], "box_shape"), const("four", [4], np.int64)], "gather_shape",
                        axis=0)
    picked = node("GatherElements", ["boxes", node("Expand", [box3, gather_shape], "box_index_b")],
                  "picked_boxes", axis=1)  # (B, M, 4)
    # ReduceSum over a float (TensorRT's table lists it for FP32 / FP16), then int32 as EfficientNMS gives it.
    count = node("ReduceSum", [node("Cast", [valid], "valid_f", to=TensorProto.FLOAT), const("axis1", [1], np.int64)],
                 "count_f", keepdims=0)
    g.node.append(helper.make_node("Cast", [count], [NMS_OUTPUTS[0]], name=_P + "num_detections",
                                   to=TensorProto.INT32))
    g.node.append(helper.make_node("Where", [node("Unsqueeze", [valid, _P + "axis2"], "valid3"), picked,
                                             const("zero", 0.0, np.float32)], [NMS_OUTPUTS[1]], name=_P + "det_boxes"))
    g.node.append(helper.make_node("Where", [valid, top, _P + "zero"], [NMS_OUTPUTS[2]], name=_P + "det_scores"))
    g.node.append(helper.make_node("Where", [valid, node("Cast", [cls], "class_i32", to=TensorProto.INT32),
                                             const("no_class", -1, np.int32)], [NMS_OUTPUTS[3]],
                                   name=_P + "det_classes"))
    batch = bshape[0]
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info(NMS_OUTPUTS[0], TensorProto.INT32, [batch]),
        helper.make_tensor_value_info(NMS_OUTPUTS[1], TensorProto.FLOAT, [batch, m, 4]),
        helper.make_tensor_value_info(NMS_OUTPUTS[2], TensorProto.FLOAT, [batch, m]),
        helper.make_tensor_value_info(NMS_OUTPUTS[3], TensorProto.INT32, [batch, m])])
    onnx.checker.check_model(model)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return {"names": list(NMS_OUTPUTS), "max_detections": m, "score_threshold": float(score_threshold),
            "graph_score_threshold": graph_threshold, "iou_threshold": float(iou_threshold),
            "nms_candidates": k * c, "opset": opset}


def topk_limit_warning(candidates: int) -> str | None:
    """Why TensorRT's INMSLayer may consider fewer candidates than the numpy NMS, or None when it cannot.

    Only the 5000 limit counts: the 2000 one is SM 5.3 / 6.2's (Jetson Nano, TX2), boards whose last JetPack
    (4.6) brings TensorRT 8.2, older than the parser's INMSLayer (8.5)."""
    if candidates <= TRT_NMS_TOPK_LIMIT:
        return None
    return (f"the graph has {candidates} (box, class) candidates per image; TensorRT's NMS layer sorts at most "
            f"{TRT_NMS_TOPK_LIMIT} of them: on an image with more above the score threshold its boxes may differ "
            "from the runtime's NMS")
