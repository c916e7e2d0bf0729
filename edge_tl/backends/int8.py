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


def rel_error(approx: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared logit error relative to the logits' mean square (scale-free)."""
    a, r = approx.astype(np.float64), ref.astype(np.float64)
    return float(np.mean((a - r) ** 2) / max(float(np.mean(r ** 2)), 1e-12))


