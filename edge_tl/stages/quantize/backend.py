"""What every backend module of the package provides, and the few helpers they share.

A backend is the form the INT8 model takes: ``onnxruntime_`` (a QDQ graph, which ONNX Runtime and
TensorRT both execute) or ``openvino_`` (NNCF's OpenVINO model). Each is a module of the same shape,
``Backend`` below; ``quantize_for_target``, ``qat_`` and the shared fallback (``fallback``) reach a
backend through that shape only, so a new backend or graph (the anomaly graph's float distance part,
``fixed_float``) plugs in without special cases there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ...calibration import CalibrationSet
    from ...preprocess import Preprocess
    from ...targets import Target
    from .fallback import Judge

EVAL_BATCH = 32


class Backend(Protocol):
    """The entry points of a backend module (a module satisfies this protocol structurally)."""

    WHERE: str  # where the gates' logits are computed, as the manifest says it ("ONNX Runtime CPU")
    QUANTIZER_OP: str  # the op an activation quantiser is in this backend's model (manifest float_layers)
    MODEL: str  # what messages call the quantised model ("graph", "model")

    def settings(self, target: Target) -> dict[str, Any]:
        """The quantisation settings for ``target``, checked before any calibration work: raises
        ConfigError for a form the runtime does not accept."""
        ...

    def quantize(self, target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path,
                 cset: CalibrationSet, judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess,
                 ) -> tuple[list[str], dict[str, Any]]:
        """Post-training INT8 of ``float_onnx`` into ``out_dir`` with the accuracy fallback; returns the
        files written and the manifest fields ``quantizer``, ``float_layers`` and ``fallback``."""
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


