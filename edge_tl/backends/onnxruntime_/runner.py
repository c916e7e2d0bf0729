"""ONNX Runtime runner: CPU, CUDA or TensorRT execution provider, chosen by the device string."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import require
from ..base import RunnerSpec

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

    def run_outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in its order (an anomaly graph: logits, anomaly_map)."""
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def close(self) -> None:
        self.session = None


def open(spec: RunnerSpec) -> OnnxRuntimeRunner:  # noqa: A001 - the backend table's entry point
    return OnnxRuntimeRunner(spec)


# ONNX Runtime kernels that compute in 8-bit integers (the QDQ graph's fused ops, or a QOperator graph).
_INT8_OPS = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def op_precision(op: str) -> str:
    """What an ONNX Runtime kernel computes in, from its op type."""
    if op.startswith(_INT8_OPS) or op.endswith("Integer"):
        return "int8"
    if op in _QDQ_OPS:
        return "int8<->fp32 conversion"
    return "fp32"


def profile_layers(spec: RunnerSpec, batch: np.ndarray, calls: int = 50) -> dict[str, object]:
    """Per-node kernel times from ONNX Runtime's profiler (``enable_profiling``), after 5 warm-up calls."""
    import json
    import os
    import tempfile
    from collections import defaultdict

    ort = require("onnxruntime", "runtime")
    x = np.ascontiguousarray(batch, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = spec.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(spec.model_path), opts, providers=_PROVIDERS[spec.device.split(":")[0]])
        name = session.get_inputs()[0].name
        for _ in range(5):
            session.run(None, {name: x})
        for _ in range(calls):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_call: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        per_call[node].append(ev.get("dur", 0) / 1000.0)
        ops[node] = (ev.get("args") or {}).get("op_name", "?")
    runs = calls + 5  # the profiler records every call since the session opened
    layers = [{"name": n, "type": ops[n], "kernel": ops[n], "precision": op_precision(ops[n]),
               "ms": sum(v) / max(1, min(len(v), runs))} for n, v in per_call.items()]
    return {"tool": f"ONNX Runtime {ort.__version__} profiler (kernel time per node, mean over {runs} calls)",
            "calls": runs, "layers": layers}
