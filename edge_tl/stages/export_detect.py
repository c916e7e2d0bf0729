"""``edge-tl export`` of a detection run (``finetune --task detect``): the detector -> ``RUN/targets/<target>/``.

Float targets whose backend converts an ONNX graph as it is (ONNX Runtime, OpenVINO) only: INT8 needs a
calibration and accuracy fallback judged on boxes, and TensorRT a device check of the box graph, neither
built yet (:func:`check_detect_target` says so in one line, before any work).

The graph is the one :func:`edge_tl.detect.export.export_detector` writes (``boxes`` (B, K, 4) in input
pixels, ``scores`` (B, K, C); NMS outside the graph), converted by the backend's own float converter
(``stages.convert.convert_float``), then run on this host on the run's held-out validation images and
compared with the torch model after NMS (:func:`edge_tl.detect.export.compare_outputs`): an fp32 export
whose boxes or mAP move is an error and nothing is written. The target manifest records ``task: detect``,
the outputs and the NMS parameters the runtime needs, and the check (``validation``, ``target_manifest.
DetectValidation``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import RunnerSpec, availability, open_runner
from ..backends.base import after_export
from ..errors import ConfigError, EdgeTLError
from ..manifest import staged_folder, write_manifest
from ..rundir import RunDir
from ..target_manifest import check_target_manifest
from ..targets import Target

log = logging.getLogger("edge_tl")
FLOAT_ONNX = "float.onnx"
DETECT_BACKENDS = ("onnxruntime", "openvino")  # backends a detection graph is exported and checked for today
NMS_KEYS = ("score_threshold", "iou_threshold", "max_detections")


def check_detect_target(target: Target) -> None:
    """ConfigError (one line) when ``target`` is one a detection run cannot be exported for yet."""
    if target.quantized or target.precision == "int8":
        raise ConfigError(f"{target.name}: INT8 export of a detection run is not built yet (no box-aware "
                          "calibration or accuracy check); export a float target (cpu-onnxruntime-fp32, "
                          "cpu-openvino-fp32)")
    if target.backend not in DETECT_BACKENDS:
        raise ConfigError(f"{target.name}: {target.backend} export of a detection run is not built yet; "
                          "export cpu-onnxruntime-fp32 or cpu-openvino-fp32")
    if target.precision != "fp32":
        raise ConfigError(f"{target.name}: {target.precision} export of a detection run is not built yet; "
                          "export an fp32 target (cpu-onnxruntime-fp32, cpu-openvino-fp32)")


def nms_args(manifest: dict[str, Any]) -> dict[str, Any]:
    """The NMS parameters a detection run was evaluated with (its manifest's ``postprocess``), as the
    keyword arguments of :func:`edge_tl.detect.nms.nms`."""
    post = manifest.get("postprocess") or {}
    return {k: post[k] for k in NMS_KEYS if k in post}


def target_outputs(folder: Path, model_file: str, backend: str, device: str, threads: int, batch: int,
                   inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An exported detection graph on ``backend`` over ``inputs`` (N, 3, S, S) float32, in batches of
    ``batch``: (boxes (N, K, 4) input pixels, scores (N, K, C)). The backend must run on this host."""
    runner: Any = open_runner(RunnerSpec(folder / model_file, backend, device, "fp32", threads, batch))
    try:
        outs = [runner.run_outputs(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    finally:
        runner.close()
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def torch_outputs(det: Any, inputs: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The torch detector (CPU, eval) over ``inputs`` (N, 3, S, S) float32: (boxes (N, K, 4), scores (N, K, C))."""
    import torch

    det = det.to("cpu").eval()
    bs, ss = [], []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            b, s = det(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch], np.float32)))
            bs.append(b.numpy())
            ss.append(s.numpy())
    return np.concatenate(bs), np.concatenate(ss)


def validate_detect(target: Target, folder: Path, reference: tuple[np.ndarray, np.ndarray], held: Any,
                    classes: list[str], nms: dict[str, Any]) -> dict[str, Any] | None:
    """The exported graph in ``folder`` run here against the torch outputs ``reference`` on the held-out
    images ``held`` (``detect.export.HeldOut``); None when this host cannot run the backend. The fields of
    ``target_manifest.DetectValidation``."""
    from ..detect.export import BOX_IOU_FLOOR, compare_outputs

    if availability(target.backend, target.device) is not None:
        return None
    cand = target_outputs(folder, target.model_file, target.backend, target.device, target.threads,
                          target.batch_size, held.inputs)
    c = compare_outputs(reference, cand, held.truths(), classes, **nms)
    a = c["agreement"]
    return {"task": "detect", "backend": target.backend, "device": target.device, "n": c["images"],
            "agreement": a["matched_share"],
            "disagreements": max(a["reference_boxes"], a["candidate_boxes"]) - a["matched"],
            "boxes": a, "match_iou": BOX_IOU_FLOOR, "max_abs_box_diff": c["max_abs_box_diff"],
            "max_abs_score_diff": c["max_abs_score_diff"], "map50_torch": c["map50_torch"],
            "map50_target": c["map50_candidate"], "map50_95_torch": c["map50_95_torch"],
            "map50_95_target": c["map50_95_candidate"], "passed": c["passed"], "pixels": "input"}


def export_detect(run: RunDir, target: Target, src: Path, det: Any, src_manifest: dict[str, Any],
                  quiet: bool = True) -> dict[str, Any]:
    """Export the detector ``det`` of ``src`` (``RUN/finetune``) for ``target``; returns the target manifest.

    ConfigError for a target not built for detection yet (:func:`check_detect_target`); EdgeTLError when the
    fp32 graph's detections on this host differ from torch's (nothing is written); ArtifactError / DataError
    when the run's validation images are gone."""
    from ..detect.export import export_detector, held_out
    from .convert import convert_float

    check_detect_target(target)
    started = time.perf_counter()
    classes = list(src_manifest["classes"])
    nms = nms_args(src_manifest)
    held = held_out(src, src_manifest, quiet=quiet)
    reference = torch_outputs(det, held.inputs)
    with staged_folder(run.target(target.name)) as tmp:
        export_detector(det, tmp / FLOAT_ONNX, opset=target.opset)
        files = convert_float(target, tmp / FLOAT_ONNX, tmp)
        extra = after_export(target.backend, target, tmp)
        validation = validate_detect(target, tmp, reference, held, classes, nms)
        if validation is not None and not validation["passed"]:
            raise EdgeTLError(
                f"fp32 export for {target.name} moved {validation['disagreements']} of "
                f"{validation['boxes']['reference_boxes']} boxes or the mAP (torch mAP@0.5 "
                f"{validation['map50_torch']}, target {validation['map50_target']}) on {validation['n']} "
                "validation images; nothing was written")
        kept = [FLOAT_ONNX] if (tmp / FLOAT_ONNX).exists() else []
        all_files = sorted({*files, *kept, *extra.pop("files", [])})
        spec = src_manifest.get("detect") or {}
        manifest = write_manifest(
            tmp, "export", parent=src / "model.pt", files=all_files, task="detect",
            target=target.model_dump(), model_file=target.model_file, source_stage=src.name,
            arch=src_manifest["arch"], classes=classes, preprocessing=src_manifest["preprocessing"],
            structure=None, validation=validation, seconds=time.perf_counter() - started,
            detect=spec, input_name="input",
            outputs={"names": ["boxes", "scores"],
                     "boxes": "(B, K, 4) x1 y1 x2 y2 in input pixels, clipped to the input",
                     "scores": "(B, K, C) per-class scores in [0, 1]",
                     "locations": spec.get("locations"),
                     "nms": "outside the graph: edge_tl.detect.nms.nms (numpy) with `postprocess`, then "
                            "edge_tl.detect.nms.to_image_pixels with the preprocessing's resize_mode"},
            postprocess={**(src_manifest.get("postprocess") or {}), **nms}, **extra)
        # Inside the staged folder: a manifest that does not fit its model never replaces a good export.
        check_target_manifest(manifest)
    if validation is None:
        log.warning("%s cannot run on this host (%s): the export is not validated here",
                    target.name, availability(target.backend, target.device))
    return manifest


def describe_detect(manifest: dict[str, Any], folder: Path) -> list[str]:
    """The line the CLI prints after a detection export: the check against torch, or that there was none."""
    v = manifest.get("validation")
    check = (f"box agreement {v['agreement']:.4f} ({v['boxes']['matched']} of {v['boxes']['reference_boxes']} boxes "
             f"at IoU >= {v['match_iou']}), mAP@0.5 {_f(v['map50_target'])} vs torch {_f(v['map50_torch'])} "
             f"on {v['n']} validation images" if v else "not validated on this host")
    return [f"exported {manifest['target']['name']} (detection) from {manifest['source_stage']}: {check} -> {folder}"]


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
