"""Structural checks of the ONNX graph a TensorRT device builds its engine from.

The workstation cannot run TensorRT, so it proves what it can about the graph it ships: TensorRT's
explicit quantisation takes only symmetric signed INT8 Q/DQ (zero point 0), per-tensor scales on
activations and per-channel scales on weights along the output-channel axis, from opset 13 on, and
the engine's optimisation profile needs a batch axis it may vary with C, H, W fixed. A graph that
breaks one of these either fails to parse on the device or silently loses accuracy, so each is
checked here, where re-exporting is cheap.

Sources: TensorRT developer guide, "Explicit Quantization" (symmetric INT8 Q/DQ, constant scales,
per-channel weights only); onnx-tensorrt ``docs/operators.md`` (DequantizeLinear: INT8, zero point
must be zero; QuantizeLinear: ``y_zero_point`` must be 0). ONNX Runtime's ``quantize_static`` puts an
INT32 DequantizeLinear on each bias unless ``QuantizeBias`` is False; TensorRT rejects it
("only activation types allowed as input to this layer", onnx-tensorrt#850).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import require

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MIN_OPSET = 13  # per-axis (per-channel) Q/DQ arrived in opset 13

# Which axis of the weight holds the output channels, per consuming op (ONNX operator specs):
# Conv W is (M, C/g, kH, kW); ConvTranspose W is (C, M/g, kH, kW); Gemm B is (N, K) when transB=1
# else (K, N); MatMul B is (..., K, N).
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class _Analysis:
    graph_problems: list[str] = field(default_factory=list)
    node_problems: dict[str, list[str]] = field(default_factory=dict)  # message -> node names
    stats: Counter = field(default_factory=Counter)
    opset: int = 0
    input_shape: list[int | str] | None = None

    def flag(self, message: str, node: str) -> None:
        """One problem of one node; nodes with the same problem are reported together."""
        self.node_problems.setdefault(message, []).append(node)

    @property
    def problems(self) -> list[str]:
        out = list(self.graph_problems)
        for message, nodes in self.node_problems.items():
            shown = ", ".join(nodes[:3]) + (", ..." if len(nodes) > 3 else "")
            out.append(f"{message} [{len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown}]")
        return out


def _load(onnx_path: str | os.PathLike[str]) -> Any:
    onnx = require("onnx", "train")
    return onnx.load(str(onnx_path))


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name (scales and zero points must be one of these)."""
    from onnx import numpy_helper

    out = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _weight_axis(consumer: Any, weight_rank: int) -> int | None:
    """The output-channel axis of the weight that ``consumer`` reads as its input 1."""
    op = consumer.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    if op == "MatMul":
        return weight_rank - 1
    return None


def _analyse(model: Any, max_batch: int | None, require_quantized: bool) -> _Analysis:
    a = _Analysis(opset=_opset(model))
    graph = model.graph
    if a.opset < MIN_OPSET:
        a.graph_problems.append(f"opset {a.opset} is below {MIN_OPSET}: per-channel Q/DQ needs opset "
                                f"{MIN_OPSET} or newer (re-export with a target opset >= 13)")
    consts = _constants(graph)
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)

    _check_input(graph, consts, max_batch, a)

    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        name = node.name or node.output[0]
        a.stats[node.op_type] += 1
        if node.domain not in ("", "ai.onnx"):
            a.flag(f"Q/DQ in domain {node.domain!r}: TensorRT parses only the standard ONNX Q/DQ ops "
                   "(quantise without UseQDQContribOps)", name)
            continue
        if _attr(node, "block_size", 0):
            a.flag("blocked Q/DQ: TensorRT INT8 takes per-tensor or per-channel scales only", name)
        scale = consts.get(node.input[1])
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            a.flag("Q/DQ scale is not a constant: TensorRT needs constant Q/DQ scales", name)
            continue
        x = node.input[0]
        # The quantised type: the zero point's, else (DQ with no zero point) the input's, else int8.
        qtype = zp.dtype if zp is not None else (consts[x].dtype if node.op_type == "DequantizeLinear"
                                                  and x in consts else np.dtype(np.int8))
        a.stats[f"dtype_{qtype}"] += 1
        if qtype == np.uint8:
            a.flag("uint8 Q/DQ: TensorRT needs signed int8 Q/DQ; quantise with activation_type=QInt8 and "
                   "ActivationSymmetric=True", name)
        elif qtype == np.int32:
            a.flag("int32 bias DequantizeLinear: TensorRT accepts int8 Q/DQ only; quantise with "
                   "QuantizeBias=False (biases stay float)", name)
        elif qtype != np.int8:
            a.flag(f"{qtype} Q/DQ: this check covers int8 TensorRT engines only", name)
        if zp is not None and np.any(zp != 0):
            a.stats["nonzero_zero_points"] += 1
            a.flag("non-zero zero point (asymmetric): TensorRT quantisation is symmetric (zero point 0); "
                   "quantise with ActivationSymmetric=True and WeightSymmetric=True", f"{name}={_brief(zp)}")
        if scale.ndim > 1:
            a.flag("Q/DQ scale of rank > 1: TensorRT takes a scalar (per-tensor) or 1-D (per-channel) scale",
                   name)
            continue
        per_channel = scale.ndim == 1 and scale.size > 1
        if node.op_type == "QuantizeLinear":
            bad = [c for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                a.flag("QuantizeLinear not followed by DequantizeLinear: TensorRT expects Q/DQ pairs",
                       f"{name}->{bad[0].op_type}")
        weight = _weight_source(node, consts, producers)
        if weight is None:
            a.stats["activation_" + node.op_type] += 1
            if per_channel:
                a.flag("per-channel activation Q/DQ: TensorRT takes per-tensor activation scales only", name)
            continue
        if node.op_type == "DequantizeLinear":
            # A weight's Q (AddQDQPairToWeight) needs no check of its own: its DQ partner gets them.
            _check_weight_dq(node, name, scale, per_channel, weight, consumers, a)
    if require_quantized and not a.stats["DequantizeLinear"]:
        a.graph_problems.append("the graph has no Q/DQ nodes: an int8 TensorRT target needs the quantised "
                                "(QDQ) graph, not the float one")
    return a


def _brief(arr: np.ndarray) -> str:
    flat = np.asarray(arr).ravel()
    return str(flat[0]) if flat.size == 1 else f"{int(np.count_nonzero(flat))} of {flat.size} non-zero"


def _weight_source(node: Any, consts: dict[str, np.ndarray], producers: dict[str, Any]) -> np.ndarray | None:
    """The constant weight behind a Q/DQ node, or None when it quantises an activation."""
    x = node.input[0]
    if x in consts:
        return consts[x]
    prev = producers.get(x)
    if node.op_type == "DequantizeLinear" and prev is not None and prev.op_type == "QuantizeLinear":
        return consts.get(prev.input[0])  # float weight with a Q/DQ pair (AddQDQPairToWeight)
    return None


def _check_weight_dq(node: Any, name: str, scale: np.ndarray, per_channel: bool, weight: np.ndarray,
                     consumers: dict[str, list[Any]], a: _Analysis) -> None:
    users = consumers.get(node.output[0], [])
    layer = next((u for u in users if u.op_type in _WEIGHT_INPUT and len(u.input) > 1
                  and u.input[_WEIGHT_INPUT[u.op_type]] == node.output[0]), None)
    if layer is None:
        a.stats["weight_dq_other"] += 1
        return  # a constant that no Conv/Gemm/MatMul takes as its weight: nothing to say about its axis
    a.stats["weight_dq"] += 1
    if not per_channel:
        a.flag("per-tensor weight DequantizeLinear: quantise weights per channel (per_channel=True) for "
               "TensorRT INT8 accuracy", f"{name} ({layer.op_type})")
        return
    rank = weight.ndim
    expected = _weight_axis(layer, rank)
    axis = int(_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    if expected is not None and axis != expected:
        a.flag(f"weight DequantizeLinear per channel on the wrong axis: {layer.op_type} weights hold their "
               f"output channels on axis {expected}", f"{name} (axis {axis})")
    elif scale.size != weight.shape[axis]:
        a.flag("weight DequantizeLinear with a scale count other than the output-channel count",
               f"{name} ({scale.size} scales, {weight.shape[axis]} channels)")
    else:
        a.stats["per_channel_weights"] += 1


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def _check_input(graph: Any, consts: dict[str, np.ndarray], max_batch: int | None, a: _Analysis) -> None:
    problems = a.graph_problems
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        problems.append(f"the graph has {len(inputs)} inputs; the TensorRT runner feeds one image batch")
        if not inputs:
            return
    inp = inputs[0]
    dims = _dims(inp)
    a.input_shape = dims
    if len(dims) != 4:
        problems.append(f"input {inp.name!r} has shape {dims}; expected NCHW (4-D)")
        return
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        problems.append(f"input {inp.name!r} has shape {dims}: C, H and W must be fixed for the engine's "
                        "explicit shape profile")
    batch = dims[0]
    if isinstance(batch, int) and batch > 0 and max_batch is not None and batch < max_batch:
        problems.append(f"input {inp.name!r} has a fixed batch of {batch}; the engine's profile needs "
                        f"batches up to {max_batch}: export with a dynamic batch axis")
    elem = inp.type.tensor_type.elem_type
    if elem not in (1, 10):  # FLOAT, FLOAT16
        problems.append(f"input {inp.name!r} has ONNX element type {elem}; the runner feeds float32 images")


def check_tensorrt_ready(onnx_path: str | os.PathLike[str], max_batch: int | None = None,
                         require_quantized: bool = False) -> list[str]:
    """Problems that would stop TensorRT building (or building faithfully) from this graph; [] = ready.

    Checks: opset >= 13; every Q/DQ is signed int8 with zero point 0 and constant scales (no uint8, no
    int32 bias DQ); weight DQ scales per channel along the output-channel axis of the Conv / Gemm /
    MatMul that reads them; activation Q/DQ per tensor; each Q followed by a DQ; one NCHW input with
    static C, H, W and a batch axis that an optimisation profile of 1..``max_batch`` can use. With
    ``require_quantized``, a graph without Q/DQ nodes is a problem too (an int8 target shipped the
    float graph).
    """
    return _analyse(_load(onnx_path), max_batch, require_quantized).problems


def summary(onnx_path: str | os.PathLike[str], max_batch: int | None = None,
            require_quantized: bool = False) -> dict[str, Any]:
    """Counts for the target manifest: opset, Q/DQ nodes, per-channel weights, input shape, problems."""
    a = _analyse(_load(onnx_path), max_batch, require_quantized)
    s = a.stats
    return {
        "opset": a.opset,
        "input_shape": a.input_shape,
        "quantize_linear": s["QuantizeLinear"],
        "dequantize_linear": s["DequantizeLinear"],
        "activation_qdq": s["activation_QuantizeLinear"] + s["activation_DequantizeLinear"],
        "weight_dq": s["weight_dq"],
        "per_channel_weights": s["per_channel_weights"],
        "nonzero_zero_points": s["nonzero_zero_points"],
        "qdq_dtypes": {k.removeprefix("dtype_"): v for k, v in sorted(s.items()) if k.startswith("dtype_")},
        "tensorrt_ready": not a.problems,
        "problems": a.problems,
    }


def float_type(onnx_path: str | os.PathLike[str]) -> str:
    """``"fp16"`` when the graph's float weights are half precision, else ``"fp32"``."""
    model = _load(onnx_path)
    types = Counter(init.data_type for init in model.graph.initializer if init.data_type in (1, 10))
    return "fp16" if types[10] > types[1] else "fp32"


def to_fp16(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Write an fp16 copy of a float graph with float32 inputs and outputs.

    TensorRT 11 builds strongly typed networks only (its BuilderFlag.FP16 is gone; see NVIDIA's
    "Migrating from TensorRT 10.x to 11.x"): the precision is the graph's, so an fp16 engine needs an
    fp16 graph. Keeping the I/O in float32 means the runner and ``eval.npz`` stay the same. Uses ONNX
    Runtime's converter (``onnxruntime.transformers.float16``), which keeps values outside fp16's range
    clamped and leaves ops without fp16 kernels in float32.
    """
    from ...manifest import atomic_path

    # On a device the tensorrt extra brings onnx + onnxruntime for this conversion.
    onnx = require("onnx", "tensorrt")
    require("onnxruntime", "tensorrt")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return dest
