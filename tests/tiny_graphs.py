"""Tiny hand-made ONNX graphs (no torch, milliseconds): two convolutions, each optionally in QDQ form."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, qdq: tuple[bool, bool] = (False, False), size: int = 16, classes: int = 4,
              clip: int | None = None) -> Path:
    """input (batch, 3, size, size) -> conv 3x3 (8) -> relu -> conv 1x1 (classes) -> global pool -> logits.

    ``qdq[i]``: convolution i reads a quantised activation and int8 weights (QuantizeLinear ->
    DequantizeLinear on its input, DequantizeLinear on its weights). ``clip``: the quantised activation is
    clipped to 0..clip between the two (torch's form of a 7-bit activation, ``stages/qat.py``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    shapes = [(8, 3, 3, 3), (classes, 8, 1, 1)]
    x = "input"
    for i, (flag, shape) in enumerate(zip(qdq, shapes, strict=True)):
        w = rng.normal(0, 0.3, shape).astype(np.float32)
        if flag:
            scale = np.float32(np.abs(w).max() / 127)
            inits += [numpy_helper.from_array(np.round(w / scale).astype(np.int8), f"w{i}_q"),
                      numpy_helper.from_array(np.asarray(scale, np.float32), f"w{i}_s"),
                      numpy_helper.from_array(np.asarray(0, np.int8), f"w{i}_z"),
                      numpy_helper.from_array(np.asarray(0.05, np.float32), f"a{i}_s"),
                      numpy_helper.from_array(np.asarray(128, np.uint8), f"a{i}_z")]
            q = f"x{i}_q"
            nodes.append(helper.make_node("QuantizeLinear", [x, f"a{i}_s", f"a{i}_z"], [q]))
            if clip is not None:
                inits += [numpy_helper.from_array(np.asarray(0, np.uint8), f"lo{i}"),
                          numpy_helper.from_array(np.asarray(clip, np.uint8), f"hi{i}")]
                nodes.append(helper.make_node("Clip", [q, f"lo{i}", f"hi{i}"], [f"x{i}_c"]))
                q = f"x{i}_c"
            nodes += [helper.make_node("DequantizeLinear", [q, f"a{i}_s", f"a{i}_z"], [f"x{i}_dq"]),
                      helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s", f"w{i}_z"], [f"w{i}"])]
            x = f"x{i}_dq"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        pad = [1, 1, 1, 1] if shape[2] == 3 else [0, 0, 0, 0]
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=pad, name=f"conv{i}"))
        x = f"c{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [x], ["r0"]))
            x = "r0"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_ir(onnx_path: Path, xml: Path) -> Path:
    """The same graph as an OpenVINO IR."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml
