"""What a backend's INT8 quantiser provides (``Quantizer``), what it is handed (``FallbackRules``), and the
few helpers every quantiser shares.

A quantiser is a module in its backend's folder, named by the table's ``quantiser``:
``onnxruntime_.quantize`` (a QDQ graph, which ONNX Runtime and TensorRT both execute) or
``openvino_.quantize`` (NNCF's OpenVINO model). Each has the shape of ``Quantizer`` below;
``stages.quantize`` (``quantize_for_target``, ``qat_``, the shared ``fallback``) reaches a quantiser
through that shape only, so a new backend or graph (the anomaly graph's float distance part,
``fixed_float``) plugs in without special cases there.

The accuracy gates and the fallback search belong to the export stage (``stages/quantize/fallback.py``:
the selection set, the verdicts, the report), which this device-side part must not import. The stage
hands them to ``Quantizer.quantize`` as ``rules`` (``FallbackRules``, which that module satisfies), so a
quantiser can interleave its own steps (re-quantising, bypassing quantisers) with the shared search.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .table import facts

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from ..calibration import CalibrationSet
    from ..preprocess import Preprocess
    from ..targets import Gates, Target

log = logging.getLogger("edge_tl")

EVAL_BATCH = 32


class Judge(Protocol):
    """Where the fallback chooses float layers (``stages.quantize.fallback.Judge``, structurally)."""

    def on_selection(self, int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """Gate values of ``int8_logits`` on the selection set."""
        ...


class FallbackRules(Protocol):
    """The accuracy fallback a quantiser is handed (``edge_tl.stages.quantize.fallback``, structurally)."""

    SENSITIVITY_IMAGES: int  # calibration images the per-layer sensitivity is measured on

    def fallback_start(self, target: Target, judge: Judge, float_values: dict[str, Any] | None, where: str,
                       int8_logits: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """The fallback record of the all-INT8 model on the selection set, with its ``status``."""
        ...

    def held_out(self, target: Target, fallback: dict[str, Any], judge: Judge, where: str,
                 int8_logits: Callable[[np.ndarray], np.ndarray]) -> None:
        """The verdict of the model that ships, on the validation set nothing was chosen on."""
        ...

    def search_fewest(self, n: int, trial: Callable[[int], dict[str, Any]], failing: int = 0) -> int | None:
        """The smallest k whose ``trial(k)`` passes (more float layers never hurt)."""
        ...

    def bypass_fewest(self, backend: Quantizer, target: Target, fallback: dict[str, Any], qmodel: Any,
                      float_model: Any, cset: CalibrationSet, judge: Judge, threads: int,
                      ) -> tuple[Any | None, dict[str, Any] | None, list[dict[str, Any]]]:
        """The fewest activation quantisers of ``qmodel`` bypassed (``backend.without``) that pass."""
        ...

    def gate_margin(self, values: dict[str, Any], gates: Gates) -> float:
        """How far inside both gates a result is (>= 0: it passes)."""
        ...

    def short(self, values: dict[str, Any]) -> dict[str, Any]:
        """The gate values the manifest keeps."""
        ...

    def trial_record(self, values: dict[str, Any], **which: Any) -> dict[str, Any]:
        """One fallback trial as the manifest lists it."""
        ...

    def float_reason(self, fallback: dict[str, Any], index: int, total: int) -> str:
        """Why the ``index``-th most sensitive layer stayed float."""
        ...


class Quantizer(Protocol):
    """The entry points of a quantiser module (a module satisfies this protocol structurally)."""

    WHERE: str  # where the gates' logits are computed, as the manifest says it ("ONNX Runtime CPU")
    QUANTIZER_OP: str  # the op an activation quantiser is in this backend's model (manifest float_layers)
    MODEL: str  # what messages call the quantised model ("graph", "model")

    def settings(self, target: Target) -> dict[str, Any]:
        """The quantisation settings for ``target``, checked before any calibration work: raises
        ConfigError for a form the runtime does not accept."""
        ...

    def quantize(self, target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path,
                 cset: CalibrationSet, judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess,
                 rules: FallbackRules) -> tuple[list[str], dict[str, Any]]:
        """Post-training INT8 of ``float_onnx`` into ``out_dir`` with the accuracy fallback (``rules``);
        returns the files written and the manifest fields ``quantizer``, ``float_layers`` and ``fallback``."""
        ...

    def from_qdq(self, qdq: bytes, target: Target, out_dir: Path) -> tuple[list[str], Any]:
        """Write a QDQ ONNX graph (quantisation-aware training's) into ``out_dir`` in this backend's form;
        returns the files written and the model ``logits`` runs."""
        ...

    def logits(self, model: Any, inputs: np.ndarray, threads: int = 2, batch: int = EVAL_BATCH) -> np.ndarray:
        """Logits of ``model`` on ``inputs``, run as the bench runs it."""
        ...

    def without(self, qmodel: Any, names: list[str] | tuple[str, ...]) -> Any:
        """A copy of ``qmodel`` with the activation quantisers ``names`` bypassed."""
        ...

    def sensitivity(self, qmodel: Any, float_model: Any, inputs: np.ndarray, threads: int = 2,
                    ) -> tuple[float, list[dict[str, Any]]]:
        """The all-INT8 relative logit error, and each activation quantiser bypassed alone, most sensitive
        first (rows: ``name``, ``consumers``, ``sensitivity``, ``error_if_float``)."""
        ...

    def fixed_float(self, model: Any) -> list[str]:
        """Names of the ops of the float ``model`` that stay float whatever the gates say."""
        ...


def quantizer_for(backend: str) -> Quantizer | None:
    """The quantiser module of ``backend`` (the table's ``quantiser``), None for a backend without INT8."""
    name = facts(backend).quantiser
    module: ModuleType | None = importlib.import_module(name) if name is not None else None
    return module  # type: ignore[return-value]  # a module satisfies Quantizer structurally


@contextlib.contextmanager
def quiet_library_logging() -> Iterator[None]:
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


LOGITS = "logits"  # the classifier's output that ``logit_offset`` corrects (the graph's first output)
OFFSET_NODE = "edge_tl_logit_offset"  # the float Add that subtracts the offset, in either backend's graph


def logit_offset(int8_logits: np.ndarray, float_logits: np.ndarray,
                 classes: list[str | None] | None = None) -> np.ndarray:
    """The INT8 graph's systematic logit error: the mean of ``int8_logits - float_logits`` (N, K) over the
    calibration images, class-balanced when each image's class is known (``classes``: one per row, None
    for an unlabelled folder: a plain mean), and centred over the K outputs (a shift shared by every logit
    changes no answer). Shape (K,), float32; subtracting it from the INT8 logits is an empirical bias
    correction of the output.

    Why: NNCF's bias correction fixes each layer's mean error on its own, but what is left adds up
    through the network into a per-class offset of the logits, the same on calibration, validation and
    held-out images (elpv partial-1 with class weights, ONNX Runtime: 0.12, 0.10, 0.10 logits towards
    "ok"; NEU: up to 0.12 per class). A constant offset is not noise: near the boundary it flips answers
    one way only (42 of 656 held-out elpv answers, all defect -> ok, defect recall 0.78 -> 0.68) and it
    inflates the answer noise the agreement gate splits at."""
    d = int8_logits.astype(np.float64) - float_logits.astype(np.float64)
    labels = [c for c in classes if c is not None] if classes is not None else []
    if classes is not None and len(labels) == len(d):
        groups = sorted(set(labels))
        rows = np.asarray(labels, dtype=object)
        mean = np.mean([d[rows == c].mean(0) for c in groups], axis=0)
    else:
        mean = d.mean(0)
    return (mean - mean.mean()).astype(np.float32)


def correct_logit_offset(target: Target, qmodel: Any, outputs: set[str], cset: CalibrationSet,
                         int8_logits: Callable[[Any, np.ndarray], np.ndarray], float_logits: np.ndarray,
                         shift: Callable[[Any, np.ndarray], Any]) -> tuple[Any, dict[str, Any] | None]:
    """``qmodel`` with its systematic logit error (``logit_offset`` on the calibration images) subtracted
    in float at the output (``shift(qmodel, offset)``: the backend's graph edit, an Add named
    ``OFFSET_NODE``), and the manifest's record of it; ``(qmodel, None)`` when the profile turns it off
    (``quantizer.correct_logit_offset``) or the graph is not a classifier's (an anomaly graph's logits
    are a thresholded score with float distance parts: ``fixed_float``).

    ``int8_logits(model, inputs)`` runs a quantised model as the gates run it; ``float_logits`` are the
    float graph's logits on ``cset.inputs``. Measured before the accuracy fallback, so the fallback
    chooses on, and validation judges, the corrected graph."""
    from ..fixed_float import ANOMALY_OUTPUT

    if not target.quantizer.correct_logit_offset or LOGITS not in outputs or ANOMALY_OUTPUT in outputs:
        return qmodel, None
    k = float_logits.shape[1]
    got = int8_logits(qmodel, cset.inputs)[:, :k]
    offset = logit_offset(got, float_logits[:, :k], [im.get("class") for im in cset.images])
    before = rel_error(got, float_logits)
    corrected = shift(qmodel, offset)
    after = rel_error(int8_logits(corrected, cset.inputs)[:, :k], float_logits)
    balanced = cset.classes is not None and all(im.get("class") is not None for im in cset.images)
    record = {"offset": [float(v) for v in offset], "max_abs": float(np.abs(offset).max()),
              "node": OFFSET_NODE, "measured_on": f"{len(cset.images)} calibration images ({cset.source}), "
              + ("class-balanced mean" if balanced else "mean") + " of INT8 - float logits, centred",
              "int8_logit_error": {"before": before, "after": after},
              "why": "the INT8 graph's mean logit error on the calibration images, subtracted in float at the "
              "output (empirical bias correction): a constant offset flips near-boundary answers one way only"}
    log.info("%s: INT8 logit offset corrected (max %.3f; relative logit error %.4f -> %.4f on calibration)",
             target.name, record["max_abs"], before, after)
    return corrected, record


def rel_error(approx: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared logit error relative to the logits' mean square (scale-free)."""
    a, r = approx.astype(np.float64), ref.astype(np.float64)
    return float(np.mean((a - r) ** 2) / max(float(np.mean(r ** 2)), 1e-12))


