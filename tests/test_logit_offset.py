"""The INT8 logit-offset correction (issue 26): the quantised graph's mean logit error on the calibration
images, subtracted in float at the output, in both quantisers' graphs (ONNX and OpenVINO)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_tl.backends.int8 import LOGITS, OFFSET_NODE, correct_logit_offset, logit_offset
from edge_tl.backends.onnxruntime_ import onnx_graph
from edge_tl.calibration import CalibrationSet
from edge_tl.targets import get_target

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)).astype(np.float32)
BIAS = np.asarray([0.2, -0.1, 0.0], np.float32)


def _graph(bias: np.ndarray, outputs: tuple[str, str] = (LOGITS, "ood_score")) -> onnx.ModelProto:
    """x (N, 4) -> x W + bias as ``logits``, and a second output that reads x only (as the OOD score does)."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="fc"),
         helper.make_node("Add", ["xw", "b"], [outputs[0]], name="fc_bias"),
         helper.make_node("ReduceSumSquare", ["x"], [outputs[1]], name="ood", keepdims=0)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _cset(x: np.ndarray, classes: list[str | None]) -> CalibrationSet:
    images = [{"path": f"{i}.png", "sha256": f"{i:064x}", "class": c} for i, c in enumerate(classes)]
    labelled = None if any(c is None for c in classes) else sorted({c for c in classes if c is not None})
    return CalibrationSet(x, images, "train-split", "", len(x), 0, classes=labelled)


def test_the_offset_is_the_class_balanced_centred_mean_error() -> None:
    f = np.zeros((4, 2), np.float32)
    # Class a (3 images) errs by (+0.3, 0), class b (1 image) by (-0.1, 0).
    q = np.asarray([[0.3, 0], [0.3, 0], [0.3, 0], [-0.1, 0]], np.float32)
    balanced = logit_offset(q, f, ["a", "a", "a", "b"])
    np.testing.assert_allclose(balanced, [0.05, -0.05], atol=1e-6)  # mean of (0.3, -0.1) = 0.1, centred
    plain = logit_offset(q, f)  # an unlabelled calibration folder: every image counts once
    np.testing.assert_allclose(plain, [0.1, -0.1], atol=1e-6)
    assert abs(float(balanced.sum())) < 1e-6


def test_onnx_shift_keeps_the_output_names_and_moves_only_the_logits(tmp_path: Path) -> None:
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    model = _graph(BIAS)
    offset = np.asarray([0.5, -0.25, -0.25], np.float32)
    shifted = onnx_graph.shift_logits(model, offset)
    assert [o.name for o in shifted.graph.output] == [LOGITS, "ood_score"]
    assert any(n.name == OFFSET_NODE and n.op_type == "Add" for n in shifted.graph.node)
    sess_before = onnx_graph.ort_session(model.SerializeToString())
    sess_after = onnx_graph.ort_session(shifted.SerializeToString())
    before, after = sess_before.run(None, {"x": x}), sess_after.run(None, {"x": x})
    np.testing.assert_allclose(after[0], before[0] - offset, atol=1e-6)
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    with pytest.raises(RuntimeError, match="no 'logits' output"):
        onnx_graph.shift_logits(_graph(BIAS, ("scores", "ood_score")), offset)


def test_openvino_shift_keeps_the_output_names_and_moves_only_the_logits(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    from edge_tl.backends.openvino_.quantize import shift_logits

    path = tmp_path / "tiny.onnx"
    onnx.save(_graph(BIAS), str(path))
    model = ov.convert_model(str(path))
    offset = np.asarray([0.5, -0.25, -0.25], np.float32)
    shifted = shift_logits(model, offset)
    assert [set(o.get_names()) for o in shifted.outputs] == [{LOGITS}, {"ood_score"}]
    assert OFFSET_NODE in {op.get_friendly_name() for op in shifted.get_ops()}
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    core = ov.Core()
    before = core.compile_model(model, "CPU")({0: x})
    after = core.compile_model(shifted, "CPU")({0: x})
    np.testing.assert_allclose(after[0], before[0] - offset, atol=1e-5)
    np.testing.assert_allclose(after[1], before[1], atol=1e-5)
    assert len(model.get_ops()) < len(shifted.get_ops())  # the original model is left as it was


def _near_boundary(n: int) -> np.ndarray:
    """Inputs whose float answers sit within 0.1 logit of a boundary between classes 0 and 1."""
    x = RNG.normal(size=(n * 20, 4)).astype(np.float32)
    logits = x @ W + BIAS
    top2 = np.sort(logits, 1)
    near = (top2[:, -1] - top2[:, -2] < 0.1) & np.isin(logits.argmax(1), (0, 1)) & (np.argsort(logits, 1)[:, -2] <= 1)
    return x[near][:n]


def test_a_systematic_int8_offset_is_removed_before_it_flips_answers() -> None:
    """An 'INT8' graph whose logits carry a constant per-class error (+0.15 on class 0, -0.15 on class 1)
    flips near-boundary answers one way; after the correction its answers are the float graph's."""
    systematic = np.asarray([0.15, -0.15, 0.0], np.float32)
    float_model, int8_model = _graph(BIAS), _graph(BIAS + systematic)
    target = get_target("cpu-onnxruntime-int8")
    cal = RNG.normal(size=(32, 4)).astype(np.float32)
    classes = [("a", "b")[i % 2] for i in range(len(cal))]

    def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
        return onnx_graph.logits(model.SerializeToString(), x, 1, 8)

    outputs = {o.name for o in int8_model.graph.output}
    corrected, record = correct_logit_offset(target, int8_model, outputs, _cset(cal, classes), run,
                                             run(float_model, cal), onnx_graph.shift_logits)
    assert record is not None and record["node"] == OFFSET_NODE
    np.testing.assert_allclose(record["offset"], systematic - systematic.mean(), atol=1e-5)
    assert record["int8_logit_error"]["after"] < 1e-9 < record["int8_logit_error"]["before"]
    assert "class-balanced" in record["measured_on"]
    held_out = _near_boundary(40)
    assert len(held_out) >= 10
    ref = run(float_model, held_out).argmax(1)
    assert (run(int8_model, held_out).argmax(1) != ref).any()  # the offset alone flips some answers
    np.testing.assert_array_equal(run(corrected, held_out).argmax(1), ref)


def test_the_correction_is_off_when_the_profile_says_so_or_the_graph_is_not_a_classifier() -> None:
    from edge_tl.fixed_float import ANOMALY_OUTPUT

    model = _graph(BIAS)
    cal = RNG.normal(size=(8, 4)).astype(np.float32)
    cset = _cset(cal, [None] * len(cal))
    target = get_target("cpu-openvino-int8")
    off = target.model_copy(update={"quantizer": target.quantizer.model_copy(update={"correct_logit_offset": False})})

    def never(*_: object) -> np.ndarray:
        raise AssertionError("nothing should be run")

    for t, outputs in ((off, {LOGITS, "ood_score"}), (target, {LOGITS, ANOMALY_OUTPUT}), (target, {"scores"})):
        same, record = correct_logit_offset(t, model, outputs, cset, never, np.zeros((8, 3), np.float32), never)
        assert same is model and record is None
