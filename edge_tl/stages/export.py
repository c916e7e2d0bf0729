"""``edge-tl export``: torch model -> ``RUN/targets/<target>/`` (ONNX, OpenVINO IR, or a QDQ graph).

The exported model is checked against the torch model it came from on the held-out inputs
(max |Δlogit|, argmax agreement); an fp32 export that changes any answer is an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import onnx_export
from ..backends import RunnerSpec, availability, open_runner
from ..backends.base import after_export, checked_on
from ..builders import step_for
from ..checkpoint import load_model
from ..errors import ConfigError, EdgeTLError, require
from ..evalset import ensure_eval_set, load_eval_set, save_adapted_reference
from ..manifest import check_writable, staged_folder, write_manifest
from ..metrics import agreement, max_abs_diff
from ..rundir import RunDir
from ..target_manifest import check_target_manifest, read_target_manifest
from ..targets import Target, command, get_target

log = logging.getLogger("edge_tl")
FLOAT_ONNX = "float.onnx"
MAX_SCORES_KEPT = 2000


def export_onnx(model: Any, path: Path, input_size: int, opset: int) -> None:
    """Export with a dynamic batch axis (input ``input``, output ``logits``; an anomaly model adds
    ``anomaly_map``, see ``anomaly.model``) and check the graph (``onnx_export.export_onnx``)."""
    torch = require("torch", "train")
    require("onnx", "train")

    model = model.eval().cpu()
    names = list(getattr(model, "output_names", ("logits",)))
    module = model.for_export() if hasattr(model, "for_export") else model
    onnx_export.export_onnx(module, torch.zeros(1, 3, input_size, input_size), path, input_names=["input"],
                            output_names=names, dynamic_batch=True, opset=opset)


def torch_logits(model: Any, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(inputs[i:i + batch])).numpy()
                               for i in range(0, len(inputs), batch)])


def run_all(runner: Any, inputs: np.ndarray, batch: int) -> np.ndarray:
    """Logits of ``runner`` over ``inputs`` in batches of ``batch``."""
    return np.concatenate([runner.run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def export(run_dir: str | Path, target_name: str, calibration: str | None = None,
           source: str | None = None, quiet: bool = True, qat_epochs: int = 0, ood: bool = True,
           data: str | Path | None = None) -> dict[str, Any]:
    """Export the run's model for ``target_name``; returns the target manifest.

    ``data``: where the fine-tune's images are now, when they moved (calibration, selection, eval set and
    the OOD fit read them there; checked against split.json's sha256, ``RunDir.split``).

    A classifier's graph gets a second output, ``ood_score`` (``edge_tl/ood.py``, fitted by
    ``stages/ood_fit.py``), unless ``ood`` is False.

    ``qat_epochs`` > 0 (INT8 targets): quantisation-aware training for that many epochs instead of
    post-training quantisation (``stages/qat.py``)."""
    target: Target = get_target(target_name)
    run = RunDir(Path(run_dir), data=Path(data) if data is not None else None)
    check_writable(run.target(target.name), run.root)  # eval.npz goes to the run; fail before any work
    src = run.source(source)
    model, src_manifest = load_model(src)
    crop = src_manifest["preprocessing"]["crop"]
    if target.input_size is not None and target.input_size != crop:
        raise ConfigError(f"target {target.name} wants input_size {target.input_size}, the model was "
                          f"trained at {crop}; change the profile or fine-tune at that size")
    own = step_for(src_manifest.get("task"), "export")
    if own is not None and qat_epochs:
        raise ConfigError(f"--qat trains a classifier; a {src_manifest.get('task')} run's INT8 is post-training "
                          "only (export it without --qat)")
    if own is not None:
        # A detector: no eval set of logits, no OOD head, boxes judged after NMS (``detect.ship``).
        return own(run, target, src, model, src_manifest, quiet, calibration=calibration)
    if calibration is not None and not target.quantized:
        log.warning("--calibration is ignored: %s is not an INT8 target", target.name)
    if qat_epochs < 0:
        raise ConfigError(f"--qat takes a number of epochs ≥ 0, got {qat_epochs}")
    if qat_epochs and src_manifest.get("task") == "anomaly":
        raise ConfigError("--qat trains a classifier; an anomaly model has nothing to train (export it without --qat)")
    if qat_epochs and not target.quantized:
        log.warning("--qat is ignored: %s is not an INT8 target", target.name)
    evalset = load_eval_set(ensure_eval_set(run, quiet))
    # The export is judged against the torch model it came from (pruned or not); the bench later
    # judges it against the full model.
    src_logits = evalset.logits if src == run.finetune else torch_logits(model, evalset.inputs)
    started = time.perf_counter()
    graph_model: Any = model
    extra: dict[str, Any] = {}
    if src_manifest.get("task") != "anomaly" and ood:
        from ..models import get_arch
        from ..ood import with_ood
        from .ood_fit import fit_for_export

        stats, threshold, record = fit_for_export(run, src, src_manifest, model, evalset.inputs, quiet=quiet)
        graph_model = with_ood(model, get_arch(src_manifest["arch"]).head, stats, threshold)
        extra["ood"] = record
    with staged_folder(run.target(target.name)) as tmp:
        export_onnx(graph_model, tmp / FLOAT_ONNX, crop, target.opset)
        if target.quantized:
            from .quantize import quantize_for_target

            # The INT8 fallback chooses its float layers on training images (never validation) and needs
            # this torch model's answers on them.
            files, quantized = quantize_for_target(target, run, src, tmp / FLOAT_ONNX, tmp, calibration,
                                               evalset, src_logits, quiet,
                                               model_logits=lambda inputs: torch_logits(model, inputs),
                                               qat_epochs=qat_epochs, model=model)
            extra |= quantized
        else:
            from .convert import convert_float

            files = convert_float(target, tmp / FLOAT_ONNX, tmp)
        extra |= after_export(target.backend, target, tmp)
        # An adapted model's in-distribution is the new line, not the validation split: its limit stays the
        # one calibrated on the new line's held-out images (stages/ood_fit.py).
        ood_fpr = extra["ood"]["false_alarm_target"] if "ood" in extra and src.name != "adapt" else None
        validation = validate(target, tmp, evalset.inputs, src_logits, ood_fpr)
        if "ood" in extra:
            extra["ood"] |= _ood_limit(validation)
        if target.precision == "fp32" and validation and validation["agreement"] < 1.0:
            raise EdgeTLError(
                f"fp32 export for {target.name} changed {validation['disagreements']} of "
                f"{len(src_logits)} answers (max |Δlogit| {validation['max_abs_logit_diff']:.3g}); "
                "nothing was written")
        kept = [FLOAT_ONNX] if (tmp / FLOAT_ONNX).exists() else []
        if src.name == "adapt":  # bench and bundle judge this target against the adapted model
            kept.append(save_adapted_reference(tmp, evalset, src_logits))
        all_files = sorted({*files, *kept, *extra.pop("files", [])})
        manifest = write_manifest(
            tmp, "export", parent=src / "model.pt", files=all_files,
            target=target.model_dump(), model_file=target.model_file, source_stage=src.name,
            arch=src_manifest["arch"], classes=src_manifest["classes"],
            preprocessing=src_manifest["preprocessing"], structure=src_manifest.get("structure"),
            validation=validation, seconds=time.perf_counter() - started, **extra)
        # Inside the staged folder: a manifest that does not fit its model never replaces a good export.
        check_target_manifest(manifest)
    if validation is None:
        log.warning("%s cannot run on this host (%s): the export is not validated here",
                    target.name, availability(target.backend, target.device))
    return manifest


def _ood_limit(validation: dict[str, Any] | None) -> dict[str, Any]:
    """The target's own ood limit (see ``validate``), or the float model's threshold when it cannot run here."""
    if validation is None or "ood_limit" not in validation:
        return {"limit": 1.0, "limit_source": "the float model's threshold (not recalibrated on this target's "
                                              "own scores)"}
    n, scores = validation["n"], validation.pop("ood_scores")
    return {"limit": validation.pop("ood_limit"),
            "limit_source": f"this target's ood_score at the same quantile of the {n} validation images",
            # For the bench report's distribution of in-distribution scores (a device has no eval run).
            "validation_scores": [round(float(v), 4) for v in scores[:MAX_SCORES_KEPT]]}


def validate(target: Target, folder: Path, inputs: np.ndarray, reference: np.ndarray,
             ood_fpr: float | None = None) -> dict[str, Any] | None:
    """Run the exported model where this host can; None when it cannot (e.g. TensorRT on a CPU box).

    ``ood_fpr``: the graph has an ood_score output; ``ood_limit`` is then the score this target gives at
    the ``1 - ood_fpr`` quantile of ``inputs`` (an INT8 backbone moves the scores of the float model, so
    each target is calibrated on its own answers)."""
    # Without the backend here (TensorRT on a CPU box), its stand-in checks the same shipped graph.
    where = checked_on(target.backend, target.device)
    if where is None:
        return None
    backend, device = where
    runner = open_runner(RunnerSpec(folder / target.model_file, backend, device, target.precision,
                                    target.threads, target.batch_size))
    ood: dict[str, Any] = {}
    try:
        logits = run_all(runner, inputs, target.batch_size)
        if ood_fpr is not None:
            from ..ood import threshold_for

            scores = np.concatenate([runner.run_outputs(inputs[i:i + target.batch_size])[1]
                                     for i in range(0, len(inputs), target.batch_size)])
            ood = {"ood_limit": threshold_for(scores, ood_fpr), "ood_scores": scores}
    finally:
        runner.close()
    agree = agreement(logits, reference)
    return {"backend": backend, "device": device, "n": len(reference), "agreement": agree,
            "disagreements": round((1 - agree) * len(reference)),
            "max_abs_logit_diff": max_abs_diff(logits, reference), **ood}


def describe(manifest: dict[str, Any], folder: Path) -> list[str]:
    """The lines the CLI and ``edge-tl run`` print after an export: the check against torch (agreement,
    max |Δlogit|, images) and, with an OOD score, what it was fitted on and its limit."""
    own = step_for(manifest.get("task"), "describe_export")
    if own is not None:
        return own(manifest, folder)
    v = manifest.get("validation")
    check = (f"agreement {v['agreement']:.4f}, max |Δlogit| {v['max_abs_logit_diff']:.2e} on {v['n']} images"
             if v else "not validated on this host")
    lines = [f"exported {manifest['target']['name']} from {manifest['source_stage']}: {check} -> {folder}"]
    ood = manifest.get("ood")
    if ood:
        lines.append(f"ood_score: fitted on {ood['fitted_on']['n']} images ({ood['fitted_on']['what']}); "
                     f"limit {ood['limit']:.3g} ({ood['limit_source']})")
    return lines


def read_target(run: RunDir, target: Target) -> dict[str, Any]:
    """The verified manifest of an exported target, or a clear error if it was not exported."""
    folder = run.target(target.name)
    if not (folder / "manifest.json").is_file():
        raise EdgeTLError(f"{target.name} is not exported in {run.root}; run "
                          f"`{command('export', run.root, target)}` first")
    return read_target_manifest(folder)
