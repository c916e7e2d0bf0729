"""The Runner protocol and the backend table."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """A loaded model on one backend."""

    backend: str
    precision: str  # what actually runs (e.g. "fp32", "int8", "bf16")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 in, (N, classes) float32 logits out, in host memory."""
        ...

    def close(self) -> None:
        """Release the model and any device buffers."""
        ...


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner needs to open a model file."""

    model_path: Path
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 2
    max_batch: int = 8
    options: dict[str, Any] | None = None


# backend name -> module implementing `open(spec) -> Runner` and `availability(device) -> str | None`
_BACKENDS = {
    "torch": "edge_tl.backends.torch_",
    "onnxruntime": "edge_tl.backends.onnxruntime_",
    "openvino": "edge_tl.backends.openvino_",
    "tensorrt": "edge_tl.backends.tensorrt_",
}


def _module(backend: str) -> Any:
    try:
        return importlib.import_module(_BACKENDS[backend])
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}") from None


def open_runner(spec: RunnerSpec) -> Runner:
    """Open ``spec.model_path`` on its backend."""
    return _module(spec.backend).open(spec)


def availability(backend: str, device: str) -> str | None:
    """None when this host can run ``backend`` on ``device``; otherwise the reason it cannot."""
    return _module(backend).availability(device)
