"""Float conversions from the exported ONNX graph to each backend's own format."""

from __future__ import annotations

import os
from pathlib import Path

from ..backends.table import facts
from ..errors import require
from ..targets import Target


def onnx_to_openvino(onnx_path: Path, xml_path: Path, compress_to_fp16: bool = False) -> list[str]:
    """ONNX -> OpenVINO IR; weights stay fp32 unless asked (save_model defaults to fp16!)."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def convert_float(target: Target, onnx_path: Path, out_dir: Path) -> list[str]:
    """Write the float model for ``target`` into ``out_dir``; returns the files written."""
    if facts(target.backend).graph == "openvino-ir":
        return onnx_to_openvino(onnx_path, out_dir / target.model_file, compress_to_fp16=target.precision == "fp16")
    # An "onnx" backend runs the ONNX as is (TensorRT builds its fp16 engine from it on the device).
    dest = out_dir / target.model_file
    if onnx_path != dest:
        os.replace(onnx_path, dest)
    return [dest.name]
