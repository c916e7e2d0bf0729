"""ONNX Runtime INT8 graphs: the Convs ORT computes in float get float weights (``onnx_graph.fold_float_weights``),
also after the fallback bypasses an activation quantiser (``onnx_graph.without``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_tl.backends.onnxruntime_.onnx_graph import fold_float_weights, without


def _qdq_model() -> onnx.ModelProto:
    """input -> Q/DQ -> conv1 (per-channel int8 weight) -> Relu -> Q/DQ ("act") -> conv2 -> float output.

    ORT fuses conv1 (DQ in, Q out through the Relu) into a QLinearConv; conv2 makes the float output."""
    rng = np.random.default_rng(0)
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    nodes = [helper.make_node("QuantizeLinear", ["input", const("s_in", np.float32(1 / 255)),
                                                 const("z_in", np.uint8(0))], ["q_in"], name="q_input"),
             helper.make_node("DequantizeLinear", ["q_in", "s_in", "z_in"], ["x0"], name="dq_input")]
    for i, cin in ((1, 3), (2, 4)):
        w = rng.integers(-127, 128, (4, cin, 3, 3)).astype(np.int8)
        const(f"w{i}", w)
        const(f"ws{i}", (rng.random(4) * 0.01 + 0.001).astype(np.float32))
        const(f"wz{i}", np.zeros(4, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wf{i}"], axis=0,
                                      name=f"dq_w{i}"))
        const(f"b{i}", (rng.standard_normal(4) * 0.1).astype(np.float32))
    nodes += [helper.make_node("Conv", ["x0", "wf1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("QuantizeLinear", ["r1", const("s_act", np.float32(0.02)),
                                                  const("z_act", np.uint8(0))], ["q_act"], name="q_act"),
              helper.make_node("DequantizeLinear", ["q_act", "s_act", "z_act"], ["x1"], name="dq_act"),
              helper.make_node("Conv", ["x1", "wf2", "b2"], ["out"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # The reference semantics of Q/DQ (no fused integer kernels): a folded weight must compute the same values.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _weight_source(model: onnx.ModelProto, conv: str) -> str:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    w = next(n for n in model.graph.node if n.name == conv).input[1]
    return "initializer" if w in inits else producers[w]


def test_float_convs_get_float_weights_of_the_same_values() -> None:
    model = _qdq_model()
    x = np.random.default_rng(1).random((2, 3, 8, 8), np.float32)
    before = _run(model, x)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_float_weights(folded) == ["conv2"]  # conv1 is a QLinearConv in ORT: its Q/DQ stay
    onnx.checker.check_model(folded)
    assert _weight_source(folded, "conv1") == "DequantizeLinear"
    assert _weight_source(folded, "conv2") == "initializer"
    names = {n.name for n in folded.graph.node}
    assert "dq_w2" not in names and "dq_w1" in names
    assert "w2" not in {i.name for i in folded.graph.initializer}  # the int8 copy is gone
    np.testing.assert_array_equal(_run(folded, x), before)
    assert fold_float_weights(folded) == []  # nothing left to fold


def test_bypassing_a_quantiser_folds_the_weights_of_the_convs_it_leaves_float() -> None:
    model = _qdq_model()
    x = np.random.default_rng(2).random((2, 3, 8, 8), np.float32)
    bypassed = without(model, ["q_act"])
    # conv1 now makes a float tensor, conv2 reads one: both run in float, on float weights.
    assert _weight_source(bypassed, "conv1") == "initializer"
    assert _weight_source(bypassed, "conv2") == "initializer"
    assert not [n for n in bypassed.graph.node if n.op_type == "DequantizeLinear" and n.name.startswith("dq_w")]
    # Same values as bypassing alone (the Relu back in place of the quantiser's clamp): conv2 on relu(conv1).
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    for n in plain.graph.node:
        if n.name == "conv2":
            n.input[0] = "r1"
    np.testing.assert_allclose(_run(bypassed, x), _run(plain, x), rtol=1e-6, atol=1e-6)
