"""The TensorRT backend: the workstation ships an ONNX graph, the device builds its engine and runs it.

One idea per file: ``host`` (what an engine is tied to: TensorRT version, GPU; availability),
``cuda_buffers`` (cuda-python buffers and stream), ``sidecar`` (which host and model an engine was built
for), ``build`` (the engine build, and export's hook), ``runner`` (the runner and ``open``), ``ready``
(the structural checks of the graph it consumes, run on the workstation). Its INT8 graph is the ONNX
backend's QDQ quantiser in TensorRT's explicit-quantisation form (``explicit_qdq``).
"""

from __future__ import annotations

from ..descriptor import BackendFacts

FACTS = BackendFacts("tensorrt", f"{__name__}.runner", "model.onnx", "onnx", "tensorrt", "tensorrt",
                     quantiser="edge_tl.backends.onnxruntime_.quantize", onnx_qdq=True, explicit_qdq=True,
                     engine_on_device=True, stand_in=("onnxruntime", "cpu"), float_baseline="fp16",
                     reference_device="cuda", detect_export=True, nms_in_graph=True)
