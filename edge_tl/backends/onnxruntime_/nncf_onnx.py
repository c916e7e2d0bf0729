"""NNCF on the ONNX graph (``quantizer.method = "nncf"`` for ONNX Runtime, the x86 default, and TensorRT).

Per-tensor activations; unsigned activations (x86) also get the pixel grid, int8 ones (TensorRT) NNCF's
unsigned quantisers turned into signed zero-point-0 ones (``signed_activations``). Part of the ONNX
quantiser (``quantize`` dispatches to it); its fallback uses ``onnx_graph.without`` and ``sensitivity``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError, require
from ...manifest import atomic_path
from ..int8 import correct_logit_offset, quiet_library_logging
from ..pixel_grid import LEVELS, PixelInput, restore_pixels
from ..table import facts
from . import onnx_graph  # the module: it is the quantiser the fallback search calls back into

if TYPE_CHECKING:
    from ...calibration import CalibrationSet
    from ...preprocess import Preprocess
    from ...targets import Target
    from ..int8 import FallbackRules, Judge


def signed_activations(model: Any) -> int:
    """Turn NNCF's unsigned activation Q/DQ (uint8, zero point 0, for tensors it saw non-negative) into
    signed symmetric int8 over the same top of range, in place; returns how many were changed.

    TensorRT's explicit quantisation takes only int8 with zero point 0 (ARM's s8s8 kernels want the
    same), and NNCF's ``signedness_to_force`` is rejected by its own hardware configs, so this is done
    here: ``[0, 255 s]`` becomes ``[-127 s', 127 s']`` with ``s' = 255 s / 127``, which is exactly the
    grid a symmetric int8 calibration of that tensor would choose. Weights are already signed.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    changed: set[str] = set()
    outputs: set[str] = set()
    for n in g.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        outputs.add(n.output[0])
        zp_name, scale_name = n.input[2], n.input[1]
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype != np.uint8 or zp_name in changed:
            continue
        if np.any(zp != 0):
            raise ConfigError(f"NNCF made an asymmetric quantiser ({n.name}); signed int8 needs zero point 0")
        scale = numpy_helper.to_array(inits[scale_name])
        inits[scale_name].CopyFrom(numpy_helper.from_array((scale * 255.0 / 127.0).astype(scale.dtype), scale_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array(np.zeros_like(zp, dtype=np.int8), zp_name))
        changed.add(zp_name)
    # Shape inference recorded the old element types of the quantised tensors.
    keep = [v for v in g.value_info if v.name not in outputs]
    del g.value_info[:]
    g.value_info.extend(keep)
    return len(changed)


def unsigned_activations(model: Any) -> int:
    """Turn NNCF's asymmetric int8 activation Q/DQ (its mixed preset's form for tensors that go
    negative) into uint8 with the zero point moved up by 128, in place; returns how many were changed.

    Exact: ``q_u8 = q_s8 + 128`` on the same scale is the same grid. ONNX Runtime's x86 kernels are
    u8s8: on the NEU model (AVX2 host) the graph with those 27 quantisers unsigned ran 23.5 ms against
    42 ms as NNCF left it (float 41 ms), at a relative logit error of 0.025 instead of 0.020 and the
    same answers (1 of 360 validation answers flipped against 0).
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    constants = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    changed: set[str] = set()
    outputs: set[str] = set()
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in constants or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp_name = n.input[2]
        if numpy_helper.to_array(inits[zp_name]).dtype != np.int8 and zp_name not in changed:
            continue
        outputs.add(n.output[0])
        # The DequantizeLinear partners read the same grid: their zero points move too.
        partners = [d.input[2] for d in g.node if d.op_type == "DequantizeLinear" and d.input[0] == n.output[0]
                    and len(d.input) > 2 and d.input[2] in inits]
        for name in {zp_name, *partners} - changed:
            old = numpy_helper.to_array(inits[name])
            if old.dtype == np.int8:
                inits[name].CopyFrom(numpy_helper.from_array((old.astype(np.int16) + 128).astype(np.uint8), name))
                changed.add(name)
    # Shape inference recorded the old element types of the quantised tensors.
    keep = [v for v in g.value_info if v.name not in outputs]
    del g.value_info[:]
    g.value_info.extend(keep)
    return len(outputs)


def nncf_quantize_onnx(float_onnx: Path, dest: Path, inputs: np.ndarray, signed: bool,
                       symmetric: bool = True, pre_path: Path | None = None,
                       preprocess: Preprocess | None = None) -> dict[str, Any]:
    """NNCF post-training quantisation of an ONNX graph into QDQ ``dest``: min/max ranges over ``inputs``
    (NCHW float32 calibration images) plus full bias correction, symmetric per-channel int8 weights,
    per-tensor activations. ``symmetric``: symmetric activations (TensorRT takes nothing else), made
    signed int8 with ``signed``; otherwise asymmetric unsigned 8-bit activations with a zero point
    (NNCF's mixed preset). ``preprocess`` (unsigned activations only): the first convolution reads the
    restored 8-bit pixels on their exact grid (``pixel_grid``). ``pre_path``: where to keep the float
    graph that was quantised (the fallback compares against it).
    Returns the manifest's ``quantizer`` description."""
    import onnx

    nncf = require("nncf", "openvino")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    pixels = None
    with tempfile.TemporaryDirectory(prefix="edge-tl-quant-") as work_str:
        pre = pre_path or Path(work_str) / "pre.onnx"
        source = float_onnx
        if preprocess is not None and not signed:
            # On the elpv model the per-tensor quantiser of the normalised input carried 65 % of the INT8
            # logit error (NNCF ONNX graph, 64 calibration images): the same rewrite as OpenVINO's.
            graph = onnx.load(str(float_onnx))
            pixels = restore_pixels(graph, preprocess)
            if pixels is not None:
                source = Path(work_str) / "pixels.onnx"
                onnx.save(graph, str(source))
        onnx_graph.preprocess_graph(source, pre)
        model = onnx.load(str(pre))
    input_name = model.graph.input[0].name
    n = len(inputs)
    calib = nncf.Dataset([inputs[i:i + 1] for i in range(n)], lambda x: {input_name: x})
    extra: dict[str, Any] = {}
    # Quantisers in front of the restoring ops would round the normalised input again.
    float_ops = [*(pixels.float_ops if pixels is not None else ()), *onnx_graph.fixed_float(model)]
    if float_ops:
        extra["ignored_scope"] = nncf.IgnoredScope(names=float_ops, validate=False)
    t0 = time.perf_counter()
    with quiet_library_logging():
        qmodel = nncf.quantize(
            model, calib, subset_size=n, fast_bias_correction=False, target_device=nncf.TargetDevice.CPU,
            preset=nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED,
            advanced_parameters=AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False)), **extra)
    calib_seconds = time.perf_counter() - t0
    converted = signed_activations(qmodel) if signed else 0
    # Unsigned and asymmetric: every activation u8 (NNCF leaves the tensors that go negative int8).
    made_unsigned = unsigned_activations(qmodel) if not signed and not symmetric else 0
    pinned = pin_pixel_quantizer_onnx(qmodel, pixels) if pixels is not None else None
    with atomic_path(dest) as tmp:
        onnx.save(qmodel, str(tmp))
    opset = next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "method": "nncf", "library": f"nncf {nncf.__version__} (ONNX backend)", "format": "QDQ", "opset": opset,
        "algorithm": "post-training quantisation, min/max statistics, full bias correction",
        "preset": "performance (symmetric weights and activations)" if symmetric
        else "mixed (symmetric weights, asymmetric activations)", "per_channel": True,
        "weights": "int8", "activations": "int8" if signed else "uint8" if not symmetric
        else "uint8 or int8 (NNCF's choice per tensor)",
        "activation_symmetric": symmetric, "activation_scales": "per tensor", "quantize_bias": False,
        "activation_quantizers_made_signed": converted, "activation_quantizers_made_unsigned": made_unsigned,
        "subset_size": n, "calibration_seconds": calib_seconds,
        "input": (pixels.describe() | {"quantizer": pinned}) if pixels is not None
        else "normalised input quantised per tensor",
    }


def pin_pixel_quantizer_onnx(qmodel: Any, pixels: PixelInput) -> str:
    """Set the QuantizeLinear that reads ``pixels.tensor`` (and its DequantizeLinear) to the pixel grid:
    uint8, zero point 0, scale ``top / 255``, so every pixel value is a grid point (the calibrated range
    stops at the brightest calibration pixel); returns its name. Raises RuntimeError if there is none."""
    from onnx import numpy_helper

    g = qmodel.graph
    inits = {i.name: i for i in g.initializer}
    for q in g.node:
        if q.op_type == "QuantizeLinear" and q.input[0] == pixels.tensor and len(q.input) == 3:
            zp = numpy_helper.to_array(inits[q.input[2]])
            if zp.dtype != np.uint8:
                raise RuntimeError(f"the pixel quantiser {q.name} is {zp.dtype}, not uint8")
            scale = np.float32(pixels.top / (LEVELS - 1))
            new_scale, new_zp = f"{q.name}/pixel_scale", f"{q.name}/pixel_zero_point"
            g.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), new_scale),
                                  numpy_helper.from_array(np.asarray(0, np.uint8), new_zp)])
            partners = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
            for node in [q, *partners]:
                node.input[1], node.input[2] = new_scale, new_zp
            return str(q.name)
    raise RuntimeError(f"NNCF put no quantiser on {pixels.tensor}")


def quantize_nncf(target: Target, float_onnx: Path, out_dir: Path, cset: CalibrationSet,
                  judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess, rules: FallbackRules,
                  ) -> tuple[list[str], dict[str, Any]]:
    """``nncf_quantize_onnx`` for a target, then its gates on the selection set.

    ONNX Runtime: when they fail there, the most sensitive activation quantisers of NNCF's graph are
    bypassed, as few as pass (``fallback.bypass_fewest``; the OpenVINO fallback's rule), and that graph
    ships. TensorRT: ``fallback.status`` is ``needed`` and the caller takes the QDQ layer-fallback path.
    Validation gives the verdict afterwards (``held_out``)."""
    import onnx

    dest = out_dir / target.model_file
    threads = onnx_graph.host_threads(target)
    q = target.quantizer
    with tempfile.TemporaryDirectory(prefix="edge-tl-quant-") as work:
        pre_path = Path(work) / "pre.onnx"
        quantizer = nncf_quantize_onnx(float_onnx, dest, cset.inputs, signed=q.activations == "int8",
                                       symmetric=q.symmetric_activations, pre_path=pre_path, preprocess=pre)
        float_model = onnx.load(str(pre_path))
    qmodel = onnx.load(str(dest))
    # An explicit-QDQ builder (TensorRT) reads each weight DequantizeLinear as an order; ONNX Runtime runs
    # the Convs it cannot fuse (float input or output) faster with float weights (``fold_float_weights``).
    if not facts(target.backend).explicit_qdq:
        quantizer["float_convs_with_float_weights"] = len(onnx_graph.fold_float_weights(qmodel))
        with atomic_path(dest) as tmp:
            onnx.save(qmodel, str(tmp))
    qmodel, offset = correct_logit_offset(
        target, qmodel, {o.name for o in float_model.graph.output}, cset,
        lambda m, x: onnx_graph.logits(m, x, threads, target.batch_size),
        onnx_graph.logits(float_model, cset.inputs, threads, target.batch_size), onnx_graph.shift_logits)
    if offset is not None:
        quantizer["logit_offset"] = offset
        with atomic_path(dest) as tmp:
            onnx.save(qmodel, str(tmp))

    def logits(inputs: np.ndarray) -> np.ndarray:
        # The batch size export's validation and bench use: near-ties can depend on it.
        return onnx_graph.logits(str(dest), inputs, threads, target.batch_size)

    fallback = rules.fallback_start(target, judge, float_values, onnx_graph.WHERE, logits)
    float_layers: list[dict[str, Any]] = []
    if "before" in fallback:
        fallback["after"] = fallback["before"]
    # Float fallback removes QDQ pairs; an explicit-QDQ builder (TensorRT) reads every pair as an order.
    if fallback["status"] == "needed" and not facts(target.backend).explicit_qdq:
        chosen, after, float_layers = rules.bypass_fewest(onnx_graph, target, fallback, onnx.load(str(dest)),
                                                    float_model, cset, judge, threads)
        if chosen is not None and after is not None:
            fallback["after"] = rules.short(after)
            with atomic_path(dest) as tmp:
                onnx.save(chosen, str(tmp))
    fallback["float_layers"] = [r["name"] for r in float_layers]
    if fallback["status"] != "needed":
        rules.held_out(target, fallback, judge, onnx_graph.WHERE, logits)
    return [dest.name], {"quantizer": quantizer, "float_layers": float_layers, "fallback": fallback}
