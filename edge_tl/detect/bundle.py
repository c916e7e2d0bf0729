"""``edge-tl bundle`` of a detection run: an exported float target -> a bundle whose runtime answers with boxes.

What differs from a classifier's bundle (``stages.bundle``, whose shared checks run first and whose helpers
write the folder): the manifest's ``task`` is ``detect`` and its ``detect`` section holds the NMS parameters the
run was evaluated with (``ship.nms_args``) and how boxes map back to the image (the preprocessing's
``resize_mode``, ``runtime.nms.to_image_pixels``); the policy is a box policy (``runtime.boxes``: a part is
``defect`` when a box of a defect class reaches its class's threshold), its threshold fixed
(``--defect-threshold``) or tuned on the run's held-out validation images to ``--max-escape`` or
``--max-false-reject``, with what it gives on those images; the golden images carry their expected boxes in
the image's pixels and decision, computed here by the target's own backend through the runtime's
preprocessing, and the runtime refuses to answer unless it reproduces them (class, IoU, score).

Its faithfulness to torch is the export's: the target manifest's ``validation`` (box agreement and mAP against
torch on the same validation images), copied into ``source.export_validation``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import availability
from ..errors import ArtifactError, ConfigError
from ..manifest import read_json, read_manifest, staged_folder
from ..preprocess import Preprocess, load_image
from ..rundir import RunDir
from ..runtime.boxes import (
    GOLDEN_IOU,
    MATCH_IOU,
    BoxPolicy,
    box_dicts,
    box_policy_stats,
    make_box_policy,
    match_boxes,
    tune_box_threshold,
)
from ..runtime.bundlefile import tolerance_for
from ..runtime.nms import SCORE_THRESHOLD, Detections, graph_detections, to_image_pixels
from ..target_manifest import read_target_manifest
from ..targets import Target
from .ship import check_detect_target, nms_args, nms_inside, target_outputs

log = logging.getLogger("edge_tl")

BOX_RESIZE = ("full", "letterbox")  # the resize modes whose boxes map back to the whole image


def pick_golden_boxes(dets: list[Detections], truths: list[dict[str, Any]], policy: BoxPolicy, n: int,
                      tol: dict[str, float]) -> list[int]:
    """Indices of golden images: at least one per class that the model finds on a validation image, one
    decided ``ok`` when there is such an image, then round-robin up to ``n``.

    Per class, preferred: images where a box of the class finds a true box of it (IoU >= ``MATCH_IOU``), its
    score highest first; else any image with a box of the class. Images whose deciding score is within the
    tolerance of the threshold come last (their decision may go either way on another host)."""
    classes = policy.classes
    limit = policy.threshold
    edge = tol["atol"] + tol["rtol"] * abs(limit or 0.0)
    clear = [limit is None or abs(policy.defect_score(d.labels, d.scores) - limit) > edge for d in dets]
    buckets: list[list[int]] = []
    for c, name in enumerate(classes):
        found: list[tuple[float, int]] = []
        seen: list[tuple[float, int]] = []
        for i, (d, t) in enumerate(zip(dets, truths, strict=True)):
            mine = np.asarray(d.labels) == c
            if not mine.any():
                continue
            t_labels = np.asarray(t["labels"], np.int64)
            hit, _ = match_boxes(np.asarray(d.boxes)[mine], np.asarray(d.labels)[mine],
                                 np.asarray(t["boxes"], np.float32).reshape(-1, 4)[t_labels == c],
                                 t_labels[t_labels == c], MATCH_IOU)
            scores = np.asarray(d.scores)[mine]
            seen.append((float(scores.max()), i))
            if hit.any():
                found.append((float(scores[hit].max()), i))
        pool = [i for _, i in sorted(found or seen, key=lambda si: (not clear[si[1]], -si[0], si[1]))]
        if not pool:
            log.warning("no golden image for class %r: the model finds no box of it on the validation images, "
                        "so the device cannot check it", name)
        buckets.append(pool)
    ok = [i for i, d in enumerate(dets) if policy.decide(d.labels, d.scores)[0] == "ok" and clear[i]]
    buckets.append(sorted(ok, key=lambda i: (policy.defect_score(dets[i].labels, dets[i].scores), i)))
    chosen: list[int] = []
    n = max(n, sum(1 for b in buckets if b))
    rank = 0
    while len(chosen) < n and any(rank < len(b) for b in buckets):
        for b in buckets:
            if rank < len(b) and len(chosen) < n and b[rank] not in chosen:
                chosen.append(b[rank])
        rank += 1
    return chosen


def bundle_detect(run: RunDir, t: Target, out: Path, n_golden: int, *, ok_classes: list[str] | None,
                  defect_classes: list[str] | None, max_false_reject: float | None, ok_threshold: float | None,
                  defect_threshold: float, max_escape: float | None, ood_limit: float | None, use_ood: bool,
                  allow_failed: bool, passed_over: Sequence[str] = (), quiet: bool) -> dict[str, Any]:
    """Write the detection bundle of ``run``'s exported ``t`` to ``out`` (the checks every bundle shares are
    done: ``stages.bundle.bundle``); returns bundle.json.

    Policy: ``ok_classes``/``defect_classes`` split the box classes (``runtime.policy.make_policy``'s
    default: every class not named like ok is a defect class); one threshold for every defect class,
    ``defect_threshold`` or tuned with ``max_escape`` / ``max_false_reject`` (``runtime.boxes.
    tune_box_threshold``) on the held-out validation images. ConfigError for options a detector has no use
    for (``ok_threshold``, ``ood_limit``) and for a target this host cannot run (the golden boxes are
    computed here); ArtifactError / DataError when the run's validation images are gone.
    """
    from ..stages.bundle import (
        copy_golden,
        finish,
        golden_backend,
        input_section,
        manifest_head,
        model_files,
        model_section,
        provenance,
        refuse_unbenched,
    )
    from .export import held_out
    from .train import image_detections, truths_of

    check_detect_target(t)
    if ok_threshold is not None:
        raise ConfigError("--ok-threshold is a classifier's: a detection bundle's box threshold is "
                          "--defect-threshold, or tuned with --max-escape / --max-false-reject")
    if ood_limit is not None:
        raise ConfigError("--ood-limit: a detection model has no ood_score output; bundle it without")
    folder = run.target(t.name)
    tm = read_target_manifest(folder)
    classes: list[str] = list(tm["classes"])
    policy = make_box_policy(classes, ok_classes, defect_classes, defect_threshold)
    verdict = refuse_unbenched(run, t, allow_failed, passed_over)  # after the options (a typo first), before any work
    pre = Preprocess.from_dict(tm["preprocessing"])
    if pre.resize_mode not in BOX_RESIZE:
        raise ArtifactError(f"{folder} resizes with {pre.resize_mode!r}: boxes map back to the image from "
                            f"{' or '.join(BOX_RESIZE)} only")
    backend, device = golden_backend(t)  # TensorRT: its stand-in on the same graph
    reason = availability(backend, device)
    if reason is not None:
        raise ConfigError(f"cannot compute the golden boxes of {t.name} here ({backend} on {device}): {reason}")
    inside = nms_inside(tm)
    nms_kw = nms_args(tm)
    floor = float(nms_kw.get("score_threshold", SCORE_THRESHOLD))
    started = time.perf_counter()
    ft = read_manifest(run.finetune, verify=False)
    held = held_out(run.finetune, ft, quiet=quiet)
    items = held.frames.items

    def run_target(x: np.ndarray) -> list[Detections]:
        """Detections in input pixels: the one path from the graph's outputs (``graph_detections``)."""
        return graph_detections(target_outputs(folder, t.model_file, backend, device, t.threads, t.batch_size, x),
                                inside, **nms_kw)

    dets = image_detections(run_target(held.inputs), items, pre.crop, pre.resize_mode)
    truths = truths_of(items)
    tuning = None
    if max_escape is not None or max_false_reject is not None:
        policy, tuning = tune_box_threshold(policy, dets, truths, floor=floor, max_escape=max_escape,
                                            max_false_reject=max_false_reject)
        if not tuning["target_met"]:
            log.warning("%s target %.3g not met: %s", "escape" if max_escape is not None else "false-reject",
                        max_escape if max_escape is not None else max_false_reject, tuning["reason"])
    stats = box_policy_stats(policy, dets, truths)
    if tuning is None and (stats.get("escape_rate") or 0.0) > 0.5:
        # A box threshold nobody tuned can pass most defects: the line must hear it before the bundle ships.
        log.warning("the box threshold %.3g lets %.0f %% of the validation images with a defect pass as ok: tune it "
                    "with --max-escape RATE (or set --defect-threshold)", max(policy.thresholds),
                    100.0 * stats["escape_rate"])
    tol = tolerance_for(t.precision) | {"iou": GOLDEN_IOU}
    picks = pick_golden_boxes(dets, truths, policy, n_golden, tol)
    files = model_files(t)
    split_root = Path(read_json(run.finetune / "split.json")["root"])

    def tag(i: int) -> str:
        decision, k, _, _ = policy.decide(dets[i].labels, dets[i].scores)
        return classes[k] if decision == "defect" else "ok"

    with staged_folder(out) as tmp:
        golden_files = copy_golden(tmp, folder, files, split_root, [(items[i].path, tag(i)) for i in picks])
        images = [load_image(tmp / rel) for rel in golden_files]
        x = pre.batch(images)
        drift = float(np.abs(x - held.inputs[picks]).max()) if len(picks) else 0.0
        if drift > 1e-4:
            raise ArtifactError(f"golden images no longer preprocess as the run's validation images did (max diff "
                                f"{drift:.3g}): the images changed since the fine-tune; fine-tune again")
        entries = []
        for rel, i, im, d in zip(golden_files, picks, images, run_target(x), strict=True):
            d.boxes = to_image_pixels(d.boxes, im.size, pre.crop, pre.resize_mode)
            decision, k, score, _ = policy.decide(d.labels, d.scores)
            truth = Detections(items[i].boxes, np.ones(len(items[i].labels), np.float32), items[i].labels)
            entries.append({"file": rel, "source": items[i].path, "size": list(im.size), "decision": decision,
                            "label": classes[k] if k >= 0 else "ok", "score": score,
                            "boxes": box_dicts(d, classes, digits=4),
                            "truth": [{k_: v for k_, v in b_.items() if k_ != "score"}
                                      for b_ in box_dicts(truth, classes, digits=2)]})
        all_files = [*files, *golden_files]
        manifest = {
            **manifest_head(run, t),
            "classes": classes,
            "task": "detect",
            "detect": {"nms": nms_kw, "input_size": pre.crop, "resize_mode": pre.resize_mode,
                       "outputs": (tm.get("outputs") or {}).get("names", ["boxes", "scores"]),
                       "nms_inside": inside,
                       "postprocess": ("the graph's own per-class NMS (its padded num_detections, det_boxes, "
                                       "det_scores, det_classes, read by edge_tl.runtime.nms.graph_detections; "
                                       "`nms` are the parameters it was built with)" if inside else
                                       "per-class NMS of the graph's boxes (input pixels) and scores with `nms` "
                                       "(edge_tl.runtime.nms.nms)")
                                      + ", then to the original image's pixels "
                                        "(edge_tl.runtime.nms.to_image_pixels with resize_mode)",
                       "boxes": "x1 y1 x2 y2 in the original image's pixels"},
            "preprocessing": pre.to_dict(),
            "input": input_section(pre),
            "model": model_section(t, files),
            "policy": policy.to_dict() | {"tuning": tuning, "validation": stats},
            "target": t.model_dump(),
            "golden": {"expected_from": {"backend": backend, "device": device, "precision": t.precision},
                       "tolerance": tol,
                       "match": "each expected box by a box of its class at IoU >= tolerance.iou with its score within "
                                "atol + rtol * |score|, one to one, and back; boxes within the tolerance of NMS's "
                                "cut-offs may be missing on either side; the same decision",
                       "images": entries},
            **provenance(run, folder, tm, verdict),
        }
        finish(tmp, manifest, all_files, t)
    log.debug("detection bundle written in %.1f s", time.perf_counter() - started)
    return manifest
