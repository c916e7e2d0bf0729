"""Torch-free inference for edge-tl bundles: numpy, Pillow and one backend.

    from edge_tl.runtime import open_bundle

    with open_bundle("bundle/") as rt:          # verifies every sha256, checks the golden images
        p = rt.predict("part_0042.png")          # or a PIL image, or rt.predict(frame, color="BGR")
        print(p.label, p.score, p.decision)      # decision: "ok" | "defect" | "review"
        many = rt.predict_batch(paths)
        p.boxes                                  # a detection bundle: [{class, score, x1, y1, x2, y2}] in
                                                 # the image's pixels (None for a classifier)

Installing ``edge-tl[runtime]`` (numpy, pillow, onnxruntime) is enough for ONNX Runtime bundles;
OpenVINO bundles need ``openvino``, TensorRT bundles the system TensorRT (JetPack). Importing this
package imports none of them, nor torch.
"""

from .boxes import BoxPolicy
from .bundlefile import BUNDLE_JSON, FORMAT_VERSION, SUMS, read_bundle
from .core import InputError, Prediction, Runtime, engine_cache_dir, open_bundle, to_image
from .policy import (
    RULE,
    Policy,
    make_policy,
    policy_stats,
    rate_upper_bound,
    softmax,
    tune_for_escape,
    tune_ok_threshold,
)

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_VERSION",
    "RULE",
    "SUMS",
    "BoxPolicy",
    "InputError",
    "Policy",
    "Prediction",
    "Runtime",
    "engine_cache_dir",
    "make_policy",
    "open_bundle",
    "policy_stats",
    "rate_upper_bound",
    "read_bundle",
    "softmax",
    "to_image",
    "tune_for_escape",
    "tune_ok_threshold",
]
