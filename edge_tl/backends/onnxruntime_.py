"""ONNX Runtime runner: CPU, CUDA or TensorRT execution provider, chosen by the device string."""

from __future__ import annotations

import numpy as np

from ..errors import require
from .base import RunnerSpec

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def availability(device: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install 'edge-tl[runtime]')"
    wanted = _PROVIDERS.get(device.split(":")[0])
    if wanted is None:
        return f"unknown onnxruntime device {device!r} (cpu, cuda, tensorrt)"
    if wanted[0] not in ort.get_available_providers():
        return f"{wanted[0]} is not available in this onnxruntime build"
    return None


class OnnxRuntimeRunner:
    backend = "onnxruntime"

    def __init__(self, spec: RunnerSpec) -> None:
        ort = require("onnxruntime", "runtime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = spec.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        providers = _PROVIDERS[spec.device.split(":")[0]]
        self.session = ort.InferenceSession(str(spec.model_path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = spec.precision

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None


def open(spec: RunnerSpec) -> OnnxRuntimeRunner:  # noqa: A001 - the backend table's entry point
    return OnnxRuntimeRunner(spec)
