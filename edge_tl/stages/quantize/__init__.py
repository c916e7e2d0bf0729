"""INT8 per target: calibration, quantisation in the form each runtime wants, accuracy-aware fallback.

Called by ``export`` for every int8 target. One fp32 ONNX graph goes in; what comes out depends on
the runtime (design.md):

* ``onnx_qdq`` (ONNX Runtime, TensorRT): a static QDQ graph from ``onnxruntime.quantization``.
  Activation type, symmetry and per-channel weights come from the profile: x86 u8 activations with
  signed per-channel weights (the u8s8 kernels), ARM64 signed activations (its SDOT kernels are
  s8s8), TensorRT symmetric int8 with zero point 0 everywhere (the only QDQ form its
  explicit-precision mode accepts). On x86 CPUs without VNNI (AVX2 only) ONNX Runtime's fully
  integer u8s8 kernels saturate their 16-bit pair sums: there min/max QDQ flipped 50 of 360 NEU
  answers and 289 of 525 elpv answers (the same graph emulated in float: 1 of 360).
* ``nncf``: NNCF post-training quantisation with full bias correction. OpenVINO: of the OpenVINO
  model, its input first restored to 8-bit pixels so the first quantiser is exact (``pixel_grid``).
  ONNX Runtime (the x86 default) and TensorRT: of the ONNX graph, per-tensor activations;
  unsigned activations (x86) also get the pixel grid, int8 ones (TensorRT) NNCF's unsigned
  quantisers turned into signed zero-point-0 ones (``onnxruntime_.nncf_onnx.signed_activations``). On the NEU model
  bias correction is what keeps the symmetric TensorRT graph within the gate: ORT's min/max symmetric
  QDQ flips 7 of 360 answers, NNCF's 1.

NNCF's graphs of a classifier then have their systematic logit error removed: the quantised graph's mean
logit error on the calibration images (class-balanced, centred), subtracted in float at the ``logits``
output (``backends.int8.correct_logit_offset``), before the fallback chooses (calibration/README.md, "The
logit offset"): a constant offset flips near-boundary answers one way and undoes a class-weighted model's
boundary (elpv, class weights, ONNX Runtime: 42 held-out answers changed, all defect -> ok; corrected: 17).

Then the gates, chosen and judged on different images. The float layers are *chosen* on a selection
set (``calibration.build_selection_set``: training images that are neither calibration nor validation
images, with the source float model's logits; ``fallback.Judge``); the validation set (eval.npz) only
*judges* the graph that ships, afterwards (``fallback.held_out``), and a miss there is shipped and
reported, never searched again. If the all-INT8 model misses ``max_top1_drop`` / ``min_agreement`` on
the selection set, the layers most sensitive to quantisation are kept in float, as few as the gate
allows there. ONNX Runtime QDQ: each quantised layer is kept in float alone and the logit error it
removes is measured on the calibration images; layers are then excluded in that order, searching
for the smallest count that passes (the calibration ranges are computed once and cached).
OpenVINO and NNCF's ONNX graphs: the same ranking over the activation quantisers, each bypassed alone
(``openvino_.quantize.sensitivity``, ``onnxruntime_.onnx_graph.sensitivity``), then the fewest bypassed that pass
(``fallback.bypass_fewest``). (NNCF's own ``quantize_with_accuracy_control`` was tried first: on the
pruned NEU model, 2 answers off the gate, it reverted all 64 quantised ops in 10 minutes; bypassing the
one input quantiser the ranking puts first passes, in about a minute.) Either way the manifest lists the
layers left in float and why, and says plainly when no choice of layers can pass.

Last, INT8 has to pay: the float and INT8 graphs are timed in this process on the target's backend;
when INT8 is slower, ``export`` warns (and ``bench`` says so again on the device).

The quantisers themselves live with their backends (``edge_tl/backends/<name>_/quantize.py``, named by
the table's ``quantiser``, of the shape ``backends.int8.Quantizer``): ``onnxruntime_.quantize`` the QDQ
graph ONNX Runtime and TensorRT execute, made by ``quantize_static`` (``quantize_qdq``) or by NNCF
(``nncf_onnx``); ``openvino_.quantize`` NNCF's OpenVINO model. What stays here is the stage:

* ``__init__`` (this module): ``quantize_for_target``, the driver. It builds the calibration set and
  the judge, hands the target to its backend's quantiser (with ``fallback`` as its ``rules``), times the
  result and writes calibration.json. A detection run comes in one step later (``quantize_judged``, from
  ``edge_tl/detect/quantize.py``): its own calibration images and a judge of the same shape that measures
  mAP@0.5 after NMS; the quantisers, the search and ``finish_int8`` are these.
* ``fallback``: the gates, the selection set and ``Judge``, the fallback record before and after the
  search, ``search_fewest`` and ``bypass_fewest``, the held-out verdict, the report. No runtime.
* ``qat_``: quantisation-aware training's graph (``stages/qat.py`` trains), judged in any backend.
* ``speed``: ``speed_check``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.int8 import quantizer_for
from ...backends.table import BACKENDS as BACKEND_TABLE
from ...backends.table import facts
from ...calibration import (
    CalibrationSet,
    SelectionSet,
    build_calibration_set,
    build_selection_set,
    write_calibration_json,
)
from ...errors import ConfigError
from ...evalset import EvalSet
from ...manifest import read_manifest
from ...preprocess import Preprocess
from ...rundir import RunDir
from ...targets import Target
from . import fallback, qat_
from .fallback import gate_values, make_judge, report_fallback, search_fewest
from .speed import speed_check

__all__ = ["CALIBRATION_JSON", "finish_int8", "gate_values", "int8_quantiser", "quantize_for_target",
           "quantize_judged", "search_fewest", "speed_check"]

log = logging.getLogger("edge_tl")

CALIBRATION_JSON = "calibration.json"


def int8_quantiser(target: Target) -> tuple[Any, dict[str, Any]]:
    """The quantiser of ``target``'s backend (``backends.int8.Quantizer``) and its settings, checked before any
    calibration work: ConfigError for a method or form the backend does not take."""
    q = target.quantizer
    if q.method == "none":
        raise ConfigError(f"{target.name}: precision is int8 but quantizer.method is 'none' "
                          "(use onnx_qdq or nncf)")
    known = facts(target.backend)
    if q.method == "onnx_qdq" and not known.onnx_qdq:
        takers = " or ".join(b.name for b in BACKEND_TABLE.values() if b.onnx_qdq)
        raise ConfigError(f"{target.name}: quantizer.method 'onnx_qdq' needs backend {takers}, not {target.backend}")
    backend = quantizer_for(target.backend)
    if backend is None:
        raise ConfigError(f"{target.name}: the {target.backend} backend has no INT8 quantiser")
    # Bad combinations fail early (ONNX graphs: the QDQ form the runtime accepts).
    return backend, backend.settings(target)


def quantize_for_target(target: Target, run: RunDir, src: Path, float_onnx: Path, out_dir: Path,
                        calibration: str | None, evalset: EvalSet, src_logits: np.ndarray,
                        quiet: bool = True, model_logits: Callable[[np.ndarray], np.ndarray] | None = None,
                        selection: SelectionSet | None = None, qat_epochs: int = 0,
                        model: Any = None) -> tuple[list[str], dict[str, Any]]:
    """Write ``target.model_file`` (INT8) and ``calibration.json`` into ``out_dir``.

    Returns the files written (relative to ``out_dir``) and the fields merged into the target
    manifest: ``calibration``, ``quantizer``, ``float_layers``, ``fallback``, ``speed_check`` and
    ``int8_speedup_over_float``. ``float_onnx`` is left in place (bench times it against the INT8 model).

    ``evalset`` (validation) is held out: float layers are chosen on a selection set of training
    images (``selection``, else ``build_selection_set``) with the source float model's logits
    (``model_logits(inputs)``, else the torch model in ``src`` is loaded), and ``evalset`` only gives
    the verdict (``fallback.held_out``). ``qat_epochs`` > 0: quantisation-aware training of ``model``
    (the torch model in ``src``; loaded when None) instead of post-training quantisation
    (``qat_.quantize_qat``).
    """
    backend, settings = int8_quantiser(target)
    src_manifest = read_manifest(src, verify=False)
    pre = Preprocess.from_dict(src_manifest["preprocessing"])
    cset = build_calibration_set(run, pre, src_manifest["classes"], target.quantizer.calibration_size,
                                 user_source=calibration, quiet=quiet)
    anomaly = src_manifest.get("task") == "anomaly"
    float_values = gate_values(src_logits, evalset, target.gates, anomaly=anomaly) if len(evalset.labels) else None
    gate_reference = "full model"
    if float_values is not None and not float_values["passed"]:
        # A pruned float model can already miss the gate against the full model; then no float layers
        # could pass, but quantisation must still not add its own loss on top: judge it against the
        # float model it came from (the bench still reports against the full model).
        log.warning("%s: the float %s model already misses the gate against the full model (%s); the INT8 "
                    "fallback judges quantisation against the float %s model instead", target.name, src.name,
                    "; ".join(float_values["failed"]), src.name)
        evalset = dataclasses.replace(evalset, logits=src_logits)
        float_values = gate_values(src_logits, evalset, target.gates, anomaly=anomaly)
        gate_reference = f"float {src.name} model (it misses the gate against the full model)"
    judge, sel = make_judge(target, run, src, evalset, src_logits, gate_reference != "full model",
                            lambda: build_selection_set(run, pre, src_manifest["classes"], cset, quiet=quiet)
                            if selection is None else selection, model_logits, anomaly)
    # The selection images are listed beside the calibration images: both sets are auditable by sha256.
    chosen_on = (sel.summary() | {"images": sel.images}) if sel is not None else None
    if qat_epochs:
        if model is None:
            from ...checkpoint import load_model

            model, _ = load_model(src)
        files, info = qat_.quantize_qat(backend, target, run, model, out_dir, cset, judge, sel, float_values, pre,
                                        qat_epochs, quiet, float_onnx)
        return finish_int8(target, float_onnx, out_dir, files, info, cset, pre, chosen_on, gate_reference)
    return quantize_judged(target, backend, settings, float_onnx, out_dir, cset, judge, float_values, pre,
                           chosen_on, gate_reference)


def quantize_judged(target: Target, backend: Any, settings: dict[str, Any], float_onnx: Path, out_dir: Path,
                    cset: CalibrationSet, judge: Any, float_values: dict[str, Any] | None, pre: Preprocess,
                    selection: dict[str, Any] | None, gate_reference: str) -> tuple[list[str], dict[str, Any]]:
    """Post-training INT8 of ``float_onnx`` by ``backend`` (:func:`int8_quantiser`) into ``out_dir``, its float
    layers chosen by ``judge`` (``fallback.Judge``, or a task's judge of the same shape:
    ``detect.quantize.DetectJudge``), then :func:`finish_int8`. Returns the files and the manifest fields."""
    files, info = backend.quantize(target, settings, float_onnx, out_dir, cset, judge, float_values, pre, fallback)
    return finish_int8(target, float_onnx, out_dir, files, info, cset, pre, selection, gate_reference)


def finish_int8(target: Target, float_onnx: Path, out_dir: Path, files: list[str], info: dict[str, Any],
                cset: CalibrationSet, pre: Preprocess, selection: dict[str, Any] | None,
                gate_reference: str) -> tuple[list[str], dict[str, Any]]:
    """What every INT8 export adds to its quantiser's ``info``: the speed check (float vs INT8 here),
    ``gate_reference``, ``answer_noise``, ``int8_speedup_over_float``, the calibration summary, and
    ``calibration.json`` in ``out_dir`` (with the ``selection`` images); logs the fallback's outcome."""
    speed = speed_check(target, float_onnx, out_dir / target.model_file)
    info["speed_check"] = speed
    info["gate_reference"] = gate_reference
    # Bench and bundle split answers at this number (the shipped graph's noise on the selection images).
    info["answer_noise"] = info["fallback"].get("answer_noise")
    info["int8_speedup_over_float"] = speed.get("speedup")
    methods = {"onnx_qdq": target.quantizer.calibration_method,
               "qat": "moving-average min/max observers, then trained weights"}
    calibration_summary = cset.summary() | {"method": methods.get(info["quantizer"]["method"],
                                                                  "nncf (min/max statistics, bias correction)")}
    write_calibration_json(out_dir / CALIBRATION_JSON, cset, method=calibration_summary["method"],
                           target=target.name, preprocessing=pre.to_dict(), selection=selection)
    info["calibration"] = calibration_summary
    report_fallback(target, info["fallback"])
    return [*files, CALIBRATION_JSON], info
