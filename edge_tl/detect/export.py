"""The detector as an ONNX graph, and the check that ONNX Runtime answers as torch does.

The graph goes through the product's one export call (``onnx_export.export_onnx``: TorchScript exporter,
opset 17, checked, written atomically) with a free batch axis: ``input`` (B, 3, S, S) -> ``boxes``
(B, K, 4) x1 y1 x2 y2 in input pixels and ``scores`` (B, K, C). Box decoding is inside the graph; NMS is
not (it runs in the runtime: :func:`edge_tl.runtime.nms.nms`, stated in the manifest's ``outputs.nms``).

:func:`compare_onnx` runs both on the same images and compares what a user sees: the detections after NMS
(``box_agreement``: torch boxes matched by the same class with IoU >= 0.99, all but the few float rounding
moves across a cut-off) and, with ground truth,
mAP (equal to 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import box_agreement, detection_metrics

INPUT_NAME = "input"
BOX_IOU_FLOOR = 0.99  # exported boxes must overlap torch's at least this much, every one
MAP_TOLERANCE = 1e-6
# Detections that float rounding may move across a cut-off (score threshold, NMS IoU, the 100-box cap):
# on NEU-DET 2 of 3,200 low-score boxes flipped (32 images, max |box diff| 0.0014 px), mAP identical.
MAX_UNMATCHED_SHARE = 0.005


def export_detector(det: Any, dest: str | Path, opset: int | None = None) -> Path:
    """Write ``det`` (a ``Detector``, evaluated on the CPU) as ONNX at ``dest`` (dynamic batch); returns it."""
    import torch

    from ..onnx_export import export_onnx

    det = det.to("cpu").eval()
    s = det.spec.input_size
    return export_onnx(det, torch.zeros(1, 3, s, s), dest, input_names=[INPUT_NAME],
                       output_names=list(det.output_names), dynamic_batch=True, opset=opset)


def onnx_outputs(onnx_path: str | Path, x: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime (CPU) on ``x`` (N, 3, S, S) float32 -> (boxes (N, K, 4), scores (N, K, C))."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
    return boxes, scores


def compare_onnx(det: Any, onnx_path: str | Path, x: np.ndarray, truths: list[dict[str, Any]] | None = None,
                 classes: list[str] | None = None, **nms_args: Any) -> dict[str, Any]:
    """Torch and ONNX Runtime fp32 on the same normalised inputs ``x`` (N, 3, S, S), after NMS (input pixels):
    :func:`compare_outputs` of the two (``map50_onnx`` / ``map50_95_onnx`` name the candidate)."""
    import torch

    det = det.to("cpu").eval()
    with torch.no_grad():
        tb, ts = (t.numpy() for t in det(torch.from_numpy(np.ascontiguousarray(x, np.float32))))
    out = compare_outputs((tb, ts), onnx_outputs(onnx_path, x), truths, classes, **nms_args)
    if truths is not None:
        out["map50_onnx"], out["map50_95_onnx"] = out.pop("map50_candidate"), out.pop("map50_95_candidate")
    return out


def compare_outputs(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                    truths: list[dict[str, Any]] | None = None, classes: list[str] | None = None,
                    **nms_args: Any) -> dict[str, Any]:
    """The torch graph's outputs (``reference``: boxes (N, K, 4) input pixels, scores (N, K, C)) against an
    exported graph's on the same inputs (``candidate``, same shapes), after NMS.

    Returns the raw differences (``max_abs_box_diff`` in pixels, ``max_abs_score_diff``), the box agreement
    of the candidate with torch (:func:`.evaluate.box_agreement`, matched at IoU ``BOX_IOU_FLOOR``), with
    ``truths`` (one per image, input pixels) both mAPs (``map50_torch``, ``map50_candidate``, and the same
    for ``map50_95``), and ``passed``: every torch box matched (and no extra one) at IoU >= ``BOX_IOU_FLOOR``
    but at most ``MAX_UNMATCHED_SHARE`` of either side (boxes at a cut-off), and the mAPs equal within
    ``MAP_TOLERANCE``. ValueError when the shapes differ."""
    from ..runtime.nms import batched_nms

    (tb, ts), (ob, os_) = reference, candidate
    if tb.shape != ob.shape or ts.shape != os_.shape:
        raise ValueError(f"outputs differ in shape: {tb.shape}/{ts.shape} vs {ob.shape}/{os_.shape}")
    ref, cand = batched_nms(tb, ts, **nms_args), batched_nms(ob, os_, **nms_args)
    agree = box_agreement(cand, ref, iou=BOX_IOU_FLOOR)
    out: dict[str, Any] = {"images": len(tb), "max_abs_box_diff": float(np.abs(tb - ob).max()) if len(tb) else 0.0,
                           "max_abs_score_diff": float(np.abs(ts - os_).max()) if len(tb) else 0.0,
                           "agreement": agree}
    n = max(agree["reference_boxes"], agree["candidate_boxes"])
    passed = n - agree["matched"] <= MAX_UNMATCHED_SHARE * n
    if truths is not None:
        names = classes or [str(k) for k in range(ts.shape[-1])]
        m_t, m_o = detection_metrics(ref, truths, names), detection_metrics(cand, truths, names)
        out.update(map50_torch=m_t["map50"], map50_candidate=m_o["map50"], map50_95_torch=m_t["map50_95"],
                   map50_95_candidate=m_o["map50_95"])
        passed = passed and all(abs((a or 0.0) - (b or 0.0)) <= MAP_TOLERANCE for a, b in
                                ((m_t["map50"], m_o["map50"]), (m_t["map50_95"], m_o["map50_95"])))
    out["passed"] = bool(passed)
    return out


@dataclass
class HeldOut:
    """A detection run's validation images, decoded: ``frames`` (:class:`.train.Frames`, input pixels),
    ``inputs`` (N, 3, S, S) float32 normalised as the model wants, ``preprocess`` (``Preprocess``)."""

    frames: Any
    inputs: np.ndarray
    preprocess: Any
    root: Path | None = None  # the folder the images were read from (``frames.items`` paths are relative to it)

    def truths(self) -> list[dict[str, Any]]:
        """Ground truth per image in input pixels (what :func:`compare_outputs` takes)."""
        return [{"boxes": b, "labels": y} for b, y in zip(self.frames.boxes, self.frames.labels, strict=True)]


def held_out(stage: Path, manifest: dict[str, Any], limit: int | None = None, quiet: bool = True,
             root: Path | None = None) -> HeldOut:
    """The validation rows of ``stage/split.json`` (all, or ``limit`` spread over the split: sorted by path,
    its first images are often one class's), decoded through the run's preprocessing, from ``root`` (where
    the images are now; None: the split's own folder). DataError (one line, naming the file) when an image
    is gone, no longer decodes, or differs from the sha256 ``split.json`` records for it (runs written before
    it recorded them: not checked); ArtifactError when the split is missing or holds no validation image."""
    from ..data import split_hashes, verify_hashes
    from ..errors import ArtifactError, DataError
    from ..manifest import read_json
    from ..preprocess import Preprocess
    from .data import Annotated
    from .train import decode_frames, normalise

    if not (stage / "split.json").is_file():
        raise ArtifactError(f"{stage / 'split.json'} is missing; fine-tune the detector again")
    split = read_json(stage / "split.json")
    rows = split.get("val") or []
    if not rows:
        raise ArtifactError(f"{stage / 'split.json'} holds no validation image to check the export on")
    if limit is not None:
        rows = rows[::max(1, len(rows) // max(1, limit))][:limit]
    items = [Annotated(r["path"], np.asarray(r["boxes"], np.float32).reshape(-1, 4), np.asarray(r["labels"], np.int64),
                       *r["size"]) for r in rows]
    pre = Preprocess.from_dict(manifest["preprocessing"])
    folder = Path(root or split["root"])
    # Every validation image, as recorded: the figures of an export check or a bench name this split, and a
    # moved, deleted or edited image would change them silently (a classifier's eval.npz is frozen once).
    gone = [a.path for a in items if not (folder / a.path).is_file()]
    if gone:
        raise DataError(f"{len(gone)} of the {len(items)} validation image(s) in {stage / 'split.json'} are missing "
                        f"under {folder} (first: {', '.join(gone[:3])}): moved or deleted? Put them back "
                        "(export reads a moved folder with --data NEW_FOLDER)")
    verify_hashes(folder, [a.path for a in items], split_hashes(split), moved=root is not None,
                  origin=str(stage / "split.json"))
    frames = decode_frames(folder, items, pre, quiet, "decode (val)")
    return HeldOut(frames, normalise(frames.images, pre).numpy(), pre, folder)


def export_run(run_dir: str | Path, dest: str | Path, check_images: int = 16) -> dict[str, Any]:
    """Export ``RUN/finetune``'s detector to ``dest`` and compare it with torch on ``check_images``
    validation images spread over its ``split.json`` (:func:`compare_onnx`); returns the comparison with ``path``.
    Raises ArtifactError (checkpoint) when the run is missing or not a detection run."""
    from ..checkpoint import load_model
    from ..errors import ArtifactError
    from ..rundir import RunDir

    stage = RunDir(Path(run_dir)).finetune
    det, manifest = load_model(stage)
    if manifest.get("task") != "detect":
        raise ArtifactError(f"{stage} is not a detection run (task {manifest.get('task')!r})")
    val = held_out(stage, manifest, check_images)
    path = export_detector(det, dest)
    return {"path": str(path), **compare_onnx(det, path, val.inputs, val.truths(), manifest["classes"])}
