"""``Runtime``: open a verified bundle and classify images with numpy, Pillow and one backend.

Nothing here imports torch, torchvision or the training code; the backend (onnxruntime, openvino or
tensorrt) is imported when a bundle that needs it is opened. Preprocessing is ``edge_tl.preprocess``,
the same function training, evaluation and the bundle's golden expectations went through.

A detection bundle (``task: "detect"``) answers with boxes: the graph's boxes and per-class scores go
through the run's NMS (``runtime.nms``; where the bundle says ``detect.nms_inside``, the graph ran that NMS
itself and its padded detections are read: ``runtime.nms.graph_detections`` either way), are mapped back
to each original image's pixels (the preprocessing undone) and decided by the box policy
(``runtime.boxes``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from ..backends import RunnerSpec, availability, open_runner
from ..backends.table import facts
from ..errors import ArtifactError, EdgeTLError
from ..manifest import atomic_path, sha256_file
from ..preprocess import Preprocess, from_array, load_image, to_rgb
from .boxes import BoxPolicy, box_dicts, golden_box_problem
from .bundlefile import read_bundle
from .nms import Detections, graph_detections, to_image_pixels
from .policy import Policy, softmax

log = logging.getLogger("edge_tl")

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]  # noqa: UP007 - readable at runtime on 3.10



class InputError(EdgeTLError, ValueError):
    """An image the runtime cannot use (unreadable file, wrong array type, unstated colour order)."""


@dataclass(frozen=True)
class Prediction:
    """One classified image: label, its softmax probability, the QC decision, and the time it took.

    Images classified together share one inference call, so no image has a time of its own: ``ms``
    is this image's share, the call's time (``batch_ms``: preprocessing + inference of the whole
    batch, milliseconds) divided by the images in it (``batch_size``). For the latency of one image
    alone, classify with batch size 1 (``edge-tl predict --batch 1``).
    """

    label: str
    index: int
    score: float
    decision: str  # "ok" | "defect" | "review"
    ms: float  # this image's share: batch_ms / batch_size
    logits: np.ndarray = field(repr=False, compare=False)
    path: str | None = None
    batch_size: int = 1
    batch_ms: float | None = None
    # Anomaly bundles: the normalised anomaly score (1.0 = the shipped threshold; defect above it).
    anomaly_score: float | None = None
    # Classifier bundles with an ood output: the out-of-distribution score (1.0 = the threshold calibrated
    # at export; above the bundle's limit the decision is review).
    ood_score: float | None = None
    # Classifiers: why the decision is review (low_confidence | out_of_distribution). Detection bundles: why
    # it is what it is (``defect_box`` | ``no_defect_box``, see ``runtime.boxes``).
    reason: str | None = None
    # Detection bundles: every box after NMS, highest score first, as {class, score, x1, y1, x2, y2} in the
    # original image's pixels (label/score: the deciding box's, see ``runtime.boxes``); None for classifiers.
    boxes: list[dict[str, Any]] | None = None

    def box_dicts(self) -> list[dict[str, Any]] | None:
        """The boxes as written to JSON: pixels to 2 decimals, scores to 6 (None for a classifier)."""
        if self.boxes is None:
            return None
        return [{k: round(v, 6 if k == "score" else 2) if isinstance(v, float) else v for k, v in b.items()}
                for b in self.boxes]

    def to_dict(self, logits: bool = False) -> dict[str, Any]:
        """JSON-ready fields: path, label, score, decision, ms_per_image (``ms``), batch_size, batch_ms
        (and the logits when asked; a detection bundle's answer adds ``boxes``)."""
        batch_ms = self.ms * self.batch_size if self.batch_ms is None else self.batch_ms
        out: dict[str, Any] = {"path": self.path, "label": self.label, "score": round(self.score, 6),
                               "decision": self.decision, "ms_per_image": round(self.ms, 3),
                               "batch_size": self.batch_size, "batch_ms": round(batch_ms, 3)}
        if self.anomaly_score is not None:
            out["anomaly_score"] = round(self.anomaly_score, 6)
        if self.ood_score is not None:
            out["ood_score"] = round(self.ood_score, 6)
        if self.reason is not None:
            out["reason"] = self.reason
        if self.boxes is not None:
            out["boxes"] = self.box_dicts()
        if logits:
            out["logits"] = [float(v) for v in self.logits]
        return out


def to_image(item: ImageInput, color: str | None = None) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a uint8 HxWxC array whose channel order is ``color``.

    A colour array must come with its order (``"RGB"`` or ``"BGR"``, as the camera gives it): guessing
    silently would swap red and blue. ``.npy`` files are raw arrays and follow the same rule.
    """
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            if path.suffix.lower() == ".npy":
                return _from_array(np.load(path, allow_pickle=False), color, str(path))
            return load_image(path)
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Exception as exc:  # noqa: BLE001 - whatever a decoder raises (DecompressionBombError is
            # not an OSError, a plugin may raise anything): it is this file's error, never the process's.
            raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(item, Image.Image):
        try:
            return to_rgb(item)
        except Exception as exc:  # noqa: BLE001 - an unconvertible mode is this image's error
            raise InputError(f"image: cannot convert mode {item.mode} ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None
    if isinstance(item, np.ndarray):
        return _from_array(item, color, "array")
    raise InputError(f"cannot classify a {type(item).__name__}: give a path, a PIL image or a uint8 array")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


def _name(item: ImageInput) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__


def _from_array(arr: np.ndarray, color: str | None, what: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise InputError(f"{what}: expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3:
        if color is None:
            raise InputError(f"{what}: a colour array needs its channel order: pass color='RGB' or 'BGR'")
        if color.upper() not in ("RGB", "BGR"):
            raise InputError(f"color must be RGB or BGR, got {color!r}")
    try:
        return from_array(arr, color or "RGB")
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def engine_cache_dir() -> Path:
    """Where TensorRT engines built from bundles are kept (``EDGE_TL_ENGINE_CACHE``, else ~/.cache)."""
    env = os.environ.get("EDGE_TL_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edge-tl" / "engines"


class Runtime:
    """A bundle opened for inference. Thread-safe: one object may serve many threads.

    ``Runtime(path)`` verifies every file's sha256 and the format version, opens the model on the
    bundle's backend and (unless ``check_golden=False``) classifies the golden images, refusing to go
    on if they do not reproduce the bundle's expected top-1 and logits within its stated tolerance.
    """

    def __init__(self, bundle: str | os.PathLike[str], *, device: str | None = None,
                 threads: int | None = None, verify: bool = True, check_golden: bool = True,
                 engine_cache: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(bundle)
        self.manifest = read_bundle(self.path, verify=verify)
        m = self.manifest
        self.classes: list[str] = list(m["classes"])
        self.task: str = m.get("task", "classification")
        self.preprocess = Preprocess.from_dict(m["preprocessing"])
        self.policy: Policy | BoxPolicy = (BoxPolicy.from_dict(m["policy"], self.classes) if self.task == "detect"
                                           else Policy.from_dict(m["policy"], self.classes))
        # Detection: the NMS parameters the run was evaluated with (``detect.ship.nms_args``).
        self.nms: dict[str, Any] = dict((m.get("detect") or {}).get("nms") or {})
        # ... applied by the graph itself (TensorRT bundles: ``detect.nms_graph``), or here.
        self.nms_inside: bool = bool((m.get("detect") or {}).get("nms_inside"))
        # The ood_score output (edge_tl/ood.py) is read only when the bundle's policy uses it.
        self.ood = self.task == "classification" and m.get("ood") is not None and self.policy.ood_limit is not None
        model = m["model"]
        self.backend: str = model["backend"]
        self.device: str = device or model["device"]
        self.precision: str = model["precision"]
        self.batch_size: int = int(model["batch_size"])
        reason = availability(self.backend, self.device)
        if reason is not None:
            raise EdgeTLError(f"cannot run {self.path} ({self.backend} on {self.device}) here: {reason}")
        model_path = self.path / model["file"]
        self.facts = facts(self.backend)
        if self.facts.engine_on_device:
            model_path = self._engine_source(model_path, Path(engine_cache) if engine_cache else engine_cache_dir())
        spec = RunnerSpec(model_path, self.backend, self.device, self.precision,
                          int(threads or model["threads"]), self.batch_size)
        try:
            self._runner = self._open(spec)
        except EdgeTLError:
            raise
        except Exception as exc:  # any backend failure to load is one readable line
            built = m.get("versions", {}).get(self.facts.dist, "?")
            here = _dist_version(self.facts.dist)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{self.backend} {here} cannot load {spec.model_path} (bundle built with "
                                f"{self.backend} {built}): {first}") from exc
        self._lock: threading.Lock | contextlib.nullcontext[None] = (
            # (an OpenVINO infer request or a TensorRT execution context serves one call at a time)
            contextlib.nullcontext() if self.facts.thread_safe else threading.Lock())
        self.golden_report: dict[str, Any] | None = None
        if check_golden:
            try:
                self.golden_report = self.check_golden()
            except BaseException:
                self.close()
                raise

    def _engine_source(self, onnx: Path, cache: Path) -> Path:
        """Where the TensorRT runner builds and finds the engine: a copy of the bundle's ONNX in the cache.

        The bundle may be mounted read-only and is hashed as shipped, so the engine (built on the
        first open, minutes on a Jetson) lives in ``cache/<onnx sha256>-<precision>-b<batch>/`` beside
        its own copy of the graph; the runner's sidecar ties it to this TensorRT version and GPU.
        """
        digest = self.manifest["files"][onnx.name]
        dest = cache / f"{digest[:16]}-{self.precision}-b{self.batch_size}" / onnx.name
        if not dest.is_file() or sha256_file(dest) != digest:
            try:
                with atomic_path(dest) as tmp:
                    shutil.copyfile(onnx, tmp)
            except OSError as exc:
                raise EdgeTLError(f"cannot write the TensorRT engine cache {cache} ({exc.strerror}); set "
                                  "EDGE_TL_ENGINE_CACHE to a writable folder") from None
        return dest

    def _open(self, spec: RunnerSpec) -> Any:
        if not self.facts.engine_on_device:
            return open_runner(spec)
        try:
            return open_runner(spec)
        except ArtifactError as exc:
            # A cached engine from another TensorRT or GPU (JetPack upgrade, moved SD card): the cache
            # is ours to refresh, so build again rather than stop the line.
            log.warning("rebuilding the cached TensorRT engine for %s: %s", self.path, exc)
            return open_runner(replace(spec, options={"rebuild": True}))

    # -- inference -------------------------------------------------------------------------------

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an NCHW batch, in chunks of the bundle's batch size."""
        if self.task == "detect":
            raise EdgeTLError(f"{self.path} is a detection bundle: it answers with boxes (predict), not logits")
        return self._infer_all(batch)[0]

    def detect(self, inputs: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detections of inputs made by ``prepare`` after the bundle's NMS, in each original image's pixels
        (``sizes``: (width, height) of each image, as ``prepare_sized`` gives them); boxes (M, 4) x1 y1 x2 y2,
        highest score first. EdgeTLError for a classifier bundle."""
        if self.task != "detect":
            raise EdgeTLError(f"{self.path} is a {self.task} bundle: it has no boxes")
        if self._runner is None:
            raise EdgeTLError(f"the runtime for {self.path} is closed")
        if len(sizes) != len(inputs):
            raise EdgeTLError(f"{len(inputs)} inputs but {len(sizes)} image sizes: each image's size maps its "
                              "boxes back to its pixels")
        out: list[Detections] = []
        for i in range(0, len(inputs), self.batch_size):
            with self._lock:
                outputs = self._runner.run_outputs(inputs[i:i + self.batch_size])
            for d, size in zip(graph_detections(outputs, self.nms_inside, **self.nms), sizes[i:i + self.batch_size],
                               strict=True):
                d.boxes = to_image_pixels(d.boxes, (int(size[0]), int(size[1])), self.preprocess.crop,
                                          self.preprocess.resize_mode)
                out.append(d)
        return out

    def _infer_all(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits (N, classes), ood_score (N,) or None when the bundle does not use it) for an NCHW batch."""
        if self._runner is None:
            raise EdgeTLError(f"the runtime for {self.path} is closed")
        outs, oods = [], []
        for i in range(0, len(batch), self.batch_size):
            chunk = batch[i:i + self.batch_size]
            with self._lock:
                if self.ood:
                    logits, ood = self._runner.run_outputs(chunk)[:2]
                    oods.append(np.asarray(ood, dtype=np.float32).reshape(-1))
                else:
                    logits = self._runner.run(chunk)
            outs.append(np.asarray(logits, dtype=np.float32))
        if not outs:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0, np.float32) if self.ood else None
        return np.concatenate(outs), np.concatenate(oods) if self.ood else None

    def prepare(self, image: ImageInput, *, color: str | None = None) -> np.ndarray:
        """The model input (CHW float32) of one image; InputError for anything wrong with this image.

        Decoding and preprocessing are per image, so one bad file is that file's error: whatever the
        decoder or the resize raises (memory included) is an InputError naming it.
        """
        return self.prepare_sized(image, color=color)[0]

    def prepare_sized(self, image: ImageInput, *, color: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """(model input (CHW float32), the decoded image's (width, height)) of one image: the size maps a
        detection bundle's boxes back to the image (``predict_inputs(..., sizes=)``). Errors as ``prepare``."""
        img = to_image(image, color)
        try:
            return self.preprocess(img), img.size
        except Exception as exc:  # noqa: BLE001 - see prepare
            raise InputError(f"{_name(image)}: cannot preprocess image ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None

    def logits(self, images: Sequence[ImageInput], *, color: str | None = None) -> np.ndarray:
        """(N, classes) float32 logits of ``images``."""
        return self._infer(self._inputs(images, color))

    def _inputs(self, images: Sequence[ImageInput], color: str | None) -> np.ndarray:
        return self._sized_inputs(images, color)[0]

    def _sized_inputs(self, images: Sequence[ImageInput], color: str | None,
                      ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        if not len(images):
            return np.zeros((0, 3, self.preprocess.crop, self.preprocess.crop), np.float32), []
        pairs = [self.prepare_sized(x, color=color) for x in images]
        return np.stack([x for x, _ in pairs]), [size for _, size in pairs]

    def predict(self, image: ImageInput, *, color: str | None = None) -> Prediction:
        """Classify one image (path, PIL image, or uint8 HxWxC array with ``color`` "RGB"/"BGR")."""
        return self.predict_batch([image], color=color)[0]

    def predict_batch(self, images: Sequence[ImageInput], *, color: str | None = None) -> list[Prediction]:
        """Classify several images at once; same answers as one by one (within float rounding)."""
        if not len(images):
            return []
        start = time.perf_counter()
        x, sizes = self._sized_inputs(images, color)
        paths = [str(item) if isinstance(item, (str, os.PathLike)) else None for item in images]
        return self.predict_inputs(x, paths, started=start, sizes=sizes)

    def predict_inputs(self, inputs: np.ndarray, paths: Sequence[str | None], *,
                       started: float | None = None,
                       sizes: Sequence[tuple[int, int]] | None = None) -> list[Prediction]:
        """Classify inputs made by ``prepare`` (one row per image; ``paths`` name them, or None).

        ``batch_ms`` is the time since ``started`` (default: inference only) and ``ms`` each image's
        share of it (``batch_ms / len(inputs)``). ``sizes``: each image's (width, height) from
        ``prepare_sized``; a detection bundle needs them (its boxes are given in the image's pixels,
        EdgeTLError without them), a classifier ignores them.
        """
        start = time.perf_counter() if started is None else started
        if self.task == "detect":
            if sizes is None:
                raise EdgeTLError("a detection bundle needs each image's size to give its boxes in the image's "
                                  "pixels: pass sizes= (Runtime.prepare_sized gives them)")
            return self._predict_boxes(inputs, paths, start, sizes)
        logits, ood = self._infer_all(inputs)
        batch_ms = (time.perf_counter() - start) * 1000.0
        n = max(1, len(inputs))
        out = []
        anomaly = self.task == "anomaly"
        decided = self.policy.decide_logits(logits, ood)
        for i, (path, row, (k, score, decision)) in enumerate(zip(paths, logits, decided, strict=True)):
            s = float(row[1] - row[0] + 1.0) if anomaly else None  # logits [0, s - 1]: see anomaly.model
            o = None if ood is None else float(ood[i])
            out.append(Prediction(self.classes[k], k, score, decision, batch_ms / n, row, path, n, batch_ms, s,
                                  o, self.policy.reason(decision, o)))
        return out

    def _predict_boxes(self, inputs: np.ndarray, paths: Sequence[str | None], start: float,
                       sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
        dets = self.detect(inputs, sizes)
        batch_ms = (time.perf_counter() - start) * 1000.0
        n = max(1, len(inputs))
        out = []
        policy = self.policy
        assert isinstance(policy, BoxPolicy)
        for path, d in zip(paths, dets, strict=True):
            decision, k, score, reason = policy.decide(d.labels, d.scores)
            out.append(Prediction("ok" if k < 0 else self.classes[k], k, score, decision, batch_ms / n,
                                  np.zeros(0, np.float32), path, n, batch_ms, reason=reason,
                                  boxes=box_dicts(d, self.classes)))
        return out

    def anomaly_maps(self, inputs: np.ndarray) -> np.ndarray:
        """(N, h, w) normalised anomaly maps (1.0 = the threshold) of inputs made by ``prepare``.

        Raises EdgeTLError for a classifier bundle or a backend whose runner returns one output only.
        """
        if self.task != "anomaly":
            raise EdgeTLError(f"{self.path} is a classifier bundle: it has no anomaly map")
        run_outputs = getattr(self._runner, "run_outputs", None)
        if run_outputs is None:
            raise EdgeTLError(f"the {self.backend} runner returns no anomaly map")
        maps = []
        for i in range(0, len(inputs), self.batch_size):
            with self._lock:
                maps.append(run_outputs(inputs[i:i + self.batch_size])[1][:, 0])
        return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)

    def probabilities(self, images: Sequence[ImageInput], *, color: str | None = None) -> np.ndarray:
        """(N, classes) softmax probabilities."""
        return softmax(self.logits(images, color=color)).astype(np.float32)

    # -- checks ------------------------------------------------------------------------------------

    def check_golden(self) -> dict[str, Any]:
        """Classify the golden images; raise ArtifactError unless top-1 and logits match the bundle (a
        detection bundle: its boxes, ``runtime.boxes.golden_box_problem``)."""
        golden = self.manifest["golden"]
        tol = golden["tolerance"]
        items = golden["images"]
        if self.task == "detect":
            return self._check_golden_boxes(items, tol)
        if not items:
            return {"n": 0, "passed": True, "max_abs_logit_diff": 0.0, "tolerance": tol}
        got = self._infer(self.preprocess.batch([load_image(self.path / it["file"]) for it in items]))
        expected = np.asarray([it["logits"] for it in items], dtype=np.float64)
        diff = np.abs(got.astype(np.float64) - expected)
        bound = tol["atol"] + tol["rtol"] * np.abs(expected)
        for it, g, d, b in zip(items, got, diff, bound, strict=True):
            top1 = self.classes[int(np.argmax(g))]
            problem = None
            if top1 != it["top1"]:
                problem = f"top-1 {top1!r}, expected {it['top1']!r}"
            elif (d > b).any():
                problem = (f"max |Δlogit| {d.max():.3g} exceeds the stated tolerance "
                           f"(atol {tol['atol']}, rtol {tol['rtol']})")
            if problem:
                self._golden_failed(it, problem)
        return {"n": len(items), "passed": True, "max_abs_logit_diff": float(diff.max()), "tolerance": tol}

    def _golden_failed(self, item: dict[str, Any], problem: str) -> None:
        built = self.manifest.get("versions", {})
        raise ArtifactError(
            f"golden image {self.path / item['file']}: {problem}; this runtime does not reproduce the "
            f"bundle ({self.backend} {_dist_version(self.facts.dist)} and Pillow "
            f"{_dist_version('pillow')} here; built with {built.get(self.backend, '?')} and Pillow "
            f"{built.get('pillow', '?')}); refusing to classify")

    def _check_golden_boxes(self, items: list[dict[str, Any]], tol: dict[str, float]) -> dict[str, Any]:
        """The detection bundle's golden images: the same boxes (class, IoU, score) and decision."""
        images = [load_image(self.path / it["file"]) for it in items]
        dets = self.detect(self.preprocess.batch(images), [im.size for im in images])
        policy = self.policy
        assert isinstance(policy, BoxPolicy)
        boxes = 0
        for it, d in zip(items, dets, strict=True):
            got = box_dicts(d, self.classes)
            problem = golden_box_problem(it["boxes"], got, tol, self.nms)
            decision = policy.decide(d.labels, d.scores)[0]
            # A decision whose deciding score is within the tolerance of its threshold may go either way.
            top, limit = policy.defect_score(d.labels, d.scores), policy.threshold
            edge = limit is not None and abs(top - limit) <= tol["atol"] + tol["rtol"] * abs(limit)
            if problem is None and decision != it["decision"] and not edge:
                problem = f"decision {decision!r}, expected {it['decision']!r}"
            if problem:
                self._golden_failed(it, problem)
            boxes += len(got)
        return {"n": len(items), "passed": True, "boxes": boxes, "tolerance": tol}

    def info(self) -> dict[str, Any]:
        """A short description of the opened bundle."""
        m = self.manifest
        return {"bundle": str(self.path), "name": m.get("name"), "backend": self.backend,
                "device": self.device, "precision": self.precision, "classes": self.classes,
                "policy": self.policy.to_dict(),
                "golden": self.golden_report}

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the model."""
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None:
            runner.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: str | os.PathLike[str], **kwargs: Any) -> Runtime:
    """Open a bundle for inference (see ``Runtime``)."""
    return Runtime(path, **kwargs)


def _dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
