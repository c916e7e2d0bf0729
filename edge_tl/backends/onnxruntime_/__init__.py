"""The ONNX Runtime backend: runs the exported ONNX graph as is (CPU, CUDA or TensorRT execution
provider).

``runner``: the session and its profiler. INT8 is a QDQ graph, which ONNX Runtime and TensorRT both
execute: ``quantize`` (``onnxruntime.quantization``'s static QDQ with its layer fallback, or NNCF's ONNX
graph, ``nncf_onnx``), on the graph helpers of ``onnx_graph`` (an ONNX Runtime CPU session, its logits,
bypassing activation quantisers). TensorRT's table entry names this quantiser too, with
``explicit_qdq`` set.
"""

from __future__ import annotations

from ..descriptor import BackendFacts

FACTS = BackendFacts("onnxruntime", f"{__name__}.runner", "model.onnx", "onnx", "onnxruntime", None,
                     thread_safe=True, quantiser=f"{__name__}.quantize", onnx_qdq=True,
                     calibrates_with_target_threads=True, detect_export=True)
