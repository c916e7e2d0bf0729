"""The OpenVINO backend: OpenVINO IR on CPU, GPU or NPU.

``convert``: ONNX -> IR. ``runner``: one process-wide ``ov.Core`` (the segfault of issue 24) and the
throughput mode. ``quantize``: NNCF post-training quantisation of the OpenVINO model.
"""

from __future__ import annotations

from ..descriptor import BackendFacts

FACTS = BackendFacts("openvino", f"{__name__}.runner", "model.xml", "openvino-ir", "openvino", "openvino",
                     converter=f"{__name__}.convert", quantiser=f"{__name__}.quantize",
                     detect_export=True)

# What NNCF's post-training quantisation makes of an OpenVINO target, whatever the profile's
# ``activations`` / ``symmetric_activations`` say (those keys shape the ONNX graphs and ``--qat``): its
# "performance" preset quantises activations symmetrically, and a symmetric range over a tensor that is
# never negative (after ReLU) is unsigned. Said by the export manifest and by ``edge-tl targets NAME``.
OPENVINO_PRESET = ("performance: symmetric per-channel int8 weights; activations per tensor with zero point 0, "
                   "unsigned u8 where the calibration tensor is never negative, signed i8 elsewhere "
                   "(the profile's activations / symmetric_activations keys apply to --qat only)")
