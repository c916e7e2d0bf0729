"""The backend table: everything the rest of the product needs to know about a backend, in one entry.

Targets, export, convert, quantise, bench, bundle, select and the runtime read these facts instead of
comparing a backend's name (``tests/test_backend_table.py`` fails on such a comparison outside
``edge_tl/backends/``). Adding a backend: its runner module here (``open(spec)``,
``availability(device)``; optionally ``open_streams``, ``profile_layers``, ``after_export``), one
``BackendFacts`` entry below, a pip extra in ``pyproject.toml``, and its quantiser module where it
quantises a model of its own (``stages/quantize/``). This module imports nothing heavy: the torch-free
runtime reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

GraphFormat = Literal["torch", "onnx", "openvino-ir"]


@dataclass(frozen=True)
class BackendFacts:
    """One backend's facts.

    ``runner``: the module that opens its models. ``model_file``: the file in ``targets/<name>/`` the
    runner opens; ``graph``: what ``convert`` writes there from the exported ONNX (``onnx``: the graph
    as is, ``openvino-ir``: OpenVINO IR). ``dist`` / ``extra``: the pip distribution whose version a
    bundle records and the edge-tl extra that installs it. ``thread_safe``: one loaded model may serve
    several threads at once (else the runtime takes a lock per call). ``quantiser``: the module under
    ``edge_tl.stages.quantize`` that makes its INT8 model; ``onnx_qdq``: it runs an ONNX QDQ graph
    (``quantizer.method = "onnx_qdq"``); ``explicit_qdq``: its builder reads every QDQ pair as an order
    (TensorRT's explicit quantisation: symmetric INT8, per-channel weights, float bias, opset >= 13, and
    no float fallback by removing pairs). ``engine_on_device``: the device builds an engine from
    ``model_file`` on first open (nothing to time or check on the export host's own CPU); ``stand_in``:
    the (backend, device) that checks its graph and computes a bundle's golden answers where it cannot
    run here. ``float_baseline``: the precision of the float graph bench times an INT8 model against.
    ``reference_device``: where bench runs the torch reference (None: the target's device family).
    ``calibrates_with_target_threads``: the quantiser's calibration runs on this very backend, so the
    profile's ``threads`` apply (else a few host cores).
    """

    name: str
    runner: str
    model_file: str
    graph: GraphFormat
    dist: str | None
    extra: str | None
    thread_safe: bool = False
    quantiser: str | None = None
    onnx_qdq: bool = False
    explicit_qdq: bool = False
    engine_on_device: bool = False
    stand_in: tuple[str, str] | None = None
    float_baseline: str = "fp32"
    reference_device: str | None = None
    calibrates_with_target_threads: bool = False


BACKENDS: dict[str, BackendFacts] = {b.name: b for b in (
    BackendFacts("torch", "edge_tl.backends.torch_", "model.pt", "torch", "torch", "train"),
    BackendFacts("onnxruntime", "edge_tl.backends.onnxruntime_", "model.onnx", "onnx", "onnxruntime", None,
                 thread_safe=True, quantiser="onnxruntime_", onnx_qdq=True, calibrates_with_target_threads=True),
    BackendFacts("openvino", "edge_tl.backends.openvino_", "model.xml", "openvino-ir", "openvino", "openvino",
                 quantiser="openvino_"),
    BackendFacts("tensorrt", "edge_tl.backends.tensorrt_", "model.onnx", "onnx", "tensorrt", "tensorrt",
                 quantiser="onnxruntime_", onnx_qdq=True, explicit_qdq=True, engine_on_device=True,
                 stand_in=("onnxruntime", "cpu"), float_baseline="fp16", reference_device="cuda"),
)}


def facts(backend: str) -> BackendFacts:
    """The table's entry for ``backend``; ConfigError naming the known ones for any other name."""
    try:
        return BACKENDS[backend]
    except KeyError:
        raise ConfigError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "BackendFacts", "GraphFormat", "facts"]
