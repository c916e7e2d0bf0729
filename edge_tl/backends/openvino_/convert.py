"""The OpenVINO converter: the exported float ONNX graph -> OpenVINO IR (``model.xml`` + ``model.bin``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import require

if TYPE_CHECKING:
    from ...targets import Target


def onnx_to_openvino(onnx_path: Path, xml_path: Path, compress_to_fp16: bool = False) -> list[str]:
    """ONNX -> OpenVINO IR; weights stay fp32 unless asked (save_model defaults to fp16!)."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def convert(target: Target, onnx_path: Path, out_dir: Path) -> list[str]:
    """The backend table's converter entry: ``target.model_file`` in ``out_dir``, fp16 weights for an fp16
    target; returns the files written."""
    return onnx_to_openvino(onnx_path, out_dir / target.model_file, compress_to_fp16=target.precision == "fp16")
