"""INT8 export of a detection run (``export RUN --target cpu-onnxruntime-int8 | cpu-openvino-int8``).

The classifier's INT8 path, judged on boxes: the same backend quantisers (``backends/<name>_/quantize.py``,
reached through ``stages.quantize.int8_quantiser`` / ``quantize_judged``) and the same accuracy fallback
(``stages/quantize/fallback.py``: the layer ranking, ``search_fewest`` / ``bypass_fewest``, "best measured"
when nothing passes, the held-out verdict), with a judge of this task's (:class:`DetectJudge`) in place of
the classifier's logit judge. What differs, and why:

* **Calibration** (:func:`calibration_set`): the run's training images (``split.json`` ``train``), in a
  seeded order, through the detector's own preprocessing (its resize: ``full`` or ``letterbox``), none equal
  to a validation image; or ``--calibration DIR`` as for a classifier.
* **Float by design**: the decode after the head's last convolutions (``fixed_float.detect_float_names``:
  exp, stride, box corners, clip, sigmoid, sqrt) is never quantised.
* **Selection and verdict** (:func:`split_validation`): a classifier chooses its float layers on spare
  training images; a detector's training images are what its head was fitted on (their boxes are found
  with more confidence than new ones'), so it chooses on a seeded half of the *validation* images (the
  selection set) and the verdict is measured on the other half only, which nothing was chosen on.
* **Gate**: the profile's ``max_map_drop`` (points of mAP@0.5 below the torch detector, the bench's gate):
  ``fallback.map_gate_values`` on detections after the run's NMS; box agreement (same class, IoU >= 0.5,
  as bench) is recorded beside it. The quantisers' sensitivity ranking reads boxes and scores together
  (``fixed_float.judged``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import SELECTION_SEED, SOURCE_TRAIN, CalibrationSet, calibration_from, user_calibration
from ..errors import DataError
from ..manifest import read_json, sha256_file
from ..rundir import RunDir
from ..stages.quantize.fallback import map_gate_values
from ..targets import Gates, Target
from .evaluate import box_figures, detection_metrics
from .nms import batched_nms

log = logging.getLogger("edge_tl")

SELECTION_SHARE = 0.5  # of the validation images, the share the float layers are chosen on
SELECTION_SOURCE = "validation split, selection part"


def calibration_set(run: RunDir, src: Path, pre: Any, size: int, user_source: str | Path | None = None,
                    quiet: bool = True) -> CalibrationSet:
    """Up to ``size`` calibration images of a detection run: its training images (``src/split.json``
    ``train``, under ``run.data`` when the images moved) in a seeded order, or ``user_source`` (a folder or a
    list file, ``--calibration``); through ``pre`` (the detector's preprocessing); never a validation image
    (by sha256 or path). DataError when none is usable."""
    if size < 1:
        raise DataError(f"calibration size must be at least 1, got {size}")
    split = read_json(src / "split.json")
    root = Path(run.data or split["root"])
    val_paths = {(root / r["path"]).resolve() for r in split.get("val") or []}
    validation = ({sha256_file(p) for p in val_paths if p.is_file()}, val_paths)
    if user_source is not None:
        return user_calibration(user_source, pre, size, validation, quiet=quiet)
    rows = sorted(r["path"] for r in split.get("train") or [])
    # Seeded rather than by name: the first names of a folder are often one class's or one shift's.
    random.Random(0).shuffle(rows)
    return calibration_from([(root / p, p, None) for p in rows], pre, size, validation, SOURCE_TRAIN, str(root),
                            0, None, quiet)


def split_validation(n: int, share: float = SELECTION_SHARE, seed: int = SELECTION_SEED,
                     ) -> tuple[list[int], list[int]]:
    """(selection, verdict): indices into the ``n`` validation images, a seeded ``share`` of them (at least one)
    to choose float layers on and the rest to judge the shipped graph on, each in ascending order. With
    fewer than 2 images both are every image (the record says so)."""
    if n < 2:
        return list(range(n)), list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(n * share)))
    return sorted(order[:k]), sorted(order[k:])


@dataclass
class Images:
    """Some of a run's validation images, as the judge reads them: ``inputs`` (N, 3, S, S) float32, the torch
    detector's detections after NMS (``reference``, input pixels), ground truth (``truths``, input pixels),
    the paths and their rows among all validation images."""

    inputs: np.ndarray
    reference: list[Any]
    truths: list[dict[str, Any]]
    paths: list[str]
    index: list[int]  # rows of the run's validation images (``detect.export.held_out``'s order)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class DetectJudge:
    """The INT8 fallback's judge of a detector (the shape of ``stages.quantize.fallback.Judge`` the fallback
    and the quantisers call): mAP@0.5 of the graph's detections after NMS against the torch detector's, on the
    selection images (:meth:`on_selection`: where float layers are chosen) or on the verdict images
    (:meth:`on_held_out`: the shipped graph, once). The callables it is handed return what
    ``fixed_float.judged`` packs: (N, K, 4 + C), boxes as fractions of the input, then the scores."""

    select: Images
    verdict: Images
    gates: Gates
    classes: list[str]
    nms: dict[str, Any]
    input_size: int
    record: dict[str, Any] = field(default_factory=dict)  # the manifest's fallback.selection
    error_scale: float = 1.0  # the selection images are validation images: nothing to scale
    anomaly: bool = False
    reference_map50: dict[str, float | None] = field(default_factory=dict)

    @property
    def selection_n(self) -> int:
        return len(self.select)

    @property
    def held_out_n(self) -> int:
        return len(self.verdict)

    def held_out_text(self, where: str) -> str:
        return (f"{len(self.verdict)} validation images ({where} on this host), held out: the float layers were "
                f"chosen on the other {len(self.select)} (the selection part)")

    def detections(self, packed: np.ndarray) -> list[Any]:
        """``fixed_float.judged``'s (N, K, 4 + C) -> detections after the run's NMS, in input pixels."""
        packed = np.asarray(packed, np.float32)
        return batched_nms(packed[..., :4] * np.float32(self.input_size), packed[..., 4:], **self.nms)

    def values(self, images: Images, dets: list[Any]) -> dict[str, Any]:
        """Gate values of ``dets`` on ``images``: mAP@0.5 against the torch detector's, box agreement beside."""
        key = "select" if images is self.select else "verdict"
        if key not in self.reference_map50:
            self.reference_map50[key] = detection_metrics(images.reference, images.truths, self.classes)["map50"]
        m = detection_metrics(dets, images.truths, self.classes)
        return map_gate_values(m["map50"], self.reference_map50[key], self.gates, map50_95=m["map50_95"],
                               **box_figures(dets, images.reference))

    def on_selection(self, int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        return self.values(self.select, self.detections(int8_logits(self.select.inputs)))

    def noise(self, int8_logits: Callable[[np.ndarray], np.ndarray]) -> None:
        return None  # a margin of answers: a classifier's; boxes are judged by mAP and box agreement

    def on_held_out(self, int8_logits: Callable[[np.ndarray], np.ndarray], noise: float = 0.0) -> dict[str, Any]:
        return self.values(self.verdict, self.detections(int8_logits(self.verdict.inputs)))

    def float_values(self) -> dict[str, Any]:
        """The torch detector judged against itself on the verdict images: passes unless mAP cannot be
        computed there (no ground-truth box), when no choice of float layers can pass."""
        return self.values(self.verdict, self.verdict.reference)


def make_judge(target: Target, held: Any, reference: tuple[np.ndarray, np.ndarray], classes: list[str],
               nms: dict[str, Any]) -> DetectJudge:
    """The judge of ``target``'s INT8 graph on the run's validation images ``held`` (``detect.export.HeldOut``)
    with the torch detector's outputs on them (``reference``: boxes (N, K, 4) input pixels, scores (N, K, C)),
    split by :func:`split_validation`."""
    truths = held.truths()
    paths = [a.path for a in held.frames.items]
    ref_dets = batched_nms(*reference, **nms)
    sel, ver = split_validation(len(paths))

    def part(idx: list[int]) -> Images:
        return Images(held.inputs[idx], [ref_dets[i] for i in idx], [truths[i] for i in idx], [paths[i] for i in idx],
                      idx)

    select, verdict = part(sel), part(ver)
    same = sel == ver
    record = {
        "source": SELECTION_SOURCE, "n": len(sel), "of": len(paths), "share": SELECTION_SHARE, "seed": SELECTION_SEED,
        "images": select.paths, "verdict_n": len(ver), "reference": "full model (the torch detector)",
        "error_scale": 1.0, "disjoint_from_validation": False, "disjoint_from_verdict": not same,
        "rule": (f"float layers are chosen on {len(sel)} of the {len(paths)} validation images (a seeded share "
                 f"{SELECTION_SHARE:g}), by mAP@0.5 after NMS against the torch detector; the verdict is measured "
                 f"on the other {len(ver)}, which nothing was chosen on (training images are what the head was "
                 "fitted on: its boxes there are surer than on new images)")}
    if same:
        record["note"] = (f"only {len(paths)} validation image(s): float layers are chosen and judged on the same "
                          "images, so the verdict is optimistic")
        log.warning("%s: %s", target.name, record["note"])
    size = int(held.inputs.shape[-1])
    return DetectJudge(select, verdict, target.gates, classes, nms, size, record)


def quantize_detect(run: RunDir, target: Target, src: Path, float_onnx: Path, out_dir: Path, held: Any,
                    reference: tuple[np.ndarray, np.ndarray], classes: list[str], nms: dict[str, Any],
                    calibration: str | Path | None = None, quiet: bool = True,
                    ) -> tuple[list[str], dict[str, Any], DetectJudge]:
    """INT8 of the detector graph ``float_onnx`` for ``target`` into ``out_dir`` (``target.model_file`` and
    ``calibration.json``; ``float_onnx`` stays, bench times it beside the INT8 graph). Returns the files, the
    manifest fields of ``stages.quantize.finish_int8`` (``quantizer``, ``float_layers``, ``fallback`` with its
    ``held_out`` verdict, ``calibration``, ``speed_check``) and the judge (its verdict images). ConfigError for
    a quantiser setting the backend does not take (before any work), DataError without calibration images."""
    from ..stages.quantize import int8_quantiser, quantize_judged

    backend, settings = int8_quantiser(target)
    judge = make_judge(target, held, reference, classes, nms)
    cset = calibration_set(run, src, held.preprocess, target.quantizer.calibration_size, calibration, quiet)
    files, info = quantize_judged(target, backend, settings, float_onnx, out_dir, cset, judge, judge.float_values(),
                                  held.preprocess, judge.record, "full model")
    info["float_by_design"] = float_by_design(float_onnx)
    return files, info, judge


def float_by_design(float_onnx: Path) -> dict[str, Any]:
    """The nodes of the exported detector graph no quantiser touches (``fixed_float.float_names``), and why:
    the manifest's ``float_by_design``."""
    import onnx

    from ..backends.onnxruntime_.onnx_graph import fixed_float
    from ..fixed_float import DETECT_FLOAT_WHY, DETECT_LAST_CONVS_FLOAT

    names = fixed_float(onnx.load(str(float_onnx), load_external_data=False))
    return {"nodes": names, "why": DETECT_FLOAT_WHY, "last_convolutions_float": DETECT_LAST_CONVS_FLOAT}
