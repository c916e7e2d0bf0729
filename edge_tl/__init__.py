"""edge-tl: transfer, compress, export and benchmark image classifiers for edge targets.

Importing this package is cheap: torch, onnxruntime, openvino and tensorrt are imported only by the
functions that need them.
"""

__version__ = "0.1.0"
