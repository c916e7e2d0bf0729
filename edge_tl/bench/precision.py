"""What an INT8 target's graph really computes in: how many of its layers run in INT8.

An INT8 profile whose accuracy fallback kept every layer in float ships a float model with a few
quantise/dequantise hops; calling it "int8" in a report hides that. The count is read from the graph
that ships (ONNX: a Conv/Gemm/MatMul whose activation *and* weight come through DequantizeLinear, or a
QLinear*/…Integer op; OpenVINO IR: a Convolution/GroupConvolution/MatMul fed by a FakeQuantize or by
the dequantisation of an 8-bit tensor, ``Convert`` -> ``Subtract`` -> ``Multiply``), and from the export
manifest (``float_layers``, ``fallback.candidates``) where the graph cannot be read.
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
    layers, _ = onnx_layers(path)
    return sum(q for _, q in layers), len(layers)


def onnx_layers(path: Path) -> tuple[list[tuple[str, bool]], set[str]]:
    """Every layer of an ONNX graph as (node name, runs in INT8), and the graph's output names."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    layers: list[tuple[str, bool]] = []
    for node in graph.node:
        if node.op_type in _ONNX_INT8:
            layers.append((node.name, True))
        elif node.op_type in _ONNX_LAYERS:
            ins = [producer.get(i) for i in node.input[:2]]
            layers.append((node.name, len(ins) == 2 and all(p == "DequantizeLinear" for p in ins)))
    return layers, {o.name for o in graph.output}


def count_openvino(path: Path) -> tuple[int, int]:
    """(INT8 layers, layers) of an OpenVINO IR: a layer is INT8 when its data input is quantised."""
    layers, _ = openvino_layers(path)
    return sum(q for _, q in layers), len(layers)


def openvino_layers(path: Path) -> tuple[list[tuple[str, bool]], set[str]]:
    """Every layer of an OpenVINO IR as (friendly name, runs in INT8), and the model's output names."""
    from ..backends.openvino_.runner import shared_core

    model = shared_core().read_model(str(path))
    layers: list[tuple[str, bool]] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _OV_LAYERS:
            continue
        layers.append((op.get_friendly_name(), _quantised(op.input_value(0).get_node())))
    return layers, {name for out in model.outputs for name in out.get_names()}


def _quantised(src: Any) -> bool:
    """Whether the OpenVINO node ``src`` (a layer's data input) hands it a quantised activation: a
    FakeQuantize, or an 8-bit integer tensor dequantised (``Convert`` to float, zero point subtracted,
    scaled), which is what OpenVINO's ONNX reader makes of a QuantizeLinear -> DequantizeLinear pair it
    cannot fold into a FakeQuantize: torch's QAT graph clips its 7-bit activations between the two
    (``stages/qat.py``), and its layers run in u8 all the same (the CPU plugin's runtime precision)."""
    for _ in range(2):  # look through a layout or type change between the quantiser and the layer
        if src.get_type_name() in ("Reshape", "Convert", "Transpose"):
            src = src.input_value(0).get_node()
    if src.get_type_name() == "FakeQuantize":
        return True
    if src.get_type_name() == "Multiply":  # the scale: its other input is a constant
        inputs = [src.input_value(k).get_node() for k in range(src.get_input_size())]
        data = [n for n in inputs if n.get_type_name() != "Constant"]
        if len(data) != 1:
            return False
        src = data[0]
        if src.get_type_name() == "Subtract":  # the zero point
            src = src.input_value(0).get_node()
        if src.get_type_name() == "Convert":
            return src.get_input_element_type(0).get_type_name() in ("u8", "i8")
    return False


def by_design(outputs: set[str], float_names: list[str]) -> tuple[list[str], str | None]:
    """Of the float layers ``float_names``, those no quantiser may touch (the OOD score's distance, an
    anomaly graph's distance part: ``fixed_float.float_names``), and what they are."""
    from ..fixed_float import ANOMALY_OUTPUT
    from ..fixed_float import float_names as fixed_float
    from ..ood import OOD_OUTPUT

    kept = fixed_float(outputs, float_names)
    if not kept:
        return [], None
    return kept, "anomaly distance" if ANOMALY_OUTPUT in outputs else "OOD score" if OOD_OUTPUT in outputs else None


def label(precision: str, int8: int, total: int, design: int = 0, why: str | None = None) -> str:
    """"int8 (53 of 55 layers INT8; 2 float by design (OOD score))": ``design`` of the float layers are
    float on purpose (the export's "0 layer(s) in float" counts only the ones the fallback kept)."""
    extra = f"; {design} float by design ({why or 'fixed float part'})" if design else ""
    if precision == "float":  # every layer float: which of them had to be says nothing more
        return f"float ({total - int8} of {total} layers kept float)"
    if precision == "mostly float":
        return f"mostly float ({total - int8} of {total} layers kept float, {int8} INT8{extra})"
    return f"int8 ({int8} of {total} layers INT8{extra})"


def state(int8: int, total: int) -> str:
    """"int8" when at least half the layers run in INT8, "mostly float" when fewer do, "float" when none."""
    if int8 == 0:
        return "float"
    return "int8" if 2 * int8 >= total else "mostly float"


def precision_state(folder: Path, model_file: str, backend: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """For an INT8 export: ``{precision, int8_layers, layers, float_layers, label, counted_from}``.

    ``precision`` is "int8", "mostly float" or "float"; ``label`` reads e.g. "int8 (61 of 64 layers
    INT8)", "int8 (53 of 55 layers INT8; 2 float by design (OOD score))" or "float (65 of 65 layers kept
    float)". ``float_by_design``: float layers no quantiser may touch (not the fallback's). None when
    neither the graph nor the manifest says.
    """
    path = folder / model_file
    counted: tuple[int, int] | None = None
    source = "graph"
    design: list[str] = []
    why: str | None = None
    try:
        layers, outputs = openvino_layers(path) if path.suffix == ".xml" else onnx_layers(path)
        counted = sum(q for _, q in layers), len(layers)
        design, why = by_design(outputs, [name for name, q in layers if not q])
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
    # Judged on the layers a quantiser may touch: a float-by-design part is not an accuracy fallback.
    st = state(int8, total - len(design))
    return {"precision": st, "int8_layers": int8, "layers": total, "float_layers": total - int8,
            "float_by_design": len(design), "float_by_design_what": why, "float_by_design_layers": design,
            "label": label(st, int8, total, len(design), why), "counted_from": source}


def precision_text(cand: dict[str, Any] | None) -> str:
    """The precision a report shows for a candidate: the INT8 state when there is one."""
    if not cand:
        return "–"
    st = cand.get("precision_state")
    return st["label"] if isinstance(st, dict) and st.get("label") else str(cand.get("precision", "–"))
