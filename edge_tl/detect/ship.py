"""``edge-tl export`` and ``bench`` of a detection run (``finetune --task detect``): detector -> ``RUN/targets/<T>/``.

Targets whose backend's descriptor takes a detection export (``BackendFacts.detect_export``): ONNX Runtime
and OpenVINO fp32 or INT8, TensorRT fp16 (its INT8 is refused in one line, :func:`check_detect_target`, before
any work).

The graph is the one :func:`edge_tl.detect.export.export_detector` writes (``boxes`` (B, K, 4) in input
pixels, ``scores`` (B, K, C)). NMS is chosen per backend (``BackendFacts.nms_in_graph``) and stated in the
manifest's ``outputs.nms``: outside the graph (ONNX Runtime, OpenVINO: the runtime's numpy NMS on the same
CPU) or inside it (TensorRT: ``detect.nms_graph.append_nms``, so the device hands back at most
``max_detections`` boxes per image instead of copying every candidate to the host for NMS in Python on a
Jetson's CPU). fp32 / fp16: converted by the backend's own float converter
(``stages.convert.convert_float``), then run on this host (or the backend's stand-in: TensorRT's is ONNX
Runtime on the CPU, on the same graph) on the run's held-out validation images and compared with the torch
model after NMS (:func:`edge_tl.detect.export.compare_outputs`); an NMS-inside graph's detections are also
compared with the numpy NMS of its own boxes and scores (:func:`nms_check`). An fp32 / fp16 export whose
boxes or mAP move is an error and nothing is written. INT8: quantised by the backend's quantiser with
the accuracy fallback judged by mAP@0.5 (:mod:`edge_tl.detect.quantize`), then its verdict on the
validation images the fallback did not choose on (:func:`validate_int8`). The target manifest records
``task: detect``, the outputs and the NMS parameters the runtime needs, and the check (``validation``,
``target_manifest.DetectValidation``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import RunnerSpec, availability, open_runner
from ..backends.base import after_export, checked_on
from ..backends.table import BACKENDS, facts
from ..errors import ConfigError, EdgeTLError
from ..manifest import staged_folder, write_manifest
from ..rundir import RunDir
from ..runtime.nms import graph_detections
from ..target_manifest import check_target_manifest
from ..targets import Target
from .export import BOX_IOU_FLOOR, MAX_UNMATCHED_SHARE, compare_outputs, export_detector, held_out
from .nms_graph import append_nms, topk_limit_warning

log = logging.getLogger("edge_tl")
FLOAT_ONNX = "float.onnx"
NMS_ONNX = "nms.onnx"  # the graph with NMS appended, before the backend's converter makes the model file of it
NMS_KEYS = ("score_threshold", "iou_threshold", "max_detections")


def check_detect_target(target: Target) -> None:
    """ConfigError (one line) when ``target`` is one a detection run cannot be exported for yet: a backend
    whose descriptor has no ``detect_export``; fp16 where the device does not build the engine from the float
    graph (``engine_on_device``); INT8 of an NMS-inside backend (TensorRT: the mAP-judged INT8 fallback,
    ``detect.quantize``, and its held-out verdict run the target's own runner, which a host without TensorRT
    lacks, and its stand-in's QDQ kernels are not TensorRT's)."""
    known = facts(target.backend)
    if not known.detect_export:
        able = " or ".join(b.name for b in BACKENDS.values() if b.detect_export)
        raise ConfigError(f"{target.name}: {target.backend} export of a detection run is not built yet; "
                          f"export a {able} target (cpu-onnxruntime-fp32, gpu-tensorrt-fp16, ...)")
    if target.precision not in ("fp32", "int8") and not (target.precision == "fp16" and known.engine_on_device):
        raise ConfigError(f"{target.name}: {target.precision} export of a detection run is not built yet; "
                          "export an fp32 or int8 target (cpu-onnxruntime-int8, cpu-openvino-int8)")
    if target.quantized and known.nms_in_graph:
        raise ConfigError(f"{target.name}: INT8 export of a detection run for {target.backend} is not built yet: "
                          "the mAP-judged INT8 fallback runs the target's own runner (not its stand-in) and does "
                          "not append NMS to the QDQ graph; export the fp16 target (gpu-tensorrt-fp16, "
                          "jetson-*-fp16)")


def nms_args(manifest: dict[str, Any]) -> dict[str, Any]:
    """The NMS parameters a detection run was evaluated with (its manifest's ``postprocess``), as the
    keyword arguments of :func:`edge_tl.runtime.nms.nms`."""
    post = manifest.get("postprocess") or {}
    return {k: post[k] for k in NMS_KEYS if k in post}


def nms_inside(manifest: dict[str, Any]) -> bool:
    """True when a target manifest's graph ends with NMS (``outputs.nms_inside``; older manifests: False)."""
    return bool((manifest.get("outputs") or {}).get("nms_inside"))


def target_outputs(folder: Path, model_file: str, backend: str, device: str, threads: int, batch: int,
                   inputs: np.ndarray, precision: str = "fp32") -> list[np.ndarray]:
    """An exported detection graph on ``backend`` over ``inputs`` (N, 3, S, S) float32, in batches of
    ``batch``: every output in the graph's order, concatenated over the batches (a box graph: boxes (N, K, 4)
    input pixels, scores (N, K, C); an NMS-inside graph: ``runtime.nms.NMS_OUTPUTS``; turn either into
    detections with ``runtime.nms.graph_detections``). The backend must run on this host."""
    runner: Any = open_runner(RunnerSpec(folder / model_file, backend, device, precision, threads, batch))
    try:
        outs = [runner.run_outputs(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    finally:
        runner.close()
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))] if outs else []


def nms_check(inside: list[Any], raw: tuple[np.ndarray, np.ndarray], nms: dict[str, Any]) -> dict[str, Any]:
    """An NMS-inside graph's detections (``inside``: ``runtime.nms.Detections`` per image) against the numpy
    NMS (``runtime.nms.nms``, ``nms``) of the same graph's boxes and scores ``raw``: equal boxes, scores and
    classes, up to the order of equal scores. ``passed`` allows float rounding to move at most
    ``MAX_UNMATCHED_SHARE`` of the detections across a cut-off (IoU computed in float32 in the graph, float64
    in numpy), the allowance the export's check against torch has."""
    numpy_dets = graph_detections(list(raw), False, **nms)
    differ, images, total = 0, 0, 0
    for a, b in zip(inside, numpy_dets, strict=True):
        ka, kb = (sorted(zip(d.labels.tolist(), d.scores.tolist(), map(tuple, d.boxes.tolist()), strict=True))
                  for d in (a, b))
        n = max(len(ka), len(kb))
        total += n
        miss = n - sum((_multiset(ka) & _multiset(kb)).values())
        differ += miss
        images += bool(miss)
    return {"images": len(numpy_dets), "detections": total, "differing_detections": differ,
            "differing_images": images, "compared_with": "edge_tl.runtime.nms.nms of the graph's own boxes and "
                                                          "scores (the graph without NMS, float.onnx)",
            "passed": differ <= MAX_UNMATCHED_SHARE * total}


def _multiset(rows: list[Any]) -> Any:
    from collections import Counter

    return Counter(rows)


def validate_detect(target: Target, folder: Path, reference: tuple[np.ndarray, np.ndarray], held: Any,
                    classes: list[str], nms: dict[str, Any]) -> dict[str, Any] | None:
    """The exported graph in ``folder`` run here (or on the backend's stand-in) against the torch outputs
    ``reference`` on the held-out images ``held`` (``detect.export.HeldOut``); None when this host can run
    neither. An NMS-inside graph: ``float.onnx`` (the graph before NMS) is compared with torch, and the
    model file's detections with the numpy NMS of its boxes and scores (``nms_check``). The fields of
    ``target_manifest.DetectValidation``."""
    known = facts(target.backend)
    inside = known.nms_in_graph
    where = checked_on(target.backend, target.device)
    if inside and known.stand_in is not None and availability(*known.stand_in) is None:
        # The NMS check is exact, so it runs the float32 graph: on the stand-in even on a device with the
        # backend (its fp16 engine's boxes are bench's to judge), and no engine is built for float.onnx.
        where = known.stand_in
    if where is None:
        return None
    backend, device = where
    # The graph before NMS (float.onnx beside an NMS-inside model file) is what compares with torch's raw outputs.
    raw = target_outputs(folder, FLOAT_ONNX if inside else target.model_file, backend, device, target.threads,
                         target.batch_size, held.inputs)
    cand = (raw[0], raw[1])
    c = compare_outputs(reference, cand, held.truths(), classes, **nms)
    a = c["agreement"]
    extra: dict[str, Any] = {}
    if inside:
        dets = graph_detections(target_outputs(folder, target.model_file, backend, device, target.threads,
                                               target.batch_size, held.inputs), True)
        extra["nms_check"] = nms_check(dets, cand, nms)
        c["passed"] = c["passed"] and extra["nms_check"]["passed"]
    return {**extra, "task": "detect", "backend": backend, "device": device, "n": c["images"],
            "agreement": a["matched_share"],
            "disagreements": max(a["reference_boxes"], a["candidate_boxes"]) - a["matched"],
            "boxes": a, "match_iou": BOX_IOU_FLOOR, "max_abs_box_diff": c["max_abs_box_diff"],
            "max_abs_score_diff": c["max_abs_score_diff"], "max_abs_logit_diff": c["max_abs_score_diff"],
            "map50_torch": c["map50_torch"],
            "map50_target": c["map50_candidate"], "map50_95_torch": c["map50_95_torch"],
            "map50_95_target": c["map50_95_candidate"], "passed": c["passed"], "pixels": "input"}


def validate_int8(target: Target, folder: Path, judge: Any, reference: tuple[np.ndarray, np.ndarray],
                  ) -> dict[str, Any] | None:
    """The shipped INT8 graph in ``folder`` run here (its runner, as bench runs it) on the verdict images of
    ``judge`` (``detect.quantize.DetectJudge``: the validation images no float layer was chosen on), against
    the torch outputs ``reference`` on every validation image; None when this host cannot run the backend.
    The fields of ``target_manifest.DetectValidation``, boxes matched at IoU 0.5 (bench's match), ``passed``
    the ``max_map_drop`` gate, with ``map50_drop`` (points) and ``gates``."""
    if availability(target.backend, target.device) is not None:
        return None
    from .evaluate import detection_metrics
    from .nms import batched_nms

    ver = judge.verdict
    boxes, scores = target_outputs(folder, target.model_file, target.backend, target.device, target.threads,
                                   target.batch_size, ver.inputs, target.precision)[:2]
    v = judge.values(ver, batched_nms(boxes, scores, **judge.nms))
    a = v["box_match"]
    rb, rs = reference[0][ver.index], reference[1][ver.index]
    return {"task": "detect", "backend": target.backend, "device": target.device, "n": len(ver),
            "agreement": a["matched_share"],
            "disagreements": max(a["reference_boxes"], a["candidate_boxes"]) - a["matched"],
            "boxes": a, "match_iou": a["match_iou"],
            "max_abs_box_diff": float(np.abs(rb - boxes).max()) if len(ver) else 0.0,
            "max_abs_score_diff": float(np.abs(rs - scores).max()) if len(ver) else 0.0,
            "max_abs_logit_diff": float(np.abs(rs - scores).max()) if len(ver) else 0.0,
            "map50_torch": v["reference_map50"], "map50_target": v["map50"],
            "map50_95_torch": detection_metrics(ver.reference, ver.truths, judge.classes)["map50_95"],
            "map50_95_target": v["map50_95"], "map50_drop": v["map50_drop"], "gates": v["gates"],
            "passed": v["passed"], "pixels": "input",
            "images": judge.held_out_text(f"{target.backend} runner"), "selection_n": judge.selection_n}


def export_detect(run: RunDir, target: Target, src: Path, det: Any, src_manifest: dict[str, Any],
                  quiet: bool = True, calibration: str | None = None) -> dict[str, Any]:
    """Export the detector ``det`` of ``src`` (``RUN/finetune``) for ``target``; returns the target manifest.

    fp32: the graph is checked against torch on every validation image (:func:`validate_detect`). INT8
    (``detect.quantize.quantize_detect``: calibration on the training images, or ``calibration``, a folder or
    list file; float layers chosen on a part of the validation images by mAP@0.5): the shipped graph's
    verdict on the other part (:func:`validate_int8`); a graph that misses ``max_map_drop`` there ships
    (the best measured) with a warning, as a classifier's INT8 export does, and bench fails it.

    ConfigError for a target not built for detection yet (:func:`check_detect_target`); EdgeTLError when the
    fp32 graph's detections on this host differ from torch's (nothing is written); ArtifactError / DataError
    when the run's validation images are gone."""
    from ..stages.convert import convert_float

    check_detect_target(target)
    inside = facts(target.backend).nms_in_graph
    if inside and (src_manifest.get("postprocess") or {}).get("per_class") is False:
        raise ConfigError(f"{target.name}: the run's NMS is class-agnostic (postprocess.per_class false); the NMS "
                          "inside the graph is per class only")
    if calibration is not None and not target.quantized:
        log.warning("--calibration is ignored: %s is not an INT8 target", target.name)
    started = time.perf_counter()
    classes = list(src_manifest["classes"])
    nms = nms_args(src_manifest)
    held = held_out(src, src_manifest, quiet=quiet, root=run.data)  # --data: where the images are now
    from .train import predict_frames

    reference = predict_frames(det.to("cpu"), held.frames, held.preprocess)
    with staged_folder(run.target(target.name)) as tmp:
        export_detector(det, tmp / FLOAT_ONNX, opset=target.opset)
        quantized: dict[str, Any] = {}
        if target.quantized:
            from .quantize import quantize_detect

            files, quantized, judge = quantize_detect(run, target, src, tmp / FLOAT_ONNX, tmp, held, reference,
                                                      classes, nms, calibration, quiet)
        elif inside:
            # float.onnx stays: the check compares it with torch and its numpy NMS with the graph's own.
            nms_graph = append_nms(tmp / FLOAT_ONNX, tmp / NMS_ONNX, det.spec.locations, det.spec.num_classes, **nms)
            files = convert_float(target, tmp / NMS_ONNX, tmp)
        else:
            files = convert_float(target, tmp / FLOAT_ONNX, tmp)
        extra = after_export(target.backend, target, tmp)
        if target.quantized:
            validation = validate_int8(target, tmp, judge, reference)
        else:
            validation = validate_detect(target, tmp, reference, held, classes, nms)
        if validation is not None and not validation["passed"] and not target.quantized:
            if (validation.get("nms_check") or {}).get("passed") is False:
                v = validation["nms_check"]
                raise EdgeTLError(
                    f"the NMS inside {target.name}'s graph differs from the runtime's NMS on {v['differing_images']} "
                    f"of {v['images']} validation images ({v['differing_detections']} of {v['detections']} "
                    "detections); nothing was written")
            raise EdgeTLError(
                f"{target.precision} export for {target.name} moved {validation['disagreements']} of "
                f"{validation['boxes']['reference_boxes']} boxes or the mAP (torch mAP@0.5 "
                f"{validation['map50_torch']}, target {validation['map50_target']}) on {validation['n']} "
                "validation images; nothing was written")
        kept = [FLOAT_ONNX] if (tmp / FLOAT_ONNX).exists() else []
        all_files = sorted({*files, *kept, *extra.pop("files", [])})
        spec = src_manifest.get("detect") or {}
        outputs = (_inside_outputs(nms_graph, spec) if inside else
                   {"names": ["boxes", "scores"], "nms_inside": False,
                    "boxes": "(B, K, 4) x1 y1 x2 y2 in input pixels, clipped to the input",
                    "scores": "(B, K, C) per-class scores in [0, 1]",
                    "locations": spec.get("locations"),
                    "nms": "outside the graph: edge_tl.runtime.nms.nms (numpy) with `postprocess`, then "
                           "edge_tl.runtime.nms.to_image_pixels with the preprocessing's resize_mode (this "
                           "backend runs on the CPU that runs the numpy NMS: the graph hands over its raw "
                           "boxes and scores, which the INT8 fallback and bench compare)"})
        manifest = write_manifest(
            tmp, "export", parent=src / "model.pt", files=all_files, task="detect",
            target=target.model_dump(), model_file=target.model_file, source_stage=src.name,
            arch=src_manifest["arch"], classes=classes, preprocessing=src_manifest["preprocessing"],
            structure=None, validation=validation, seconds=time.perf_counter() - started,
            detect=spec, input_name="input",
            outputs=outputs,
            postprocess={**(src_manifest.get("postprocess") or {}), **nms}, **quantized, **extra)
        # Inside the staged folder: a manifest that does not fit its model never replaces a good export.
        check_target_manifest(manifest)
    if validation is None:
        log.warning("%s cannot run on this host (%s): the export is not validated here",
                    target.name, availability(target.backend, target.device))
    if inside and (why := topk_limit_warning(nms_graph["nms_candidates"])) is not None:
        log.warning("%s: %s", target.name, why)
    return manifest


def _inside_outputs(nms_graph: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The target manifest's ``outputs`` of an NMS-inside graph (``detect.nms_graph.append_nms``'s record)."""
    m = nms_graph["max_detections"]
    return {"names": nms_graph["names"], "nms_inside": True,
            "num_detections": "(B,) int32: detections per image, at most max_detections",
            "det_boxes": f"(B, {m}, 4) x1 y1 x2 y2 in input pixels, highest score first; rows past "
                         "num_detections are 0",
            "det_scores": f"(B, {m}) scores in [0, 1]; padding 0",
            "det_classes": f"(B, {m}) int32 class indices; padding -1",
            "locations": spec.get("locations"), "max_detections": m,
            "score_threshold": nms_graph["score_threshold"],
            "graph_score_threshold": nms_graph["graph_score_threshold"],
            "iou_threshold": nms_graph["iou_threshold"], "nms_candidates": nms_graph["nms_candidates"],
            "nms": "inside the graph: ONNX NonMaxSuppression per class with `postprocess` (TensorRT's parser "
                   "builds an INMSLayer from it, 8.5 and newer), then TopK over the kept scores into padded "
                   "outputs (edge_tl.detect.nms_graph); the runtime reads them (edge_tl.runtime.nms."
                   "graph_detections) and maps them with edge_tl.runtime.nms.to_image_pixels. Inside because "
                   "the engine runs on a GPU: the device copies at most max_detections boxes per image to the "
                   "host instead of every candidate, and no NMS runs in Python on the device's CPU. Checked "
                   "here on ONNX Runtime (the stand-in) against edge_tl.runtime.nms.nms (validation.nms_check)"}


def describe_detect(manifest: dict[str, Any], folder: Path) -> list[str]:
    """The lines the CLI prints after a detection export: the check against torch, or that there was none; an
    INT8 export adds its layers kept float and, when it misses its gate, says so."""
    v = manifest.get("validation")
    check = (f"box agreement {v['agreement']:.4f} ({v['boxes']['matched']} of {v['boxes']['reference_boxes']} boxes "
             f"at IoU >= {v['match_iou']}), mAP@0.5 {_f(v['map50_target'])} vs torch {_f(v['map50_torch'])} "
             f"on {v['n']} validation images" if v else "not validated on this host")
    backend = manifest["target"].get("backend")
    if v and v.get("backend") and v["backend"] != backend:
        check += (f" (run on {v['backend']}, standing in for {backend}, which this host cannot run: the "
                  "device builds and runs the real one)")
    if v and v.get("nms_check"):
        nc = v["nms_check"]
        check += (f"; the NMS inside the graph equals the runtime's on {nc['detections'] - nc['differing_detections']} "
                  f"of {nc['detections']} detections")
    fb = manifest.get("fallback")
    if fb is None:
        return [f"exported {manifest['target']['name']} (detection) from {manifest['source_stage']}: {check} -> "
                f"{folder}"]
    kept = len(manifest.get("float_layers") or [])
    if v:
        check += (f" held out (mAP@0.5 drop {_f(v.get('map50_drop'), 2)} points; float layers chosen on "
                  f"{v.get('selection_n')} others)")
    lines = [f"exported {manifest['target']['name']} (detection, INT8, {kept} layer(s) kept float by the fallback) "
             f"from {manifest['source_stage']}: {check} -> {folder}"]
    if v and not v["passed"]:
        lines.append(f"FAILS its gate: {fb.get('message') or '; '.join((fb.get('held_out') or {}).get('failed', []))}")
    return lines


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# bench


def _torch_fn(det: Any) -> Any:
    """``x`` (N, 3, S, S) float32 -> the torch detector's (boxes, scores) as numpy (the reference's timed call)."""
    import torch

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            boxes, scores = det(torch.from_numpy(x))
        return boxes.numpy(), scores.numpy()

    return run


def _with_nms(outputs: Any, nms: dict[str, Any], inside: bool = False) -> Any:
    """A timed call that ends where the line's answer does: graph outputs, then detections the way the runtime
    gets them (``runtime.nms.graph_detections``: the run's numpy NMS, or the graph's own when ``inside``); the
    latency a user sees is the pair, not the graph alone."""

    def run(x: np.ndarray) -> Any:
        return graph_detections(list(outputs(x)), inside, **nms)

    return run


def bench_detect(run: RunDir, chosen: list[Target], *, json_path: str | None = None, quiet: bool = True,
                 wait_quiet: float = 0.0, prepare: Any = None, progress: bool | None = None, latency: bool = True,
                 several: bool = False, data: str | None = None) -> list[dict[str, Any]]:
    """``edge-tl bench`` of a detection run's exported targets on its held-out validation images (or, with
    ``data``, on that labelled box folder: ``detect.evalset.folder_set``; reports in
    ``RUN/reports/data-<name>-<sha8>/``, the run index rebuilt with them).

    Each report has the torch reference's and the target's mAP@0.5, mAP@0.5:0.95 and per-class AP@0.5
    (fractions; detections after the run's NMS, in original image pixels, as the fine-tune measured them),
    ``map50_drop`` (percentage points), ``box_agreement`` (share of the reference's boxes the target matches:
    same class, IoU >= 0.5; ``box_match`` has the counts), and batch-1 latency of both timed in alternating
    blocks with the target's threads and warm-up (``bench.latency.measure_paired``), with the speedup. An INT8
    target adds what its graph computes in (``precision_state``, ``float_layers``), its figures on the
    validation images its fallback did not choose on (``held_out``: the ``max_map_drop`` gate judges that
    drop) and its fp32 graph on the same backend timed alongside (``float_same_backend_p50_ms``,
    ``int8_speedup_over_float``). Gates: the profile's ``max_map_drop`` and ``max_p95_ms``. A target this
    host cannot run, or not exported, is reported as skipped (an EdgeTLError when it was the one target
    named). Each measured report has a grid of images with the ground truth and both models' boxes
    (``detect_plot``, ``detect.gallery``). Returns the reports, written to ``RUN/reports/`` (and ``json_path``).
    DataError (one line) when a validation image is gone or changed since the fine-tune, or ``data`` is not a
    usable box folder."""
    import sys

    from ..bench.run import Steps, _now, data_reports_dir, host_cannot_run, new_session, target_arg
    from ..bench.writer import write_reports
    from ..checkpoint import load_model
    from ..manifest import host_info, versions, write_json
    from .evalset import data_note, folder_set, split_identity
    from .evaluate import detection_metrics
    from .train import detections_from, predict_frames, truths_of

    steps = Steps(quiet if progress is None else not progress, total=len(chosen))
    det, ft = load_model(run.finetune)
    det = det.to("cpu").eval()
    if data is None:
        held = held_out(run.finetune, ft, quiet=quiet)
        ident, out_dir = split_identity(run.finetune, len(held.frames.items)), run.reports
    else:
        held, ident = folder_set(ft, data, quiet)
        out_dir = data_reports_dir(run, ident)
    items, classes, nms = held.frames.items, list(ft["classes"]), nms_args(ft)
    size, mode = int(ft["preprocessing"]["crop"]), held.preprocess.resize_mode
    truths = truths_of(items)
    ref_dets = detections_from(*predict_frames(det, held.frames, held.preprocess), items, size, mode, **nms)
    ref_m = detection_metrics(ref_dets, truths, classes)
    session = new_session() | {"targets": [t.name for t in chosen], "eval_set_sha256": ident["sha256"]}
    reports: list[dict[str, Any]] = []
    for target in chosen:
        steps.start(target.name)
        folder = run.target(target.name)
        reference: dict[str, Any] = {
            "format": "torch", "precision": "fp32", "model": "full fine-tuned fp32 torch detector",
            "map50": ref_m["map50"], "map50_95": ref_m["map50_95"], "per_class_ap50": ref_m["per_class_ap50"],
            "latency_ms": None, "throughput_ips": None, "size_mb": (run.finetune / "model.pt").stat().st_size / 1e6}
        base: dict[str, Any] = {
            "task": "detect", "target": target.name, "profile": target.model_dump(), "eval_set": ident,
            "n": len(items), "classes": classes, "host": host_info(), "versions": versions(),
            "notes": [] if data is None else [data_note(ident)],
            "session": session, "measured_at": _now(), "reference": reference}
        reason, failed = None, False
        try:  # before ``prepare`` (bench --export): a target not built for detection is skipped, not failed
            check_detect_target(target)
        except ConfigError as exc:
            reason = str(exc)
        if reason is None and prepare is not None:
            reason, failed = prepare(run, target, steps)
        if reason is None:
            reason = host_cannot_run(target)
        if reason is None and not (folder / "manifest.json").is_file():
            reason = f"not exported (run `edge-tl export {run.root} --target {target_arg(target)}`)"
        if reason is not None:
            if len(chosen) == 1 and not failed:
                raise EdgeTLError(f"cannot bench {target.name} here: {reason}")
            report = base | {"candidate": None, "speedup": None, "gates": [], "passed": not failed,
                             "skipped": reason, "host_load": None, "timing_reliable": None}
        else:
            run.check_fresh(folder, target.cli_ref)
            report = _bench_one(run, target, folder, det, held, ref_dets, truths, classes, nms, base, steps,
                                latency, wait_quiet)
        write_reports(report, out_dir, Path(json_path) if json_path and not several else None,
                      index_root=run.reports)
        reports.append(report)
        if json_path is not None and several:
            write_json(json_path, reports)
    if not steps.quiet:
        print(f"reports: {out_dir}  (run index: {run.reports / 'index.html'})", file=sys.stderr, flush=True)
    return reports



def _bench_one(run: RunDir, target: Target, folder: Path, det: Any, held: Any, ref_dets: list[Any],
               truths: list[dict[str, Any]], classes: list[str], nms: dict[str, Any], base: dict[str, Any],
               say: Any, latency: bool, wait_quiet: float) -> dict[str, Any]:
    """One exported target of a detection run measured here (:func:`bench_detect`); the report."""
    import contextlib

    import torch

    from ..bench.hostload import HostLoad, spread_reason, wait_for_quiet
    from ..bench.labels import headline_figure
    from ..bench.latency import block_ratio_spread, measure_paired
    from ..bench.precision import precision_state
    from ..bench.report import verdict_text
    from ..bench.run import NO_LATENCY_TEXT, _now, _size_mb, target_gates
    from ..gates import all_passed
    from ..manifest import sha256_file
    from ..target_manifest import read_target_manifest
    from .evaluate import box_figures, detection_metrics
    from .gallery import gallery
    from .train import image_detections

    manifest = read_target_manifest(folder)
    items, reference = held.frames.items, base["reference"]
    size, mode = int(manifest["preprocessing"]["crop"]), held.preprocess.resize_mode
    say(f"detections on {len(items)} evaluation images…")
    cand_dets = image_detections(graph_detections(target_outputs(folder, target.model_file, target.backend,
                                                                 target.device, target.threads, target.batch_size,
                                                                 held.inputs, target.precision),
                                                  nms_inside(manifest), **nms), items, size, mode)
    m = detection_metrics(cand_dets, truths, classes)
    boxes = box_figures(cand_dets, ref_dets)
    match = boxes["box_match"]
    drop = (None if m["map50"] is None or reference["map50"] is None
            else (reference["map50"] - m["map50"]) * 100.0)
    candidate: dict[str, Any] = {
        "format": target.backend, "precision": target.precision, "map50": m["map50"], "map50_95": m["map50_95"],
        "per_class_ap50": m["per_class_ap50"], "map50_drop": drop, **boxes, "latency_ms": None,
        "throughput_ips": None, "batch1_ips": None,
        "size_mb": _size_mb(folder, target.model_file), "source_stage": manifest.get("source_stage"),
        "target_manifest_sha256": sha256_file(folder / "manifest.json")}
    notes: list[str] = []
    gated_drop, gated_boxes = drop, boxes["box_agreement_confident"]
    if target.quantized:
        state = precision_state(folder, target.model_file, target.backend, manifest)
        candidate |= {"precision_state": state, "float_layers": manifest.get("float_layers")}
        if state is not None:
            candidate["precision"] = state["precision"]  # "int8", "mostly float" or "float": what it computes in
        held_out = _int8_held_out(manifest, items, cand_dets, ref_dets, truths, classes)
        if held_out is not None:
            candidate["held_out"] = held_out
            gated_drop, gated_boxes = held_out["map50_drop"], held_out["box_agreement_confident"]
            notes.append(f"the max_map_drop and min_box_agreement gates judge the {held_out['n']} validation images "
                         f"no INT8 float layer was chosen on (mAP@0.5 drop {_f(gated_drop, 2)} points there; "
                         f"{_f(drop, 2)} on all {len(items)}, {held_out['selection_n']} of which chose them)")
    speedup = spread = host_load = None
    unreliable: list[str] = []
    flat = int8_lat = None
    if latency:
        say(f"batch-1 latency of torch and {target.backend} in alternating blocks ({target.iterations} calls)…")
        runner: Any = open_runner(RunnerSpec(folder / target.model_file, target.backend, target.device,
                                             target.precision, target.threads, target.batch_size))
        wait = wait_for_quiet(wait_quiet) if wait_quiet > 0 else None
        threads = torch.get_num_threads()
        torch.set_num_threads(target.threads)  # the same threads as the target: a fair speedup
        try:
            with HostLoad(own_threads=target.threads, wait=wait) as load, contextlib.closing(runner):
                base["measured_at"] = _now()
                ref_lat, cand_lat = measure_paired(_with_nms(_torch_fn(det), nms),
                                                   _with_nms(runner.run_outputs, nms, nms_inside(manifest)),
                                                   held.inputs[:1],
                                                   target.warmup, target.iterations)
                if target.quantized and (folder / FLOAT_ONNX).is_file():
                    # INT8 has to earn its place: the fp32 graph on the same backend, timed alongside.
                    say("INT8 vs the fp32 graph on the same backend, alternating blocks…")
                    frunner: Any = open_runner(RunnerSpec(folder / FLOAT_ONNX, target.backend, target.device,
                                                          facts(target.backend).float_baseline, target.threads,
                                                          target.batch_size))
                    with contextlib.closing(frunner):
                        flat, int8_lat = measure_paired(_with_nms(frunner.run_outputs, nms),
                                                        _with_nms(runner.run_outputs, nms, nms_inside(manifest)),
                                                        held.inputs[:1], target.warmup, target.iterations)
        finally:
            torch.set_num_threads(threads)
        reference["latency_ms"], candidate["latency_ms"] = ref_lat, cand_lat
        candidate["batch1_ips"] = 1000.0 / cand_lat["p50"]
        speedup = ref_lat["p50"] / cand_lat["p50"]
        spread = block_ratio_spread(ref_lat, cand_lat)
        host_load = load.summary()
        unreliable = list(host_load.get("reasons") or [])
        if (why := spread_reason(spread, "speedup")) is not None:
            unreliable.append(why)
        if flat is not None and int8_lat is not None:
            ratio = flat["p50"] / int8_lat["p50"]
            candidate |= {"float_same_backend_p50_ms": flat["p50"], "int8_same_backend_p50_ms": int8_lat["p50"],
                          "int8_speedup_over_float": ratio,
                          "int8_speedup_spread": block_ratio_spread(flat, int8_lat)}
            if (why := spread_reason(candidate["int8_speedup_spread"], "INT8 speed-up over float")) is not None:
                unreliable.append(why)
            if ratio < 1.0:
                notes.append(f"INT8 is SLOWER than the fp32 graph on this host ({ratio:.2f}× of its speed): ship "
                             "the fp32 target here")
        if unreliable:
            notes.append("UNRELIABLE TIMING: speedup and latencies are not to be trusted: " + "; ".join(unreliable)
                         + ". Re-run on a quiet host (or with --wait-quiet SECONDS).")
        base["timing"] = (f"batch-1 latency of the reference and the candidate timed in alternating blocks "
                          f"({target.iterations} calls each, {target.threads} threads, {target.warmup} warm-up "
                          "calls); graph and NMS (numpy, the runtime's; a graph that ends with its own NMS: "
                          "that one): the latency of an answer")
    else:
        base["timing"] = NO_LATENCY_TEXT
        notes.append(f"accuracy only (--no-latency): {NO_LATENCY_TEXT}")
    p95 = (candidate["latency_ms"] or {}).get("p95")
    gates = target_gates(target, {"max_map_drop": gated_drop, "min_box_agreement": gated_boxes, "max_p95_ms": p95},
                         (() if latency else ("max_p95_ms",)) + (("min_box_agreement",) if gated_boxes is None else ()))
    if target.gates.max_map_drop is None:
        notes.append("the profile sets no max_map_drop gate: the mAP@0.5 drop is recorded, not gated")
    report = base | {"notes": base["notes"] + notes, "candidate": candidate, "speedup": speedup,
                     "speedup_spread": spread, "host_load": host_load,
                     "timing_reliable": not unreliable if latency else None,
                     "unreliable_reasons": unreliable if latency else None, "latency_measured": latency,
                     "gates": gates, "passed": all_passed(gates), "skipped": None,
                     "detect_plot": gallery(held.root or Path("."), items, ref_dets, cand_dets, classes)}
    h = headline_figure(report)
    say(f"done: {h.label} {h.text(m[h.key])} (reference {h.text(reference[h.key])}) on {base['eval_set']['name']}, "
        f"box agreement {match['matched_share']:.4f}, {verdict_text(report)}")
    return report


def _int8_held_out(manifest: dict[str, Any], items: list[Any], cand_dets: list[Any], ref_dets: list[Any],
                   truths: list[dict[str, Any]], classes: list[str]) -> dict[str, Any] | None:
    """An INT8 export's figures on the validation images its fallback did not choose float layers on (all but
    the manifest's ``fallback.selection.images``): ``n``, ``map50``, ``reference_map50``, ``map50_drop``
    (points), ``box_agreement``, ``box_match``; None when the manifest names no selection images (no gate, an
    older export) or every image was one."""
    from .evaluate import box_figures, detection_metrics

    chosen = set(((manifest.get("fallback") or {}).get("selection") or {}).get("images") or [])
    rest = [i for i, a in enumerate(items) if a.path not in chosen]
    if not chosen or not rest or len(rest) == len(items):
        return None
    cand, ref, gt = ([v[i] for i in rest] for v in (cand_dets, ref_dets, truths))
    m, r = detection_metrics(cand, gt, classes), detection_metrics(ref, gt, classes)
    drop = None if m["map50"] is None or r["map50"] is None else (r["map50"] - m["map50"]) * 100.0
    return {"n": len(rest), "selection_n": len(items) - len(rest), "map50": m["map50"], "reference_map50": r["map50"],
            "map50_drop": drop, **box_figures(cand, ref),
            "images": "validation images no float layer was chosen on (the export's verdict images)"}
