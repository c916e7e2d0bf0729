"""TensorRT backend (placeholder until the TensorRT issue lands: reports itself unavailable)."""

from __future__ import annotations

from .base import RunnerSpec


def availability(device: str) -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (JetPack's system package, or pip install 'edge-tl[tensorrt]')"
    return "the TensorRT runner is not implemented yet"


def open(spec: RunnerSpec):  # noqa: A001
    raise NotImplementedError(availability(spec.device))
