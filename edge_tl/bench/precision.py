"""What an INT8 target's graph really computes in: how many of its layers run in INT8.

An INT8 profile whose accuracy fallback kept every layer in float ships a float model with a few
quantise/dequantise hops; calling it "int8" in a report hides that. The count is read from the graph
that ships (ONNX: a Conv/Gemm/MatMul whose activation *and* weight come through DequantizeLinear, or a
QLinear*/…Integer op; OpenVINO IR: a Convolution/GroupConvolution/MatMul fed by a FakeQuantize), and
from the export manifest (``float_layers``, ``fallback.candidates``) where the graph cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("edge_tl")

_ONNX_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ONNX_INT8 = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")
_OV_LAYERS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def count_onnx(path: Path) -> tuple[int, int]:
    """(INT8 layers, layers) of an ONNX graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    int8 = total = 0
    for node in graph.node:
        if node.op_type in _ONNX_INT8:
            int8 += 1
            total += 1
        elif node.op_type in _ONNX_LAYERS:
            total += 1
            ins = [producer.get(i) for i in node.input[:2]]
            int8 += len(ins) == 2 and all(p == "DequantizeLinear" for p in ins)
    return int8, total


def count_openvino(path: Path) -> tuple[int, int]:
    """(INT8 layers, layers) of an OpenVINO IR: a layer is INT8 when its data input is quantised."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    int8 = total = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _OV_LAYERS:
            continue
        total += 1
        src = op.input_value(0).get_node()
        for _ in range(2):  # look through a layout or type change between the quantiser and the layer
            if src.get_type_name() in ("Reshape", "Convert", "Transpose"):
                src = src.input_value(0).get_node()
        int8 += src.get_type_name() == "FakeQuantize"
    return int8, total


def label(precision: str, int8: int, total: int) -> str:
    if precision == "float":
        return f"float ({total - int8} of {total} layers kept float)"
    if precision == "mostly float":
        return f"mostly float ({total - int8} of {total} layers kept float, {int8} INT8)"
    return f"int8 ({int8} of {total} layers INT8)"


def state(int8: int, total: int) -> str:
    """"int8" when at least half the layers run in INT8, "mostly float" when fewer do, "float" when none."""
    if int8 == 0:
        return "float"
    return "int8" if 2 * int8 >= total else "mostly float"


def precision_state(folder: Path, model_file: str, backend: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """For an INT8 export: ``{precision, int8_layers, layers, float_layers, label, counted_from}``.

    ``precision`` is "int8", "mostly float" or "float"; ``label`` reads e.g. "int8 (61 of 64 layers
    INT8)" or "float (65 of 65 layers kept float)". None when neither the graph nor the manifest says.
    """
    path = folder / model_file
    counted: tuple[int, int] | None = None
    source = "graph"
    try:
        counted = count_openvino(path) if path.suffix == ".xml" else count_onnx(path)
    except Exception as exc:  # noqa: BLE001 - a missing library or an unreadable graph: use the manifest
        log.debug("cannot count the INT8 layers of %s: %s", path, exc)
    if not counted or not counted[1]:
        fb = manifest.get("fallback") or {}
        kept = len(manifest.get("float_layers") or [])
        total = fb.get("candidates")
        if not total:
            return None
        counted, source = (max(0, int(total) - kept), int(total)), "manifest (fallback.candidates - float_layers)"
    int8, total = counted
    st = state(int8, total)
    return {"precision": st, "int8_layers": int8, "layers": total, "float_layers": total - int8,
            "label": label(st, int8, total), "counted_from": source}


def precision_text(cand: dict[str, Any] | None) -> str:
    """The precision a report shows for a candidate: the INT8 state when there is one."""
    if not cand:
        return "–"
    st = cand.get("precision_state")
    return st["label"] if isinstance(st, dict) and st.get("label") else str(cand.get("precision", "–"))
