"""edge-tl: transfer, compress, export and benchmark image classifiers for edge targets.

Importing this package is cheap: torch, onnxruntime, openvino and tensorrt are imported only by the
functions that need them. The whole chain as functions is ``edge_tl.api``::

    from edge_tl import api

    api.finetune("data/parts", "runs/parts")
    api.export("runs/parts", "cpu-onnxruntime-int8")
    [report] = api.bench("runs/parts", ["cpu-onnxruntime-int8"])
    api.bundle("runs/parts", "cpu-onnxruntime-int8", "bundles/parts")
"""

__version__ = "0.1.0"

# The built-in tasks register their model builders (``edge_tl.builders``) for the checkpoint loader. Cheap:
# the task modules import torch only inside their functions.
from .anomaly import model as _anomaly_model  # noqa: F401
from .detect import model as _detect_model  # noqa: F401
