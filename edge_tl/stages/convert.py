"""Float conversions from the exported ONNX graph to each backend's own format (the table's ``converter``)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..backends.table import facts
from ..targets import Target


def convert_float(target: Target, onnx_path: Path, out_dir: Path) -> list[str]:
    """Write the float model for ``target`` into ``out_dir``; returns the files written."""
    converter = facts(target.backend).converter
    if converter is not None:
        return importlib.import_module(converter).convert(target, onnx_path, out_dir)
    # A backend without a converter runs the ONNX as is (TensorRT builds its fp16 engine from it on the device).
    dest = out_dir / target.model_file
    if onnx_path != dest:
        os.replace(onnx_path, dest)
    return [dest.name]
