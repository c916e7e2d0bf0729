"""Give the first quantiser of an INT8 graph the camera's own 8-bit grid.

Every image reaches the model as ``(pixel * scale - mean) / std`` with an integer ``pixel`` in 0..255
(``Preprocess`` decodes to 8-bit RGB), so the input carries exactly 256 values per channel. A
per-tensor 8-bit quantiser on that normalised tensor cannot hold them: the three channels have
different offsets and the calibrated range never matches the pixel step, so every input value
moves by up to half a step. On the pruned NEU model that one quantiser carried most of the INT8
logit error (and 2 of 360 answers). Bypassing it costs a float stem convolution on every frame.

Instead the graph is rewritten, exactly in float, so that the first convolution reads
``pixel * scale`` again: the normalisation is folded into its weights and bias, and the zero padding
it did in normalised space is done first, before the pixels are restored (a padded zero in
normalised space is the mean pixel, which a plain zero pad of the restored image would get wrong).
After quantisation the quantiser on the restored tensor is pinned to ``[0, 255 * scale]`` with 256
levels, on which every pixel value is a grid point: the input is then quantised without error, and
the stem convolution still runs in INT8.

    input -> Pad(0) -> Mul(std) -> Add(mean) -> [quantiser, pinned] -> Conv(W / std, b - sum W mean / std)

The rewrite is only made when the graph input feeds one plain convolution with constant weights;
otherwise the graph is quantised as it is (``restore_pixels`` returns None and says why).

Shared by the two quantisers that run NNCF: ``openvino_.quantize`` and the ONNX one (``onnxruntime_.nncf_onnx``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import require

if TYPE_CHECKING:
    from ..preprocess import Preprocess

log = logging.getLogger("edge_tl")

PREFIX = "edge_tl_pixels"
LEVELS = 256  # 8-bit pixels


@dataclass(frozen=True)
class PixelInput:
    """Where the rewrite put the restored pixels, and the grid they lie on."""

    tensor: str  # the node (and tensor) name of the Add that restores pixel * scale
    float_ops: tuple[str, ...]  # Pad, Mul, Add: float ops the quantiser must not be put in front of
    conv: str  # the convolution that now reads the pixels
    top: float  # 255 * scale: the largest pixel value

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the rewrite."""
        return {"restored_tensor": self.tensor, "reads_it": self.conv, "grid": [0.0, self.top],
                "levels": LEVELS, "why": "normalisation folded into the first convolution; its input quantiser "
                "holds every 8-bit pixel value exactly"}


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def restore_pixels(model: Any, pre: Preprocess) -> PixelInput | None:
    """Rewrite ONNX ``model`` in place as the module docstring shows; returns where the pixels are,
    or None (model untouched, reason logged) when the graph does not start with a plain convolution."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in inits]
    if len(graph_inputs) != 1:
        return _skip(f"{len(graph_inputs)} graph inputs")
    name = graph_inputs[0]
    users = [n for n in g.node if name in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != name:
        return _skip(f"the input feeds {', '.join(n.op_type for n in users) or 'nothing'}, not one Conv")
    conv = users[0]
    attrs = _attrs(conv)
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return _skip("the first Conv is grouped or auto-padded")
    if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
        return _skip("the first Conv's weights are not constants")
    weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0]))
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    if weight.ndim != 4 or weight.shape[1] != len(mean) or len(std) != len(mean) or np.any(std == 0):
        return _skip("the first Conv's input channels do not match the preprocessing's mean/std")

    per_channel = (1, -1, 1, 1)
    folded_w = weight / std.reshape(per_channel)
    folded_b = bias - (weight * (mean / std).reshape(per_channel)).sum(axis=(1, 2, 3))
    top, left, bottom, right = list(attrs.get("pads", [0, 0, 0, 0]))
    p = PREFIX
    g.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), f"{p}/pads"),
        numpy_helper.from_array(std.astype(np.float32).reshape(per_channel), f"{p}/std"),
        numpy_helper.from_array(mean.astype(np.float32).reshape(per_channel), f"{p}/mean"),
        numpy_helper.from_array(folded_w.astype(np.float32), f"{p}/weight"),
        numpy_helper.from_array(folded_b.astype(np.float32), f"{p}/bias"),
    ])
    ops = (f"{p}/pad", f"{p}/unscale", f"{p}/restore")
    restore = [helper.make_node("Pad", [name, f"{p}/pads"], [ops[0]], name=ops[0], mode="constant"),
               helper.make_node("Mul", [ops[0], f"{p}/std"], [ops[1]], name=ops[1]),
               helper.make_node("Add", [ops[1], f"{p}/mean"], [ops[2]], name=ops[2])]
    del conv.input[:]
    conv.input.extend([ops[2], f"{p}/weight", f"{p}/bias"])
    kept = [a for a in conv.attribute if a.name != "pads"]
    del conv.attribute[:]
    conv.attribute.extend(kept)
    at = list(g.node).index(conv)
    for k, node in enumerate(restore):
        g.node.insert(at + k, node)
    return PixelInput(tensor=ops[2], float_ops=ops, conv=conv.name or conv.output[0],
                      top=float(np.float32(255.0 * pre.scale)))


def _skip(why: str) -> None:
    log.info("INT8 input stays normalised (%s): its quantiser rounds between pixel values", why)
    return None


def pin_pixel_quantizer(qmodel: Any, pixels: PixelInput) -> str:
    """Set the OpenVINO FakeQuantize that reads ``pixels.tensor`` to ``[0, top]`` with 256 levels (the
    calibrated range stops at the brightest calibration pixel, which clips brighter frames and puts
    the grid between pixel values); returns its name. Raises RuntimeError if there is none."""
    ov = require("openvino", "openvino")
    from openvino import opset13

    for op in qmodel.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_friendly_name() == pixels.tensor:
            for index, value in zip(range(1, 5), (0.0, pixels.top, 0.0, pixels.top), strict=True):
                shape = tuple(op.input_value(index).get_partial_shape().to_shape())
                op.input(index).replace_source_output(opset13.constant(np.full(shape, value, np.float32)).output(0))
            op.set_levels(LEVELS)
            op.validate_and_infer_types()
            return str(op.get_friendly_name())
    raise RuntimeError(f"NNCF put no quantiser on {pixels.tensor} (openvino {ov.__version__})")
