"""The parts of an exported graph that no quantiser may touch, named from the graph's outputs.

Every quantiser (``stages.quantize``) keeps them float and ``bench`` reports them as "float by design":
both read this one list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .ood import OOD_OUTPUT, OOD_SCOPE

# An anomaly graph (``anomaly.model``) quantises its backbone only: the nearest-neighbour distances
# ‖a‖² − 2a·b + ‖b‖² subtract large, nearly equal terms, and with the bank in 8 bits every decision of
# the synthetic test set's model flipped (agreement 0.5 at any fallback). Nodes outside the backbone
# stages (``/features/to8/``, ``/features/to16/``: aggregation, projection, distances) stay float on every
# backend. Keeping the last block of each stage float too was measured and dropped: on elpv (PaDiM,
# OpenVINO) decision agreement 0.958 -> 0.959, the error builds up over the whole backbone. Other
# NNCF settings on the same model (benchmarks/anomaly_int8_noise.py; agreement with torch on 636
# held-out cells): the export's 0.965, mixed preset 0.953, min/max ranges 0.967, mean-quantile ranges
# 0.928, the whole stride-16 stage float 0.978. None reaches 0.99: INT8 moves a score by a median 2 %
# of the threshold, and about 3 % of elpv cells score that close to it.
ANOMALY_OUTPUT = "anomaly_map"
BACKBONE_STAGES = ("/features/to8/", "/features/to16/")


def anomaly_float_names(names: list[str]) -> list[str]:
    """Of an anomaly graph's node names, those that stay float (see above)."""
    return [n for n in names if not n.startswith(BACKBONE_STAGES)]


# A detection graph (``detect.model``: outputs ``boxes`` and ``scores``) keeps its decode float: every node
# between the graph's outputs and the last layers (convolutions) before them, i.e. after the head's last
# convolutions (``cls_out``, ``reg_out``, ``ctr_out``, one per level): the per-level scale, the clamp and exp
# of the box distances, their multiply by the stride, the flatten and concat of the two levels, the box
# corners (location ± distance, clipped to the input) and the scores sqrt(sigmoid(class) · sigmoid(centre-
# ness)). In 8 bits a distance tensor of range 0..S has steps of S/255 px (1.25 px at 320), the exp turns an
# 8-bit step of its argument into a relative error of the box side, and the score's sqrt magnifies the steps
# of small products (an 8-bit step of 1/255 at the product becomes 0.063 at the score): ranking, which mAP is
# made of, lives there. These ops are cheap (K × (4 + C) values). Found by walking back from the outputs, not
# by name: OpenVINO's conversion folds the per-level scale into ``reg_out`` and renames it. Measured on NEU-DET
# (mobilenet_v2, 320 px, all-INT8 NNCF graph on ONNX Runtime, 180 held-out images): with the decode left to
# NNCF, mAP@0.5 drop 1.62 points against 1.58 with it float: NNCF's presets quantise few of these ops; the
# rule protects quantisers that would (ONNX Runtime's QDQ quantises Sigmoid, Mul, Concat), not measured here.
DETECT_FLOAT_WHY = ("the box and score decode after the head's last convolutions: 8-bit box distances move "
                    "corners by whole pixels (exp turns an 8-bit step into a relative error of the side) and the "
                    "score's sqrt magnifies the 8-bit steps of small scores, where mAP's ranking lives")
DETECT_OUTPUTS = ("boxes", "scores")
# The last convolutions themselves may be quantised (their inputs and weights in 8 bits). Keeping them float
# too was measured and not needed (NEU-DET, mAP@0.5 drop in points, all-INT8 on the 180 selection images /
# shipped graph on the 180 held-out ones): ONNX Runtime 2.58 / 2.41 quantised, 2.49 / 2.67 float; OpenVINO
# 1.98 / -0.26 quantised, 2.34 / -0.30 float.
DETECT_LAST_CONVS_FLOAT = False


@dataclass(frozen=True)
class GraphView:
    """What the decode search needs of a graph, in its backend's node names: ``producers`` (node -> the nodes
    whose outputs it reads), ``ends`` (the nodes that make the graph's outputs) and ``layers`` (its
    convolution / matmul nodes, where the walk back stops)."""

    producers: Mapping[str, Sequence[str]]
    ends: Sequence[str]
    layers: frozenset[str]


def is_detection(outputs: Sequence[str] | set[str]) -> bool:
    """Whether a graph with these output names is a detector's (``boxes`` and ``scores``)."""
    return all(name in outputs for name in DETECT_OUTPUTS)


def detect_float_names(names: list[str], graph: GraphView | None) -> list[str]:
    """Of a detection graph's node names, its decode: every node met walking back from ``graph.ends`` until a
    layer (the head's last convolutions, kept too when ``DETECT_LAST_CONVS_FLOAT``). Without a graph (a
    count of layers): none (the last convolutions, not identifiable by name alone, are not float by design)."""
    if graph is None:
        return []
    kept: set[str] = set()
    seen: set[str] = set()
    todo = list(graph.ends)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in graph.layers:
            if DETECT_LAST_CONVS_FLOAT:
                kept.add(node)
            continue
        kept.add(node)
        todo.extend(graph.producers.get(node, ()))
    return [n for n in names if n in kept]


def float_names(outputs: set[str], names: list[str], graph: GraphView | None = None) -> list[str]:
    """Of a graph's node names, those no quantiser may touch, from the graph's ``outputs``:

    - an anomaly graph's distance part (see above);
    - a classifier's out-of-distribution score (``edge_tl/ood.py``, nodes under ``/ood/``): a Mahalanobis
      distance is a difference of nearly equal large terms, the same hazard as the anomaly distances. The
      pooled features it reads may be quantised (the head reads them too);
    - a detector's decode (:func:`detect_float_names`, from ``graph``).
    """
    if ANOMALY_OUTPUT in outputs:
        return anomaly_float_names(names)
    if OOD_OUTPUT in outputs:
        return [n for n in names if n.startswith(OOD_SCOPE)]
    if is_detection(outputs):
        return detect_float_names(names, graph)
    return []


def output_name(names: set[str] | Sequence[str]) -> str:
    """The name of an output known by several (an OpenVINO tensor keeps its ONNX producer's names too): the
    exported graph's output name this module reads (``boxes``, ``scores``, ``anomaly_map``, ``ood_score``),
    else any one of them ("" for none)."""
    known = [n for n in (*DETECT_OUTPUTS, ANOMALY_OUTPUT, OOD_OUTPUT) if n in names]
    return known[0] if known else next(iter(sorted(names)), "")


def judged(names: Sequence[str], outputs: Sequence[np.ndarray], input_size: int) -> np.ndarray:
    """What the INT8 gates and the layer sensitivity judge of a graph's ``outputs`` (named ``names``, for
    ``input_size`` square inputs): its first output (logits); a detector's boxes and scores together,
    (N, K, 4 + C) float32 = boxes / ``input_size`` (x1 y1 x2 y2 as fractions of the input, so a relative
    error weighs boxes and scores alike) then the scores (``detect.quantize`` unpacks it)."""
    if is_detection(names):
        boxes = np.asarray(outputs[list(names).index("boxes")], np.float32) / np.float32(input_size)
        return np.concatenate([boxes, np.asarray(outputs[list(names).index("scores")], np.float32)], -1)
    return np.asarray(outputs[0], np.float32)
