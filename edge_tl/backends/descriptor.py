"""What a backend declares about itself: ``BackendFacts``, one per backend folder (``<name>_/__init__.py``).

``table.py`` collects them. This module imports nothing: every descriptor, and through them the
torch-free runtime, reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GraphFormat = Literal["torch", "onnx", "openvino-ir"]


@dataclass(frozen=True)
class BackendFacts:
    """One backend's facts.

    ``runner``: the module that opens its models (``open(spec)``, ``availability(device)``; optionally
    ``open_streams``, ``profile_layers``, ``after_export``). ``model_file``: the file in
    ``targets/<name>/`` the runner opens; ``graph``: what ``convert`` writes there from the exported ONNX
    (``onnx``: the graph as is, ``openvino-ir``: OpenVINO IR). ``converter``: the module whose
    ``convert(target, onnx_path, out_dir)`` writes ``model_file`` from the exported ONNX (None: the ONNX
    graph is the model file). ``dist`` / ``extra``: the pip distribution whose version a bundle records
    and the edge-tl extra that installs it. ``thread_safe``: one loaded model may serve several threads at
    once (else the runtime takes a lock per call). ``quantiser``: the module that makes its INT8 model
    (``edge_tl.backends.int8.Quantizer``; None: no INT8); ``onnx_qdq``: it runs an ONNX QDQ graph
    (``quantizer.method = "onnx_qdq"``); ``explicit_qdq``: its builder reads every QDQ pair as an order
    (TensorRT's explicit quantisation: symmetric INT8, per-channel weights, float bias, opset >= 13, and
    no float fallback by removing pairs). ``engine_on_device``: the device builds an engine from
    ``model_file`` on first open (nothing to time or check on the export host's own CPU); ``stand_in``:
    the (backend, device) that checks its graph and computes a bundle's golden answers where it cannot
    run here. ``float_baseline``: the precision of the float graph bench times an INT8 model against.
    ``reference_device``: where bench runs the torch reference (None: the target's device family).
    ``calibrates_with_target_threads``: the quantiser's calibration runs on this very backend, so the
    profile's ``threads`` apply (else a few host cores). ``detect_export``: a detection run's box graph
    (``detect.ship``) is exported and checked for it. ``nms_in_graph``: that graph ends with NMS
    (``detect.nms_graph``: ONNX NonMaxSuppression, padded ``runtime.nms.NMS_OUTPUTS``) instead of handing
    boxes and scores to the runtime's numpy NMS.
    """

    name: str
    runner: str
    model_file: str
    graph: GraphFormat
    dist: str | None
    extra: str | None
    converter: str | None = None
    thread_safe: bool = False
    quantiser: str | None = None
    onnx_qdq: bool = False
    explicit_qdq: bool = False
    engine_on_device: bool = False
    stand_in: tuple[str, str] | None = None
    float_baseline: str = "fp32"
    reference_device: str | None = None
    calibrates_with_target_threads: bool = False
    detect_export: bool = False
    nms_in_graph: bool = False


__all__ = ["BackendFacts", "GraphFormat"]
