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
  quantisers turned into signed zero-point-0 ones (``signed_activations``). On the NEU model bias
  correction is what keeps the symmetric TensorRT graph within the gate: ORT's min/max symmetric
  QDQ flips 7 of 360 answers, NNCF's 1.

Then the gates, chosen and judged on different images. The float layers are *chosen* on a selection
set (``calibration.build_selection_set``: training images that are neither calibration nor validation
images, with the source float model's logits; ``Judge``); the validation set (eval.npz) only *judges*
the graph that ships, afterwards (``fallback.held_out``), and a miss there is shipped and reported,
never searched again. If the all-INT8 model misses ``max_top1_drop`` / ``min_agreement`` on the
selection set, the layers most sensitive to quantisation are kept in float, as few as the gate
allows there. ONNX Runtime QDQ: each quantised layer is kept in float alone and the logit error it
removes is measured on the calibration images; layers are then excluded in that order, searching
for the smallest count that passes (the calibration ranges are computed once and cached).
OpenVINO and NNCF's ONNX graphs: the same ranking over the activation quantisers, each bypassed alone
(``ov_sensitivity``, ``onnx_sensitivity``), then the fewest bypassed that pass. (NNCF's own
``quantize_with_accuracy_control`` was tried first: on the pruned NEU model, 2 answers off the gate,
it reverted all 64 quantised ops in 10 minutes; bypassing the one input quantiser the ranking puts
first passes, in about a minute.) Either way the manifest lists the layers left in float and why, and says
plainly when no choice of layers can pass.

Last, INT8 has to pay: the float and INT8 graphs are timed in this process on the target's backend;
when INT8 is slower, ``export`` warns (and ``bench`` says so again on the device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.accuracy import agreement
from ..calibration import (
    CalibrationSet,
    SelectionSet,
    build_calibration_set,
    build_selection_set,
    write_calibration_json,
)
from ..errors import ConfigError, require
from ..evalset import EvalSet, reference_logits
from ..manifest import atomic_path, read_manifest
from ..preprocess import Preprocess
from ..rundir import RunDir
from ..targets import Gates, Target
from .pixel_grid import LEVELS, PixelInput, pin_pixel_quantizer, restore_pixels

log = logging.getLogger("edge_tl")

CALIBRATION_JSON = "calibration.json"
CAL_BATCH = 8  # images per calibration inference (ranges are min/max over all of them anyway)
SENSITIVITY_IMAGES = 64  # calibration images the per-layer sensitivity is measured on
EVAL_BATCH = 32
_EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# Gates


def gate_values(logits: np.ndarray, evalset: EvalSet, gates: Gates) -> dict[str, Any]:
    """top-1, top-1 drop (points) and agreement of ``logits`` against the reference, and the verdict."""
    labels = evalset.labels
    ref_top1 = float((evalset.logits.argmax(1) == labels).mean()) if len(labels) else 0.0
    top1 = float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0
    drop = (ref_top1 - top1) * 100.0
    agree = agreement(logits, evalset.logits)
    failed = []
    if gates.max_top1_drop is not None and drop > gates.max_top1_drop + _EPS:
        failed.append(f"top-1 drop {drop:.2f} > {gates.max_top1_drop:g} points")
    if gates.min_agreement is not None and agree < gates.min_agreement - _EPS:
        failed.append(f"agreement {agree:.4f} < {gates.min_agreement:g}")
    return {"top1": top1, "reference_top1": ref_top1, "top1_drop": drop, "agreement": agree,
            "passed": not failed, "failed": failed}


def gate_margin(values: dict[str, Any], gates: Gates) -> float:
    """How far inside both gates a result is, on one scale (>= 0 means it passes both).

    Agreement is a fraction and top-1 drop is in points, so the drop's slack is divided by 100: both
    then count "answers out of one". The fallback search records it to pick the best failing trial.
    """
    slack = [1.0]
    if gates.min_agreement is not None:
        slack.append(values["agreement"] - gates.min_agreement)
    if gates.max_top1_drop is not None:
        slack.append((gates.max_top1_drop - values["top1_drop"]) / 100.0)
    return float(min(slack))


def _has_gates(gates: Gates) -> bool:
    return gates.max_top1_drop is not None or gates.min_agreement is not None


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in ("top1", "top1_drop", "agreement", "passed", "failed")}


# Training images can sit farther from the decision boundary than images the model has never seen (it
# was fit on them), and then the same INT8 logit error flips fewer of them. So on the selection set the
# INT8 error is scaled, around the float model's logits, by how much wider the float model's margins
# are there than on validation (median top-1 minus top-2 logit, a property of the float model alone,
# no INT8 answer on validation is looked at), never below 1 and at most MAX_ERROR_SCALE. Linear probes
# are not fit much closer on their training images (label smoothing, frozen features): NEU 3.54 vs
# 3.42, elpv 1.74 vs 1.67 (scale 1.04); a fully fine-tuned backbone can be, and is then judged harder.
MAX_ERROR_SCALE = 4.0
SELECTION_ERROR_SCALE: float | None = None  # a fixed scale instead of the measured one (tests)


def _margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per row: how far each answer is from changing."""
    top2 = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.zeros((len(logits), 2))
    return top2[:, 1] - top2[:, 0]


def selection_error_scale(select_float: np.ndarray, held_out_float: np.ndarray) -> tuple[float, dict[str, float]]:
    """The factor INT8 logit errors are scaled by on the selection set, and the medians it came from."""
    sel, val = float(np.median(_margins(select_float))), float(np.median(_margins(held_out_float)))
    ratio = sel / val if val > 0 else 1.0
    return float(np.clip(ratio, 1.0, MAX_ERROR_SCALE)), {"selection": sel, "validation": val}


@dataclasses.dataclass
class Judge:
    """Where the INT8 fallback chooses, and where its result is judged.

    ``select`` (training images that are neither calibration nor validation images, with the gate's
    reference logits) is what the search for float layers sees; ``held_out`` (the validation set,
    eval.npz) is measured once, on the graph that ships, and decides the gate verdict in the manifest.
    Choosing on the set that is then reported made the old figures optimistic: on three held-out test
    sets every INT8 export that passed on validation failed on new images.
    """

    held_out: EvalSet
    gates: Gates
    select: EvalSet | None = None  # None: no gates, or the fallback is off (nothing is chosen)
    select_float: np.ndarray | None = None  # the source float model's logits on select.inputs
    error_scale: float = 1.0
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # the manifest's fallback.selection

    def on_selection(self, int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """Gate values on the selection set of the INT8 graph ``int8_logits(inputs)``, its logit error
        scaled by ``error_scale`` around the float model's logits."""
        if self.select is None or self.select_float is None:
            raise ValueError("no selection set: the fallback has nothing to choose on")
        ref = self.select_float.astype(np.float64)
        got = int8_logits(self.select.inputs).astype(np.float64)
        return gate_values((ref + self.error_scale * (got - ref)).astype(np.float32), self.select, self.gates)

    def on_held_out(self, int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """Gate values on the validation set (unscaled: these are the figures the bench reports)."""
        return gate_values(int8_logits(self.held_out.inputs), self.held_out, self.gates)


def _torch_source_logits(src: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Logits of the torch model saved in ``src`` (for callers that do not pass ``model_logits``)."""
    import torch

    from ..checkpoint import load_model

    model, _ = load_model(src)

    def run(inputs: np.ndarray, batch: int = 32) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([model(torch.from_numpy(inputs[i:i + batch])).float().numpy()
                                   for i in range(0, len(inputs), batch)])

    return run


def make_judge(target: Target, run: RunDir, src: Path, evalset: EvalSet, src_logits: np.ndarray,
               against_source: bool, selection: Callable[[], SelectionSet],
               model_logits: Callable[[np.ndarray], np.ndarray] | None) -> tuple[Judge, SelectionSet | None]:
    """The selection set with its reference logits (the same reference as ``evalset``: the full model,
    or the source model when ``against_source``), or a judge without one when nothing is chosen.
    ``src_logits``: the source float model on ``evalset`` (its margins set the error scale)."""
    q = target.quantizer
    if not len(evalset.labels) or not _has_gates(target.gates) or not q.accuracy_fallback:
        return Judge(evalset, target.gates), None
    sel = selection()
    float_sel = (model_logits or _torch_source_logits(src))(sel.inputs).astype(np.float32)
    full = src.resolve() == run.finetune.resolve()
    ref = float_sel if full or against_source else reference_logits(run, sel.inputs).astype(np.float32)
    select = EvalSet(sel.inputs, sel.labels, ref, list(sel.classes), [im["path"] for im in sel.images], sel.source)
    reference = f"float {src.name} model" if against_source and not full else "full model"
    float_values = gate_values(float_sel, select, target.gates)
    if not float_values["passed"]:
        # As on validation: a pruned model that already misses the gate here leaves no room to choose.
        select = dataclasses.replace(select, logits=float_sel)
        reference = f"float {src.name} model (it misses the gate against the full model on these images)"
    scale, medians = selection_error_scale(float_sel, src_logits)
    if SELECTION_ERROR_SCALE is not None:
        scale = SELECTION_ERROR_SCALE
    record = sel.summary() | {
        "reference": reference, "error_scale": scale, "float_margin_median": medians,
        "rule": (f"float layers are chosen on these {len(sel.images)} images, never on validation; there the INT8 "
                 f"logit error is scaled ×{scale:.3g} around the float logits (the float model's median margin "
                 "on them over its median margin on validation, at least 1: training images may sit farther from "
                 "the boundary than new ones); the verdict is measured afterwards on the "
                 f"{len(evalset.labels)} validation images (held_out)")}
    return Judge(evalset, target.gates, select, float_sel, scale, record), sel


def _fallback_start(target: Target, judge: Judge, float_values: dict[str, Any] | None, where: str,
                    int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The fallback record of the all-INT8 graph on the selection set (``int8_logits(inputs)``, only
    called when something is to be chosen) and a ``status``: ``no gates``, ``disabled``, ``not needed``,
    ``cannot pass`` (the float model already misses) or ``needed`` (the caller searches for layers to
    keep in float). The verdict on validation is ``_held_out``'s, afterwards."""
    if not len(judge.held_out.labels) or not _has_gates(target.gates):
        return {"status": "no gates", "message": "no accuracy gate to check"}
    if not target.quantizer.accuracy_fallback or judge.select is None:
        return {"status": "disabled", "message": "quantizer.accuracy_fallback is off: the all-INT8 graph ships"}
    before = judge.on_selection(int8_logits)
    fallback: dict[str, Any] = {
        "selection": judge.record, "before": _short(before),
        "measured_on": (f"{len(judge.select.labels)} selection images ({judge.record.get('source')}; {where} on "
                        f"this host, INT8 error ×{judge.error_scale:g}): before, after and trials")}
    if before["passed"]:
        fallback["status"] = "not needed"
    elif float_values is not None and not float_values["passed"]:
        fallback |= {"status": "cannot pass", "message": _float_fails_message(float_values)}
    else:
        fallback["status"] = "needed"
    return fallback


def _held_out(target: Target, fallback: dict[str, Any], judge: Judge, where: str,
              int8_logits: Callable[[np.ndarray], np.ndarray]) -> None:
    """The gate verdict of the graph that ships, on the validation set nothing was chosen on.

    A miss here is recorded and shipped, never searched again on validation: a second search there
    would choose on the very images the figures are reported on (the optimism this replaces)."""
    if fallback["status"] == "no gates":
        return
    es = judge.held_out
    values = judge.on_held_out(int8_logits)
    fallback["held_out"] = _short(values) | {
        "n": len(es.labels), "measured_on": f"{len(es.labels)} validation images (eval.npz; {where} on this host), "
        "held out: no float layer was chosen on them"}
    if values["passed"]:
        return
    failed = "; ".join(values["failed"])
    if fallback["status"] in ("not needed", "passed"):
        chosen = len(fallback.get("float_layers", []))
        n_sel = len(judge.select.labels) if judge.select is not None else 0
        fallback["message"] = (
            f"INT8 ({chosen} layer(s) in float) passes the gate on the {n_sel} "
            f"selection images it was chosen on but misses it on the {len(es.labels)} held-out validation "
            f"images ({failed}): shipped as chosen and not searched again on validation (that would report "
            "figures chosen on the same images); bench will fail this target. Calibrate on production images "
            "(--calibration) or use the fp32 target")
    elif fallback["status"] == "disabled":
        fallback["message"] = (f"INT8 misses the gate on the {len(es.labels)} validation images ({failed}) and "
                               "quantizer.accuracy_fallback is off: shipping the all-INT8 graph; bench will fail "
                               "this target")


# --------------------------------------------------------------------------------------------------
# Entry point


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
    (``_quantize_qat``).
    """
    q = target.quantizer
    if q.method == "none":
        raise ConfigError(f"{target.name}: precision is int8 but quantizer.method is 'none' "
                          "(use onnx_qdq or nncf)")
    if q.method == "onnx_qdq" and target.backend not in ("onnxruntime", "tensorrt"):
        raise ConfigError(f"{target.name}: quantizer.method 'onnx_qdq' needs backend onnxruntime or "
                          f"tensorrt, not {target.backend}")
    # Bad combinations fail early (ONNX graphs: the QDQ form the runtime accepts).
    settings = ort_settings(target) if target.backend != "openvino" else None
    src_manifest = read_manifest(src, verify=False)
    pre = Preprocess.from_dict(src_manifest["preprocessing"])
    cset = build_calibration_set(run, pre, src_manifest["classes"], q.calibration_size,
                                 user_source=calibration, quiet=quiet)
    float_values = gate_values(src_logits, evalset, target.gates) if len(evalset.labels) else None
    gate_reference = "full model"
    if float_values is not None and not float_values["passed"]:
        # A pruned float model can already miss the gate against the full model; then no float layers
        # could pass, but quantisation must still not add its own loss on top: judge it against the
        # float model it came from (the bench still reports against the full model).
        log.warning("%s: the float %s model already misses the gate against the full model (%s); the INT8 "
                    "fallback judges quantisation against the float %s model instead", target.name, src.name,
                    "; ".join(float_values["failed"]), src.name)
        evalset = dataclasses.replace(evalset, logits=src_logits)
        float_values = gate_values(src_logits, evalset, target.gates)
        gate_reference = f"float {src.name} model (it misses the gate against the full model)"
    judge, sel = make_judge(target, run, src, evalset, src_logits, gate_reference != "full model",
                            lambda: build_selection_set(run, pre, src_manifest["classes"], cset, quiet=quiet)
                            if selection is None else selection, model_logits)

    if qat_epochs:
        if model is None:
            from ..checkpoint import load_model

            model, _ = load_model(src)
        files, info = _quantize_qat(target, run, model, out_dir, cset, judge, sel, float_values, pre, qat_epochs,
                                    quiet)
    elif q.method == "nncf" and target.backend == "openvino":
        files, info = _quantize_openvino(target, float_onnx, out_dir, cset, judge, float_values, pre)
    elif q.method == "nncf":
        files, info = _quantize_nncf_onnx(target, float_onnx, out_dir, cset, judge, float_values, pre)
        if info["fallback"]["status"] == "needed":
            # NNCF's graph misses the gate on the selection set: the QDQ path below can keep chosen layers
            # in float (chosen on the same selection set; validation still only judges).
            first = {k: v for k, v in info["fallback"].items() if k not in ("selection", "float_layers")}
            first_quantizer = info["quantizer"]
            files, info = _quantize_onnx(target, settings or {}, float_onnx, out_dir, cset, judge, float_values)
            info["fallback"]["first_try"] = first | {
                "quantizer": first_quantizer,
                "status": "missed the gate on the selection set; replaced by onnx_qdq with fallback"}
    else:
        files, info = _quantize_onnx(target, settings or {}, float_onnx, out_dir, cset, judge, float_values)

    speed = speed_check(target, float_onnx, out_dir / target.model_file)
    info["speed_check"] = speed
    info["gate_reference"] = gate_reference
    info["int8_speedup_over_float"] = speed.get("speedup")
    methods = {"onnx_qdq": q.calibration_method, "qat": "moving-average min/max observers, then trained weights"}
    calibration_summary = cset.summary() | {"method": methods.get(info["quantizer"]["method"],
                                                                  "nncf (min/max statistics, bias correction)")}
    # The selection images are listed beside the calibration images: both sets are auditable by sha256.
    write_calibration_json(out_dir / CALIBRATION_JSON, cset, method=calibration_summary["method"],
                           target=target.name, preprocessing=pre.to_dict(),
                           selection=(sel.summary() | {"images": sel.images}) if sel is not None else None)
    info["calibration"] = calibration_summary
    _report_fallback(target, info["fallback"])
    return [*files, CALIBRATION_JSON], info


def _quantize_qat(target: Target, run: RunDir, model: Any, out_dir: Path, cset: CalibrationSet, judge: Judge,
                  sel: SelectionSet | None, float_values: dict[str, Any] | None, pre: Preprocess, epochs: int,
                  quiet: bool) -> tuple[list[str], dict[str, Any]]:
    """Quantisation-aware training (``stages/qat.py``), then the same verdicts as post-training INT8.

    Trains on the training split less the selection and validation images, keeps the epoch whose
    fake-quantised model does best against the gate on the selection set (epoch 0: calibrated, not
    trained), exports it as a QDQ graph (ONNX Runtime, TensorRT) or converts that to OpenVINO IR, and
    judges the graph the runtime will execute on the selection set and then on validation. No float
    layers are searched for: QAT is for the models where that search ends mostly float."""
    from ..data import split_from_json
    from ..manifest import read_json
    from . import qat

    require("torch", "train")
    q = target.quantizer
    mapping = qat.qconfig_mapping(q.activations, q.symmetric_activations,
                                  # u8×s8 kernels of x86 CPUs without VNNI (ONNX Runtime's and OpenVINO's alike)
                                  # saturate 8-bit activations: elpv's QAT graph with them flipped 294 of 525
                                  # answers in OpenVINO. 7 bits are safe on every x86 CPU the graph may meet.
                                  reduce_range=True)
    t0 = time.perf_counter()
    qm = qat.prepare(model, pre.crop, mapping, cset.inputs)
    root, train, val = split_from_json(read_json(run.finetune / "split.json"))
    held = {im["path"] for im in sel.images} if sel is not None else set()
    samples = [s for s in train if s.path not in held and s.path not in {v.path for v in val}]

    def score(m: Any) -> float:
        if judge.select is None:
            return 0.0  # nothing to choose on: the last epoch ships
        values = judge.on_selection(lambda inputs: qat.logits_of(m, inputs))
        return gate_margin(values, target.gates) + values["agreement"] * 1e-3
    qm, history = qat.train(qm, model, root, samples, pre, epochs, score=score, quiet=quiet)
    best = max(history, key=lambda h: (h["score"], h["epoch"]))["epoch"]
    qdq = qat.to_onnx(qm, pre.crop, target.opset)
    seconds = time.perf_counter() - t0
    if target.backend == "openvino":
        ov = require("openvino", "openvino")
        with tempfile.TemporaryDirectory(prefix="edge-tl-qat-") as work:
            (Path(work) / "qat.onnx").write_bytes(qdq)
            ov_model = ov.convert_model(str(Path(work) / "qat.onnx"))
        files = ["model.xml", "model.bin"]
        ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
        where = "OpenVINO CPU"

        def logits(inputs: np.ndarray) -> np.ndarray:
            return _ov_logits(ov_model, inputs, target.threads, target.batch_size)
    else:
        dest = out_dir / target.model_file
        with atomic_path(dest) as tmp:
            tmp.write_bytes(qdq)
        files, where = [dest.name], "ONNX Runtime CPU"

        def logits(inputs: np.ndarray) -> np.ndarray:
            return _ort_logits(qdq, inputs, target.threads, target.batch_size)
    fallback = _fallback_start(target, judge, float_values, where, logits)
    if "before" in fallback:
        fallback["after"] = fallback["before"]
    if fallback["status"] == "needed":
        fallback |= {"status": "cannot pass", "message": (
            f"the QAT graph misses the gate on the selection set ({'; '.join(fallback['before']['failed'])}) "
            "after " f"{epochs} epoch(s): shipped as trained; try more --qat epochs or use the fp32 target")}
    fallback["float_layers"] = []
    _held_out(target, fallback, judge, where, logits)
    quantizer = {
        "method": "qat", "library": _torch_version(),
        "algorithm": ("quantisation-aware training (torch.ao FX fake quantisation, distilled from "
                      f"the float model at lr {qat.QAT_LR:g}, BatchNorm folded first)"),
        "activations": ("int8 symmetric, per tensor" if q.activations == "int8" or q.symmetric_activations
                        else "uint8 affine, per tensor" + (" (7-bit: no saturation on x86 without VNNI)"
                                                           if mapping_reduced(mapping) else "")),
        "weights": "int8 symmetric, per channel",
        "epochs": epochs, "chosen_epoch": best, "images_per_epoch": min(len(samples), qat.QAT_IMAGES_PER_EPOCH),
        "trained_on": f"{len(samples)} training images (not selection, not validation)",
        "chosen_on": (f"{len(judge.select.labels)} selection images (gate margin of the fake-quantised model)"
                      if judge.select is not None else "no selection set: the last epoch"),
        "history": history, "seconds": seconds}
    return files, {"quantizer": quantizer, "float_layers": [], "fallback": fallback}


def mapping_reduced(mapping: Any) -> bool:
    """Whether the QConfigMapping's activation quantiser keeps to 7 bits."""
    act = mapping.global_qconfig.activation()
    return bool(act.quant_max == 127 and act.quant_min == 0)


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__} (torch.ao.quantization)"


def _report_fallback(target: Target, fb: dict[str, Any]) -> None:
    status = fb["status"]
    held = fb.get("held_out")
    if held is not None and not held["passed"] and status not in ("cannot pass", "disabled"):
        log.warning("%s: %s", target.name, fb["message"])
    kept, total = len(fb.get("float_layers", [])), fb.get("candidates") or 0
    if status == "passed":
        log.info("%s: %d layer(s) kept in float to pass the gates (%s)", target.name, kept,
                 ", ".join(fb.get("float_layers", [])[:5]))
        if total and kept > total / 2:
            # Past half the layers, the graph is mostly float with Q/DQ hops in between: rarely faster.
            fb["note"] = (f"{kept} of {total} quantised layers stayed float to pass the gate: this is mostly a "
                          "float model; INT8 is unlikely to pay on this target (compare with the float target)")
            log.warning("%s: %s", target.name, fb["note"])
    elif status == "cannot pass" or (status == "disabled" and "message" in fb and held and not held["passed"]):
        log.warning("%s: %s", target.name, fb["message"])


# --------------------------------------------------------------------------------------------------
# ONNX Runtime QDQ


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed images (duck-typed: get_next/rewind)."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int = CAL_BATCH) -> None:
        self.input_name = input_name
        self.batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
        self.start, self.end = 0, len(self.batches)
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = self.start

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.pos = start_index


def ort_settings(target: Target) -> dict[str, Any]:
    """The quantize_static arguments for this target's QDQ form (and a readable summary)."""
    q = target.quantizer
    if target.backend == "tensorrt" and (q.activations != "int8" or not q.symmetric_activations):
        raise ConfigError(f"{target.name}: TensorRT needs symmetric int8 activations (zero point 0); set "
                          "quantizer.activations = 'int8' and quantizer.symmetric_activations = true")
    if target.backend == "tensorrt" and not q.per_channel:
        log.warning("%s: TensorRT runs per-channel weight scales best; per_channel is off", target.name)
    if target.backend == "tensorrt":
        form = "TensorRT explicit precision: symmetric int8 activations and weights, zero point 0"
    elif q.activations == "uint8":
        form = "x86 u8s8: unsigned activations, signed weights (VNNI / AVX2 kernels)"
    else:
        form = "s8s8: signed activations and weights (ARM64 SDOT / I8MM kernels)"
    return {
        "activations": q.activations, "weights": q.weights, "per_channel": q.per_channel,
        "activation_symmetric": q.symmetric_activations, "weight_symmetric": True,
        # reduce_range (7-bit weights) only helps x86 CPUs without VNNI; the dev hosts have VNNI and
        # ARM/TensorRT never need it.
        "reduce_range": False, "calibration_method": q.calibration_method, "form": form,
        # TensorRT takes int8 Q/DQ only and adds biases in float itself; an int32 bias DQ is rejected
        # (onnx-tensorrt#850). The CPU kernels want the int32 bias (it folds into QLinearConv).
        "quantize_bias": target.backend != "tensorrt",
    }


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


@contextlib.contextmanager
def _quiet_library_logging() -> Iterator[None]:
    """onnxruntime.quantization and NNCF log advice on the root/nncf loggers; keep the CLI readable."""
    root = logging.getLogger()
    nncf_logger = logging.getLogger("nncf")
    saved = root.level, nncf_logger.level
    root.setLevel(logging.ERROR)
    nncf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        nncf_logger.setLevel(saved[1])


# An anomaly graph (``anomaly.model``) quantises its backbone only: the nearest-neighbour distances
# ‖a‖² − 2a·b + ‖b‖² subtract large, nearly equal terms, and with the bank in 8 bits every decision of
# the synthetic test set's model flipped (agreement 0.5 at any fallback). Nodes outside the backbone
# stages (``/features/to8/``, ``/features/to16/``: aggregation, projection, distances) stay float on every
# backend. Keeping the last block of each stage float too was measured and dropped: on elpv (PaDiM,
# OpenVINO) decision agreement 0.958 -> 0.959, the error builds up over the whole backbone.
ANOMALY_OUTPUT = "anomaly_map"
BACKBONE_STAGES = ("/features/to8/", "/features/to16/")


def anomaly_float_names(names: list[str]) -> list[str]:
    """Of an anomaly graph's node names, those that stay float (see above)."""
    return [n for n in names if not n.startswith(BACKBONE_STAGES)]


def fixed_float_onnx(graph: Any) -> list[str]:
    """Names of the nodes of an ONNX graph that must stay float (an anomaly graph's distance part)."""
    if not any(o.name == ANOMALY_OUTPUT for o in graph.output):
        return []
    return anomaly_float_names([n.name for n in graph.node])


def fixed_float_openvino(model: Any) -> list[str]:
    """The same for an OpenVINO model converted from the ONNX graph (friendly names keep the ONNX names)."""
    if not any(ANOMALY_OUTPUT in o.get_names() for o in model.outputs):
        return []
    return anomaly_float_names([op.get_friendly_name() for op in model.get_ops()
                                if op.get_type_name() not in ("Parameter", "Result", "Constant")])


def _qdq(pre_path: Path, out_path: Path, settings: dict[str, Any], cache: Path,
         reader: _Reader | None = None, exclude: list[str] | tuple[str, ...] = ()) -> None:
    """One quantize_static call; ranges come from ``cache`` (computed from ``reader`` the first time)."""
    import onnx

    qz = require("onnxruntime.quantization", "runtime")
    qtype = {"uint8": qz.QuantType.QUInt8, "int8": qz.QuantType.QInt8}
    exclude = [*exclude, *fixed_float_onnx(onnx.load(str(pre_path), load_external_data=False).graph)]
    extra: dict[str, Any] = {"ActivationSymmetric": settings["activation_symmetric"],
                             "WeightSymmetric": settings["weight_symmetric"],
                             "QuantizeBias": settings["quantize_bias"]}
    method = _calibrate_method(settings["calibration_method"])
    if reader is not None and settings["calibration_method"] != "minmax":
        # Histogram calibrators keep every activation of a collect pass in memory: collect in chunks.
        n = len(reader)
        extra["CalibStridedMinMax"] = max(d for d in range(1, 5) if n % d == 0)
    with _quiet_library_logging():
        qz.quantize_static(str(pre_path), str(out_path), reader, quant_format=qz.QuantFormat.QDQ,
                           per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                           activation_type=qtype[settings["activations"]],
                           weight_type=qtype[settings["weights"]], nodes_to_exclude=list(exclude),
                           calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache))


def _ort_session(model: str | bytes, threads: int = 2) -> Any:
    ort = require("onnxruntime", "runtime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _ort_logits(model: str | bytes, inputs: np.ndarray, threads: int = 2, batch: int = EVAL_BATCH) -> np.ndarray:
    sess = _ort_session(model, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([np.asarray(sess.run(None, {name: inputs[i:i + batch]})[0], np.float32)
                           for i in range(0, len(inputs), batch)])


def _preprocess_graph(float_onnx: Path, dest: Path) -> None:
    """ORT's quantisation pre-processing: shape inference and the basic (standard-op) graph optimisations."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_library_logging():
        try:
            quant_pre_process(str(float_onnx), str(dest))
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs
            quant_pre_process(str(float_onnx), str(dest), skip_symbolic_shape=True)


def quantized_nodes(model: Any) -> list[str]:
    """Names of the compute nodes of a QDQ graph that read a DequantizeLinear output, in graph order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or not n.name:
            continue
        if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            out.append(n.name)
    return out


_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def keep_float(qmodel: Any, names: list[str] | tuple[str, ...], float_model: Any) -> Any:
    """A copy of QDQ graph ``qmodel`` in which the nodes ``names`` compute in float.

    Mirrors what quantize_static does with ``nodes_to_exclude``: their quantised initialisers
    (weights, bias) become the float originals, and an activation input leaves its Q/DQ pair only
    when nothing else keeps that tensor quantised (a quantised producer quantises its outputs). Made
    in milliseconds instead of a re-quantisation, it is used to *measure* and *search*; the shipped
    graph is always made, and re-checked, by quantize_static.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    f_producers = {o: n for n in float_model.graph.node for o in n.output}
    f_nodes = {n.name: n for n in float_model.graph.node}
    f_inits = {i.name: i for i in float_model.graph.initializer}
    # The quantiser reuses some original names (a bias DQ's output keeps the bias name): ours get a suffix.
    defined = {i.name for i in g.initializer} | {i.name for i in g.input} | set(producers)
    new_nodes: list[tuple[Any, Any]] = []  # (insert after this node, node)

    def float_initializer(name: str) -> str:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(f_inits[name])
        tensor.name = f"{name}__float"
        if tensor.name not in defined:
            g.initializer.append(tensor)
            defined.add(tensor.name)
        return tensor.name

    def float_activation(tensor: str) -> str:
        """The float value of ``tensor``: where the quantiser folded a Relu/Clip into the Q range, the
        producer's raw output is unclipped, so the activation is put back for the float reader."""
        act, made_by = f_producers.get(tensor), producers.get(tensor)
        if act is None or act.op_type not in _FOLDED_ACTIVATIONS or made_by is None or made_by.op_type == act.op_type:
            return tensor
        out = f"{tensor}__float"
        if out not in defined:
            node = onnx.NodeProto()
            node.CopyFrom(act)
            node.name = f"{act.name}__float"
            node.input[0] = tensor
            for i in range(1, len(node.input)):
                if node.input[i] in f_inits:
                    node.input[i] = float_initializer(node.input[i])
            node.output[0] = out
            new_nodes.append((made_by, node))
            defined.add(out)
        return out

    wanted = set(names)
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def stays_quantized(q: Any) -> bool:
        """Whether quantize_static would still quantize tensor ``q.input[0]`` with ``names`` excluded:
        its producer is quantized (outputs of quantized nodes get Q/DQ) or another reader wants it."""
        made_by = producers.get(q.input[0])
        if made_by is not None and made_by.name not in wanted:
            return True
        readers = [c for dq in consumers.get(q.output[0], []) for c in consumers.get(dq.output[0], [])]
        return any(r.name not in wanted for r in readers)

    for node in g.node:
        if node.name not in wanted:
            continue
        fnode = f_nodes.get(node.name)
        for idx, inp in enumerate(list(node.input)):
            dq = producers.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                if not stays_quantized(q):
                    node.input[idx] = float_activation(q.input[0])
            elif fnode is not None and idx < len(fnode.input) and fnode.input[idx] in f_inits:
                node.input[idx] = float_initializer(fnode.input[idx])
    for after, node in new_nodes:  # keep the node list topologically sorted
        pos = next(i for i, n in enumerate(g.node) if n is after or n.name == after.name)
        g.node.insert(pos + 1, node)
    return m


def _rel_error(approx: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared logit error relative to the logits' mean square (scale-free)."""
    a, r = approx.astype(np.float64), ref.astype(np.float64)
    return float(np.mean((a - r) ** 2) / max(float(np.mean(r ** 2)), 1e-12))


def layer_sensitivity(pre_path: Path, q_path: Path, inputs: np.ndarray, threads: int = 2,
                      ) -> tuple[float, list[dict[str, Any]]]:
    """Each quantised node kept in float alone: how much of the INT8 logit error it removes.

    Returns the all-INT8 relative logit error and one row per node (``name``, ``op_type``,
    ``sensitivity`` = error removed, ``error_if_float``), most sensitive first.
    """
    import onnx

    float_model = onnx.load(str(pre_path))
    qmodel = onnx.load(str(q_path))
    ops = {n.name: n.op_type for n in qmodel.graph.node}
    ref = _ort_logits(str(pre_path), inputs, threads)
    base = _rel_error(_ort_logits(str(q_path), inputs, threads), ref)
    rows = []
    for name in quantized_nodes(qmodel):
        variant = keep_float(qmodel, [name], float_model).SerializeToString()
        err = _rel_error(_ort_logits(variant, inputs, threads), ref)
        rows.append({"name": name, "op_type": ops[name], "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows


def search_fewest(n: int, trial: Callable[[int], dict[str, Any]], failing: int = 0) -> int | None:
    """The smallest k in failing+1..n whose ``trial(k)`` passes, assuming more float layers never hurt.

    Steps k up by doubling strides until a pass, then bisects between the last failure and the first
    pass: about 2·log2(n) trials instead of n. ``failing`` is a count already known to fail. None
    when even k = n fails.
    """
    lo, step = failing, 1
    while True:
        k = min(lo + step, n)
        if k <= lo:
            return None
        if trial(k)["passed"]:
            hi = k
            break
        lo = k
        step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(mid)["passed"]:
            hi = mid
        else:
            lo = mid
    return hi


def _quantize_onnx(target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path,
                   cset: CalibrationSet, judge: Judge, float_values: dict[str, Any] | None
                   ) -> tuple[list[str], dict[str, Any]]:
    import onnx

    ort = require("onnxruntime", "runtime")
    dest = out_dir / target.model_file
    # TensorRT's threads setting means nothing to ONNX Runtime on this host: use a few cores.
    threads = target.threads if target.backend == "onnxruntime" else min(4, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="edge-tl-quant-") as work_str:
        work = Path(work_str)
        pre_path, cache = work / "pre.onnx", work / "ranges.json"
        _preprocess_graph(float_onnx, pre_path)
        input_name = onnx.load(str(pre_path), load_external_data=False).graph.input[0].name
        t0 = time.perf_counter()
        # Histogram calibrators stack a chunk's activations into one array: equal batches (one image) only.
        cal_batch = CAL_BATCH if settings["calibration_method"] == "minmax" else 1
        _qdq(pre_path, work / "q-0.onnx", settings, cache, reader=_Reader(input_name, cset.inputs, cal_batch))
        calib_seconds = time.perf_counter() - t0

        trials: dict[int, dict[str, Any]] = {}  # graphs made by quantize_static (what ships)
        approx: dict[int, dict[str, Any]] = {}  # keep_float approximations (for the search)
        ranked: list[dict[str, Any]] = []
        models: dict[str, Any] = {}

        def logits(model: str | bytes) -> Callable[[np.ndarray], np.ndarray]:
            # The batch size export's validation and bench use: near-ties can depend on it.
            return lambda inputs: _ort_logits(model, inputs, threads, target.batch_size)

        def evaluate(model: str | bytes, k: int) -> dict[str, Any]:
            # Chosen on the selection set only; validation judges the shipped graph (_held_out).
            values = judge.on_selection(logits(model))
            return values | {"k": k, "margin": gate_margin(values, target.gates)}

        def real(k: int) -> dict[str, Any]:
            if k not in trials:
                path = work / f"q-{k}.onnx"
                if not path.exists():
                    _qdq(pre_path, path, settings, cache, exclude=[r["name"] for r in ranked[:k]])
                trials[k] = evaluate(str(path), k)
            return trials[k]

        def approximate(k: int) -> dict[str, Any]:
            if k not in approx:
                variant = keep_float(models["q"], [r["name"] for r in ranked[:k]], models["float"])
                approx[k] = evaluate(variant.SerializeToString(), k)
            return approx[k]

        chosen = 0
        fallback = _fallback_start(target, judge, float_values, "ONNX Runtime CPU", logits(str(work / "q-0.onnx")))
        if fallback["status"] not in ("no gates", "disabled"):
            if fallback["status"] == "needed":
                n_sens = min(SENSITIVITY_IMAGES, len(cset.inputs))
                base_err, ranked = layer_sensitivity(pre_path, work / "q-0.onnx", cset.inputs[:n_sens],
                                                     threads)
                models["q"], models["float"] = onnx.load(str(work / "q-0.onnx")), onnx.load(str(pre_path))
                n = len(ranked)
                # Search on fast approximations, then confirm on real quantize_static graphs from the
                # guess upwards (usually one re-quantisation).
                guess = search_fewest(n, approximate)
                found = search_fewest(n, real, failing=(guess if guess is not None else n) - 1)
                fallback |= {"candidates": n, "int8_logit_error": base_err,
                             "sensitivity_measured_on": f"{n_sens} calibration images ({cset.source}), "
                             "logit error vs the float graph, one layer kept in float at a time"}
                if found is not None:
                    chosen = found
                    fallback["status"] = "passed"
                else:
                    # Nothing passes: ship the best of what was tried, and say so.
                    chosen = max(trials.values(), key=lambda t: (t["margin"], -t["k"]))["k"]
                    fallback |= {"status": "cannot pass", "message": (
                        f"INT8 cannot pass the gate on the selection set even with all {n} quantised layers in "
                        f"float (best tried: {chosen} in float, {'; '.join(trials[chosen]['failed'])}); "
                        "use the fp32 target or calibrate on images closer to production (--calibration)")}
            fallback["after"] = _short(real(chosen))
            fallback["trials"] = [
                {"float_layers": t["k"], "graph": graph, "top1_drop": t["top1_drop"],
                 "agreement": t["agreement"], "passed": t["passed"]}
                for graph, table in (("approximate", approx), ("quantize_static", trials))
                for _, t in sorted(table.items())]
        shutil.copyfile(work / f"q-{chosen}.onnx", dest)
        fallback["float_layers"] = [r["name"] for r in ranked[:chosen]]
        _held_out(target, fallback, judge, "ONNX Runtime CPU", logits(str(dest)))

    float_layers = [
        {"name": r["name"], "op_type": r["op_type"], "sensitivity": r["sensitivity"], "rank": i + 1,
         "reason": _float_reason(fallback, i, len(ranked))}
        for i, r in enumerate(ranked[:chosen])
    ]
    fallback["float_layers"] = [r["name"] for r in float_layers]
    model = onnx.load(str(dest), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if target.backend == "tensorrt" and (opset is None or opset < 13):
        raise ConfigError(f"{target.name}: the QDQ graph has opset {opset}; TensorRT's per-channel QDQ "
                          "needs opset >= 13 (raise the profile's opset)")
    quantizer = {"method": "onnx_qdq", "library": f"onnxruntime {ort.__version__}", "format": "QDQ",
                 "opset": opset, "calibration_seconds": calib_seconds, **settings}
    return [dest.name], {"quantizer": quantizer, "float_layers": float_layers, "fallback": fallback}


def _float_reason(fallback: dict[str, Any], index: int, total: int) -> str:
    failed = "; ".join(fallback.get("before", {}).get("failed", [])) or "the gate failed"
    return (f"accuracy fallback: all-INT8 missed the gate on the selection set ({failed}); ranked {index + 1} of "
            f"{total} by "
            "sensitivity (INT8 logit error removed when this layer alone stays float)")


def _float_fails_message(float_values: dict[str, Any]) -> str:
    return ("the float model itself misses the gate against the reference "
            f"({'; '.join(float_values['failed'])}), so no choice of float layers can pass: shipping the "
            "all-INT8 graph; bench will fail this target")


# --------------------------------------------------------------------------------------------------
# NNCF on the ONNX graph (TensorRT, or ONNX Runtime on request)


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
        _preprocess_graph(source, pre)
        model = onnx.load(str(pre))
    input_name = model.graph.input[0].name
    n = len(inputs)
    calib = nncf.Dataset([inputs[i:i + 1] for i in range(n)], lambda x: {input_name: x})
    extra: dict[str, Any] = {}
    # Quantisers in front of the restoring ops would round the normalised input again.
    float_ops = [*(pixels.float_ops if pixels is not None else ()), *fixed_float_onnx(model.graph)]
    if float_ops:
        extra["ignored_scope"] = nncf.IgnoredScope(names=float_ops, validate=False)
    t0 = time.perf_counter()
    with _quiet_library_logging():
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


def _quantize_nncf_onnx(target: Target, float_onnx: Path, out_dir: Path, cset: CalibrationSet,
                        judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess,
                        ) -> tuple[list[str], dict[str, Any]]:
    """``nncf_quantize_onnx`` for a target, then its gates on the selection set.

    ONNX Runtime: when they fail there, the most sensitive activation quantisers of NNCF's graph are
    bypassed, as few as pass (``onnx_without``; the OpenVINO fallback's rule), and that graph ships.
    TensorRT: ``fallback.status`` is ``needed`` and the caller takes the QDQ layer-fallback path.
    Validation gives the verdict afterwards (``held_out``)."""
    import onnx

    dest = out_dir / target.model_file
    threads = target.threads if target.backend == "onnxruntime" else min(4, os.cpu_count() or 1)
    q = target.quantizer
    with tempfile.TemporaryDirectory(prefix="edge-tl-quant-") as work:
        pre_path = Path(work) / "pre.onnx"
        quantizer = nncf_quantize_onnx(float_onnx, dest, cset.inputs, signed=q.activations == "int8",
                                       symmetric=q.symmetric_activations, pre_path=pre_path, preprocess=pre)
        float_model = onnx.load(str(pre_path))

    def logits(model: str | bytes) -> Callable[[np.ndarray], np.ndarray]:
        return lambda inputs: _ort_logits(model, inputs, threads, target.batch_size)

    fallback = _fallback_start(target, judge, float_values, "ONNX Runtime CPU", logits(str(dest)))
    float_layers: list[dict[str, Any]] = []
    if "before" in fallback:
        fallback["after"] = fallback["before"]
    if fallback["status"] == "needed" and target.backend == "onnxruntime":
        qmodel = onnx.load(str(dest))
        n_sens = min(SENSITIVITY_IMAGES, len(cset.inputs))
        base_err, ranked = onnx_sensitivity(qmodel, float_model, cset.inputs[:n_sens], threads)
        trials: dict[int, dict[str, Any]] = {}

        def trial(k: int) -> dict[str, Any]:
            if k not in trials:
                variant = onnx_without(qmodel, [r["name"] for r in ranked[:k]]).SerializeToString()
                trials[k] = judge.on_selection(logits(variant))
            return trials[k]

        found = search_fewest(len(ranked), trial)
        fallback |= {"method": "activation quantisers removed, most sensitive first", "candidates": len(ranked),
                     "int8_logit_error": base_err, "sensitivity_measured_on":
                     f"{n_sens} calibration images ({cset.source}), logit error vs the float graph, one "
                     "activation quantiser removed at a time",
                     "trials": [{"float_inputs": k, "top1_drop": t["top1_drop"], "agreement": t["agreement"],
                                 "passed": t["passed"]} for k, t in sorted(trials.items())]}
        if found is not None:
            fallback |= {"status": "passed", "after": _short(trials[found])}
            with atomic_path(dest) as tmp:
                onnx.save(onnx_without(qmodel, [r["name"] for r in ranked[:found]]), str(tmp))
            float_layers = [
                {"name": r["name"], "op_type": "QuantizeLinear", "reads_it": r["consumers"],
                 "sensitivity": r["sensitivity"], "rank": i + 1,
                 "reason": "accuracy fallback: all-INT8 missed the gate on the selection set "
                 f"({'; '.join(fallback['before']['failed'])}); this activation quantiser was removed, so "
                 f"{', '.join(r['consumers'])} read(s) it in float (ranked {i + 1} of {len(ranked)} by "
                 "logit error removed)"}
                for i, r in enumerate(ranked[:found])]
        else:
            fallback |= {"status": "cannot pass", "message": (
                "INT8 cannot pass the gate on the selection set even with every activation quantiser removed: "
                "shipping the all-INT8 graph; use the fp32 target or calibrate on images closer to production "
                "(--calibration)")}
    fallback["float_layers"] = [r["name"] for r in float_layers]
    if fallback["status"] != "needed":
        _held_out(target, fallback, judge, "ONNX Runtime CPU", logits(str(dest)))
    return [dest.name], {"quantizer": quantizer, "float_layers": float_layers, "fallback": fallback}


def _activation_quantizers(model: Any) -> list[Any]:
    """QuantizeLinear nodes of a QDQ graph that quantise an activation (not a constant weight)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]


def onnx_without(qmodel: Any, names: list[str] | tuple[str, ...]) -> Any:
    """A copy of QDQ graph ``qmodel`` in which the activation QuantizeLinear nodes ``names`` and their
    DequantizeLinear partners are bypassed: every reader of that tensor computes on its float value
    (its weights stay int8). ``ov_without`` for ONNX: exactly the graph that ships, in milliseconds,
    where a re-quantisation with an ignored scope would also redo the bias correction around it."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    wanted = set(names)
    rewire: dict[str, str] = {}
    drop: set[str] = set()
    for q in _activation_quantizers(m):
        if q.name not in wanted:
            continue
        drop.add(q.name)
        for dq in g.node:
            if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                rewire[dq.output[0]] = q.input[0]
                drop.add(dq.name)
    keep = [n for n in g.node if n.name not in drop]
    for n in keep:
        for i, inp in enumerate(n.input):
            if inp in rewire:
                n.input[i] = rewire[inp]
    for out in g.output:
        if out.name in rewire:  # a graph output stays named as it was: an Identity carries the float value
            keep.append(onnx.helper.make_node("Identity", [rewire[out.name]], [out.name]))
    del g.node[:]
    g.node.extend(keep)
    return m


def onnx_sensitivity(qmodel: Any, float_model: Any, inputs: np.ndarray, threads: int = 2,
                     ) -> tuple[float, list[dict[str, Any]]]:
    """Each activation quantiser of QDQ graph ``qmodel`` bypassed alone: how much of the INT8 logit error
    it removes, most sensitive first (rows: ``name``, ``consumers``, ``sensitivity``, ``error_if_float``)."""
    ref = _ort_logits(float_model.SerializeToString(), inputs, threads)
    base = _rel_error(_ort_logits(qmodel.SerializeToString(), inputs, threads), ref)
    rows = []
    for q in _activation_quantizers(qmodel):
        dqs = {n.output[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]}
        consumers = sorted({n.name for n in qmodel.graph.node if set(n.input) & dqs})
        variant = onnx_without(qmodel, [q.name]).SerializeToString()
        err = _rel_error(_ort_logits(variant, inputs, threads), ref)
        rows.append({"name": q.name, "consumers": consumers, "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows


# --------------------------------------------------------------------------------------------------
# OpenVINO + NNCF


def _ov_logits(model: Any, inputs: np.ndarray, threads: int, batch: int = EVAL_BATCH) -> np.ndarray:
    from ..backends.openvino_ import compile_static, cpu_config

    ov = require("openvino", "openvino")
    # Compiled as the bench's runner compiles the INT8 graph, so the gate sees the same numbers.
    core, compiled = ov.Core(), {}
    out = []
    for i in range(0, len(inputs), batch):
        x = inputs[i:i + batch]
        if x.shape not in compiled:
            compiled[x.shape] = compile_static(core, model, x.shape, "CPU", cpu_config(threads, "int8"))
        out.append(np.asarray(compiled[x.shape](x)[0], np.float32))
    return np.concatenate(out)


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


def _quantize_openvino(target: Target, float_onnx: Path, out_dir: Path, cset: CalibrationSet,
                       judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess,
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
    float_ops = [*(pixels.float_ops if pixels is not None else ()), *fixed_float_openvino(model)]
    if float_ops:
        common["ignored_scope"] = nncf.IgnoredScope(names=float_ops, validate=False)
    t0 = time.perf_counter()
    with _quiet_library_logging():
        qmodel = nncf.quantize(model, calib, **common)
        pinned = pin_pixel_quantizer(qmodel, pixels) if pixels is not None else None
    calib_seconds = time.perf_counter() - t0
    quantizer: dict[str, Any] = {
        "method": "nncf", "library": f"nncf {nncf.__version__}, openvino {ov.__version__}",
        "algorithm": "post-training quantisation, min/max statistics, full bias correction",
        "fast_bias_correction": False, "preset": "performance (symmetric int8 weights and activations)",
        "target_device": str(common["target_device"].value), "subset_size": n,
        "calibration_seconds": calib_seconds,
        "input": (pixels.describe() | {"quantizer": pinned}) if pixels is not None
        else "normalised input quantised per tensor (the graph does not start with a plain convolution)",
    }
    float_layers: list[dict[str, Any]] = []
    bs = target.batch_size  # as export's validation and bench run it

    def logits(model: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda inputs: _ov_logits(model, inputs, target.threads, bs)

    fallback = _fallback_start(target, judge, float_values, "OpenVINO CPU", logits(qmodel))
    if fallback["status"] not in ("no gates", "disabled"):
        before = after = fallback["before"]
        if fallback["status"] == "needed":
            n_sens = min(SENSITIVITY_IMAGES, n)
            base_err, ranked = ov_sensitivity(qmodel, model, cset.inputs[:n_sens], target.threads)

            def trial(k: int) -> dict[str, Any]:
                if k not in trials:
                    variant = ov_without(qmodel, [r["name"] for r in ranked[:k]])
                    trials[k] = judge.on_selection(logits(variant))
                return trials[k]

            trials: dict[int, dict[str, Any]] = {}
            found = search_fewest(len(ranked), trial)
            fallback |= {"method": "activation quantisers removed, most sensitive first", "candidates": len(ranked),
                         "int8_logit_error": base_err, "sensitivity_measured_on":
                         f"{n_sens} calibration images ({cset.source}), logit error vs the float model, one "
                         "activation quantiser removed at a time",
                         "trials": [{"float_inputs": k, "top1_drop": t["top1_drop"], "agreement": t["agreement"],
                                     "passed": t["passed"]} for k, t in sorted(trials.items())]}
            if found is not None:
                fallback["status"] = "passed"
                qmodel, after = ov_without(qmodel, [r["name"] for r in ranked[:found]]), trials[found]
                float_layers = [
                    {"name": r["name"], "op_type": "FakeQuantize", "reads_it": r["consumers"],
                     "sensitivity": r["sensitivity"], "rank": i + 1,
                     "reason": "accuracy fallback: all-INT8 missed the gate on the selection set "
                     f"({'; '.join(before['failed'])}); this activation quantiser was removed, so "
                     f"{', '.join(r['consumers'])} read(s) it in float (ranked {i + 1} of {len(ranked)} by "
                     "logit error removed)"}
                    for i, r in enumerate(ranked[:found])]
            else:
                fallback |= {"status": "cannot pass", "message": (
                    "INT8 cannot pass the gate on the selection set even with every activation quantiser "
                    "removed: shipping the "
                    "all-INT8 model; use the fp32 target or calibrate on images closer to production "
                    "(--calibration)")}
        fallback["after"] = _short(after)
        fallback["float_layers"] = [r["name"] for r in float_layers]
    _held_out(target, fallback, judge, "OpenVINO CPU", logits(qmodel))
    xml = out_dir / "model.xml"
    ov.save_model(qmodel, str(xml), compress_to_fp16=False)
    return [xml.name, xml.with_suffix(".bin").name], {"quantizer": quantizer, "float_layers": float_layers,
                                                      "fallback": fallback}


def ov_without(qmodel: Any, names: list[str] | tuple[str, ...]) -> Any:
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


def ov_sensitivity(qmodel: Any, float_model: Any, inputs: np.ndarray, threads: int = 2,
                   ) -> tuple[float, list[dict[str, Any]]]:
    """Each activation FakeQuantize of ``qmodel`` bypassed alone: how much of the INT8 logit error it
    removes, most sensitive first (rows: ``name``, ``consumers``, ``sensitivity``, ``error_if_float``)."""
    from ..backends.openvino_ import compile_static, cpu_config

    ov = require("openvino", "openvino")
    fp32 = compile_static(ov.Core(), float_model, inputs.shape, "CPU", cpu_config(threads, "fp32"))
    ref = np.asarray(fp32(inputs)[0], np.float32)
    base = _rel_error(_ov_logits(qmodel, inputs, threads), ref)
    rows = []
    for op in qmodel.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() == "Constant":
            continue  # weights stay int8: their error is small per channel, and int8 weights are the size win
        name = op.get_friendly_name()
        consumers = sorted({t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()})
        err = _rel_error(_ov_logits(ov_without(qmodel, [name]), inputs, threads), ref)
        rows.append({"name": name, "consumers": consumers, "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows


# --------------------------------------------------------------------------------------------------
# Precision that pays


def _target_arch(target: Target) -> str | None:
    if target.backend == "tensorrt":
        return None
    if re.search(r"arm64|aarch64", target.name, re.IGNORECASE):
        return "aarch64"
    return platform.machine().lower()


def speed_check(target: Target, float_model: Path, int8_model: Path, warmup: int = 3,
                iterations: int = 20, rounds: int = 2, max_seconds: float = 2.0) -> dict[str, Any]:
    """Batch-1 latency of the float and INT8 models on the target's backend, in this process.

    Alternates the two (``rounds`` times) and keeps each one's best p50, so a noisy neighbour hurts
    both alike. Warns when INT8 is slower. TensorRT engines are built on the device: not timed here.
    """
    from ..backends import RunnerSpec, availability, open_runner
    from ..bench.latency import measure_latency

    host = platform.machine().lower()
    arch = _target_arch(target)
    if arch is None or availability(target.backend, target.device) is not None:
        return {"measured": False, "speedup": None,
                "note": f"{target.backend} on {target.device} cannot run here: bench times it on the device"}
    specs = {"float": RunnerSpec(float_model, target.backend, target.device, "fp32", target.threads, 1),
             "int8": RunnerSpec(int8_model, target.backend, target.device, "int8", target.threads, 1)}
    best: dict[str, float] = {}
    samples = 0
    runners = {k: open_runner(s) for k, s in specs.items()}
    try:
        shape = _input_shape(float_model)
        x = np.random.default_rng(0).standard_normal((1, 3, shape, shape)).astype(np.float32)
        for _ in range(rounds):
            for kind, runner in runners.items():
                lat = measure_latency(runner.run, x, warmup, iterations, max_seconds=max_seconds)
                best[kind] = min(best.get(kind, float("inf")), lat["p50"])
                samples += lat["n"]
    finally:
        for r in runners.values():
            r.close()
    speedup = best["float"] / best["int8"]
    out = {"measured": True, "backend": target.backend, "device": target.device, "host_machine": host,
           "float_p50_ms": best["float"], "int8_p50_ms": best["int8"], "speedup": speedup,
           "threads": target.threads, "timed_calls": samples, "rounds": rounds}
    if arch != host:
        out["note"] = (f"timed on this {host} host, not on the target's {arch} CPU: bench on the device "
                       "decides whether INT8 pays there")
    elif speedup < 1.0:
        out["note"] = "INT8 is slower than float on this host"
        log.warning("%s: the INT8 model is SLOWER than the float model on this host (%.2f ms vs %.2f ms at "
                    "batch 1, %.2f× float speed): ship the fp32 target here, or bench on the device",
                    target.name, best["int8"], best["float"], speedup)
    return out


def _input_shape(onnx_path: Path) -> int:
    """Spatial size of the model's input (static in our exports), from the ONNX graph."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 224
