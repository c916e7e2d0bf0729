"""OpenVINO runner for an IR (.xml + .bin) or ONNX file, on CPU, GPU or NPU.

On CPUs with BF16 (AVX-512 BF16, AMX) OpenVINO runs "fp32" models in bf16 unless told otherwise, so
the precision hint is always set: an fp32 target really runs in fp32, and an INT8 graph's float parts
run in fp32 too, so the answers are the same on every x86 CPU, with or without BF16, and the
accuracy measured at export is the accuracy on the device. On the Zen 4 dev machine OpenVINO 2026.4
reported f32 as its own default for the INT8 graph, and interleaved timing showed no difference
(mobilenet_v2 INT8 p50 3.76 vs 3.65 ms); the hint matters on CPUs where OpenVINO would pick bf16.
The runner reports what ran (``precision``, ``float_precision``).
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from .base import RunnerSpec

_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def availability(device: str) -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install 'edge-tl[openvino]')"
    devices = ov.Core().available_devices
    if not any(d.split(".")[0] == device.upper().split(".")[0] for d in devices):
        return f"OpenVINO device {device} not present (have: {', '.join(devices)})"
    return None


def cpu_config(threads: int, precision: str) -> dict[str, object]:
    """The compile settings every OpenVINO CPU measurement uses (runner, export validation)."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _HINT.get(precision, "f32")}


class OpenVINORunner:
    backend = "openvino"

    def __init__(self, spec: RunnerSpec) -> None:
        ov = require("openvino", "openvino")
        core = ov.Core()
        device = spec.device.upper()
        model = core.read_model(str(spec.model_path))
        config = cpu_config(spec.threads, spec.precision) if device == "CPU" else {}
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.precision = spec.precision
        try:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision_hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        except Exception:  # noqa: BLE001 - not every device reports it
            self.precision_hint = "unknown"
        self.float_precision = self.precision_hint
        if spec.precision == "fp32" and self.precision_hint in ("bf16", "f16"):
            # Report what really runs: a device that ignored the f32 hint is not an fp32 target.
            self.precision = {"bf16": "bf16", "f16": "fp16"}[self.precision_hint]

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def open(spec: RunnerSpec) -> OpenVINORunner:  # noqa: A001 - the backend table's entry point
    return OpenVINORunner(spec)
