"""The OpenVINO quantiser: NNCF post-training quantisation of the OpenVINO model.

Its input is first restored to 8-bit pixels so the first quantiser is exact (``pixel_grid``). The
fallback bypasses the most sensitive activation FakeQuantize ops (``without``, ``sensitivity``, and the
export stage's ``bypass_fewest``, handed in as ``rules``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import require
from ...fixed_float import GraphView, float_names, judged, output_name
from ..int8 import EVAL_BATCH, LOGITS, OFFSET_NODE, correct_logit_offset, quiet_library_logging, rel_error
from ..pixel_grid import PixelInput, pin_pixel_quantizer, restore_pixels
from . import OPENVINO_PRESET
from .runner import compile_static, cpu_config, shared_core, signal_stack_kept

if TYPE_CHECKING:
    from ...calibration import CalibrationSet
    from ...preprocess import Preprocess
    from ...targets import Target
    from ..int8 import FallbackRules, Judge

log = logging.getLogger("edge_tl")

WHERE = "OpenVINO CPU"
QUANTIZER_OP = "FakeQuantize"
MODEL = "model"


def settings(target: Target) -> dict[str, Any]:
    return {}  # NNCF's own settings: nothing to check before calibration


def quantize(target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path, cset: CalibrationSet,
             judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess, rules: FallbackRules,
             ) -> tuple[list[str], dict[str, Any]]:
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    if target.quantizer.calibration_method != "minmax":
        log.warning("%s: calibration_method %r is for ONNX Runtime targets; NNCF uses its own range "
                    "estimators", target.name, target.quantizer.calibration_method)
    model, pixels = _pixel_model(float_onnx, pre)
    n = len(cset.inputs)
    calib = nncf.Dataset([cset.inputs[i:i + 1] for i in range(n)])
    common = {"subset_size": n, "fast_bias_correction": False, "target_device": _nncf_device(target.device),
              "preset": nncf.QuantizationPreset.PERFORMANCE}
    # Quantisers in front of the restoring ops would round the normalised input again.
    float_ops = [*(pixels.float_ops if pixels is not None else ()), *fixed_float(model)]
    if float_ops:
        common["ignored_scope"] = nncf.IgnoredScope(names=float_ops, validate=False)
    t0 = time.perf_counter()
    # NNCF compiles through ov.Cores of its own: the thread's signal stack must survive them
    # (``runner``, the segfault of issue 24).
    with quiet_library_logging(), signal_stack_kept():
        qmodel = nncf.quantize(model, calib, **common)
        pinned = pin_pixel_quantizer(qmodel, pixels) if pixels is not None else None
    calib_seconds = time.perf_counter() - t0
    quantizer: dict[str, Any] = {
        "method": "nncf", "library": f"nncf {nncf.__version__}, openvino {ov.__version__}",
        "algorithm": "post-training quantisation, min/max statistics, full bias correction",
        "fast_bias_correction": False, "preset": OPENVINO_PRESET,
        "target_device": str(common["target_device"].value), "subset_size": n,
        "calibration_seconds": calib_seconds,
        "input": (pixels.describe() | {"quantizer": pinned}) if pixels is not None
        else "normalised input quantised per tensor (the graph does not start with a plain convolution)",
    }
    float_layers: list[dict[str, Any]] = []

    def logits_of(model: Any) -> Callable[[np.ndarray], np.ndarray]:
        # The batch size export's validation and bench use: near-ties can depend on it.
        return lambda inputs: logits(model, inputs, target.threads, target.batch_size)

    outputs = {name for o in qmodel.outputs for name in o.get_names()}
    qmodel, offset = correct_logit_offset(
        target, qmodel, outputs, cset, lambda m, x: logits(m, x, target.threads, target.batch_size),
        logits(model, cset.inputs, target.threads, target.batch_size), shift_logits)
    if offset is not None:
        quantizer["logit_offset"] = offset

    fallback = rules.fallback_start(target, judge, float_values, WHERE, logits_of(qmodel))
    if fallback["status"] not in ("no gates", "disabled"):
        after = fallback["before"]
        if fallback["status"] == "needed":
            # This module is the quantiser the shared search calls back into.
            chosen, values, float_layers = rules.bypass_fewest(sys.modules[__name__], target, fallback, qmodel, model,
                                                         cset, judge, target.threads)
            if chosen is not None and values is not None:
                qmodel, after = chosen, values
        fallback["after"] = rules.short(after)
        fallback["float_layers"] = [r["name"] for r in float_layers]
    rules.held_out(target, fallback, judge, WHERE, logits_of(qmodel))
    xml = out_dir / "model.xml"
    ov.save_model(qmodel, str(xml), compress_to_fp16=False)
    return [xml.name, xml.with_suffix(".bin").name], {"quantizer": quantizer, "float_layers": float_layers,
                                                      "fallback": fallback}


def from_qdq(qdq: bytes, target: Target, out_dir: Path) -> tuple[list[str], Any]:
    ov = require("openvino", "openvino")
    with tempfile.TemporaryDirectory(prefix="edge-tl-qat-") as work:
        (Path(work) / "qat.onnx").write_bytes(qdq)
        ov_model = ov.convert_model(str(Path(work) / "qat.onnx"))
    ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
    return ["model.xml", "model.bin"], ov_model


def logits(model: Any, inputs: np.ndarray, threads: int = 2, batch: int = EVAL_BATCH) -> np.ndarray:
    """What the gates judge of ``model`` on ``inputs`` (``fixed_float.judged``: the logits; a detector's boxes
    and scores)."""
    # Compiled as the bench's runner compiles the INT8 graph, so the gate sees the same numbers.
    return _judged(model, inputs, threads, batch, "int8")


def _judged(model: Any, inputs: np.ndarray, threads: int, batch: int, precision: str) -> np.ndarray:
    core, compiled = shared_core(), {}
    names = [output_name(out.get_names()) for out in model.outputs]
    out = []
    for i in range(0, len(inputs), batch):
        x = inputs[i:i + batch]
        if x.shape not in compiled:
            compiled[x.shape] = compile_static(core, model, x.shape, "CPU", cpu_config(threads, precision))
        result = compiled[x.shape](x)
        out.append(judged(names, [result[k] for k in range(len(names))], inputs.shape[-1]))
    return np.concatenate(out)


def shift_logits(qmodel: Any, offset: np.ndarray) -> Any:
    """A copy of ``qmodel`` whose ``logits`` output has ``offset`` (K,) subtracted by a float Add
    (``OFFSET_NODE``) between the layer that made them and the output, which keeps its name."""
    import openvino.opset13 as ops

    model = qmodel.clone()
    for result in model.get_results():
        src = result.input_value(0)
        names = set(src.get_names())
        if LOGITS not in names:
            continue
        add = ops.add(src, ops.constant(-np.asarray(offset, np.float32).reshape(1, -1)), name=OFFSET_NODE)
        src.get_tensor().set_names(names - {LOGITS})
        add.output(0).get_tensor().set_names({LOGITS})
        result.input(0).replace_source_output(add.output(0))
        model.validate_nodes_and_infer_types()
        return model
    raise RuntimeError(f"the model has no {LOGITS!r} output")


def without(qmodel: Any, names: list[str] | tuple[str, ...]) -> Any:
    """A copy of NNCF's OpenVINO model in which the activation FakeQuantize ops ``names`` are bypassed,
    so the ops reading them compute on float inputs (their weights stay int8). Milliseconds, and
    exactly the graph that ships; a re-quantisation with an ignored scope would also redo the bias
    correction around the layer and land elsewhere."""
    model = qmodel.clone()
    wanted = set(names)
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.get_friendly_name() in wanted:
            op.output(0).replace(op.input_value(0))
    return model


def sensitivity(qmodel: Any, float_model: Any, inputs: np.ndarray, threads: int = 2,
                ) -> tuple[float, list[dict[str, Any]]]:
    """Each activation FakeQuantize of ``qmodel`` bypassed alone: how much of the INT8 logit error it
    removes, most sensitive first (rows: ``name``, ``consumers``, ``sensitivity``, ``error_if_float``)."""
    ref = _judged(float_model, inputs, threads, len(inputs), "fp32")
    base = rel_error(logits(qmodel, inputs, threads), ref)
    rows = []
    for op in qmodel.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() == "Constant":
            # Weights stay int8: int8 weights are the size win, and their error is small per channel on
            # mobilenet_v2. Not on every network: a fine-tuned EfficientNet-Lite0 on elpv missed with every
            # activation quantiser bypassed (its first depthwise conv, whose BatchNorm has channels of variance 0,
            # moves logits by 2.4 on its own); the fallback then says the weights alone miss.
            continue
        name = op.get_friendly_name()
        consumers = sorted({t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()})
        err = rel_error(logits(without(qmodel, [name]), inputs, threads), ref)
        rows.append({"name": name, "consumers": consumers, "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows


def fixed_float(model: Any) -> list[str]:
    """``fixed_float.float_names`` of an OpenVINO model converted from the ONNX graph (friendly names keep the
    ONNX names; ops the conversion fused or renamed are found through ``fixed_float.GraphView``)."""
    outputs = {name for o in model.outputs for name in o.get_names()}
    ops = [op for op in model.get_ops() if op.get_type_name() not in ("Parameter", "Result", "Constant")]
    view = GraphView({op.get_friendly_name(): [v.get_node().get_friendly_name() for v in op.input_values()]
                      for op in ops},
                     [r.input_value(0).get_node().get_friendly_name() for r in model.get_results()],
                     frozenset(op.get_friendly_name() for op in ops if op.get_type_name() in LAYER_OPS))
    return float_names(outputs, [op.get_friendly_name() for op in ops], view)


LAYER_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")  # where the walk back stops


def _nncf_device(device: str) -> Any:
    nncf = require("nncf", "openvino")
    return {"CPU": nncf.TargetDevice.CPU, "GPU": nncf.TargetDevice.GPU,
            "NPU": nncf.TargetDevice.NPU}.get(device.upper().split(".")[0], nncf.TargetDevice.ANY)


def _pixel_model(float_onnx: Path, pre: Preprocess) -> tuple[Any, PixelInput | None]:
    """The OpenVINO model NNCF quantises: ``float_onnx`` with its input restored to pixels
    (``pixel_grid``) when the graph allows, else as exported."""
    import onnx

    ov = require("openvino", "openvino")
    graph = onnx.load(str(float_onnx))
    pixels = restore_pixels(graph, pre)
    if pixels is None:
        return ov.convert_model(str(float_onnx)), None
    with tempfile.TemporaryDirectory(prefix="edge-tl-pixels-") as work:
        path = Path(work) / "pixels.onnx"
        onnx.save(graph, str(path))
        # share_weights=False: the model must outlive the temporary file it was read from.
        return ov.convert_model(str(path), share_weights=False), pixels
