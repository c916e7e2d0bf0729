"""The INT8 input rewrite: exact in float, and left out where the graph does not allow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edge_tl.backends.pixel_grid import restore_pixels
from edge_tl.preprocess import Preprocess

PRE = Preprocess(resize=40, crop=32)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Preprocessed random 8-bit images: bright and dark borders, where a wrong padding shows."""
    rng = np.random.default_rng(seed)
    return PRE.batch([Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_restored_pixels_give_the_same_outputs_and_lie_on_the_8bit_grid(tmp_path: Path) -> None:
    import torch

    from edge_tl.stages.export import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    path = tmp_path / "float.onnx"
    export_onnx(net, path, 32, 17)
    original = onnx.load(str(path))
    rewritten = onnx.load(str(path))
    pixels = restore_pixels(rewritten, PRE)
    assert pixels is not None and pixels.top == np.float32(1.0)
    onnx.checker.check_model(rewritten)
    x = _images(6)
    want, got = _run(original, x), _run(rewritten, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # The tensor the quantiser will read holds pixel/255 (the mean pixel on the border), so a 256-level
    # grid over [0, 1] represents every value of it.
    probe = onnx.load(str(path))
    restore_pixels(probe, PRE)
    probe.graph.output.append(helper.make_tensor_value_info(pixels.tensor, TensorProto.FLOAT, None))
    import onnxruntime as ort

    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    restored = sess.run([pixels.tensor], {sess.get_inputs()[0].name: x})[0]
    assert restored.shape == (6, 3, 34, 34)  # padded by the first conv's 1 pixel each side
    inner = restored[:, :, 1:-1, 1:-1] * 255.0
    assert np.abs(inner - np.round(inner)).max() < 1e-3
    np.testing.assert_allclose(restored[0, :, 0, 0], PRE.mean, atol=1e-6)


def test_graphs_that_do_not_start_with_a_plain_conv_are_left_alone() -> None:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Mul", ["input", "two"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "w"], ["output"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [w, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert restore_pixels(model, PRE) is None
    assert model.SerializeToString() == before

    grouped = helper.make_graph([helper.make_node("Conv", ["input", "w1"], ["output"], group=3)], "g",
                                [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                                [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                                [numpy_helper.from_array(np.ones((3, 1, 3, 3), np.float32), "w1")])
    model = helper.make_model(grouped, opset_imports=[helper.make_opsetid("", 17)])
    assert restore_pixels(model, PRE) is None
