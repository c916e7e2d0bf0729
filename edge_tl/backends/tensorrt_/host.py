"""What a TensorRT engine is tied to on this host (the TensorRT version and the GPU), and whether this host
can run TensorRT at all (``availability``, the backend table's entry point)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import ConfigError, EdgeTLError, MissingExtraError, require
from .cuda_buffers import _check, _cudart

INSTALL_HINT = "on a Jetson use JetPack's TensorRT; on a desktop pip install 'edge-tl[tensorrt]'"


def _device_index(device: str) -> int:
    """``cuda:N`` / ``cuda`` / ``gpu`` -> N (0 by default)."""
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", device.strip().lower())
    if m is None:
        raise ConfigError(f"TensorRT device must be cuda or cuda:N, got {device!r}")
    return int(m.group(1) or 0)


def _jetson_board() -> str | None:
    """The Jetson module name from the device tree (every Orin GPU reports just "Orin" to CUDA)."""
    try:
        model = Path("/proc/device-tree/model").read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return None
    return model if "jetson" in model.lower() else None


def gpu_info(device_index: int = 0) -> dict[str, Any]:
    """Name, compute capability and SM count of one CUDA GPU, read with cuda-python (no TensorRT needed)."""
    rt = _cudart()
    if rt is None:
        raise MissingExtraError("cuda-python", "tensorrt")
    count = _check(rt.cudaGetDeviceCount(), "looking for a CUDA GPU (cudaGetDeviceCount)")
    if not count or device_index >= count:
        raise EdgeTLError(f"CUDA GPU {device_index} not present ({count or 0} visible)")
    prop = _check(rt.cudaGetDeviceProperties(device_index), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu_name": name.split("\x00", 1)[0].strip(),
            "compute_capability": f"{prop.major}.{prop.minor}",
            "multiprocessor_count": int(prop.multiProcessorCount),
            "board": _jetson_board()}


def host_description(device_index: int = 0) -> dict[str, Any]:
    """What an engine is tied to on this host: the TensorRT version and the GPU."""
    trt = require("tensorrt", "tensorrt")
    return {"tensorrt_version": trt.__version__, **gpu_info(device_index)}


def availability(device: str) -> str | None:
    """None when TensorRT, cuda-python and the GPU are all here; otherwise everything that is missing."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the Python bindings without libnvinfer
        detail = "" if isinstance(exc, ModuleNotFoundError) else f": {exc}"
        missing.append(f"TensorRT is not installed{detail} ({INSTALL_HINT})")
    if _cudart() is None:
        missing.append("cuda-python is not installed (pip install 'edge-tl[tensorrt]'; on JetPack 6 "
                       "pip install 'cuda-python>=12.2,<13')")
    if missing:
        return "; ".join(missing)
    try:
        gpu_info(_device_index(device))
    except EdgeTLError as exc:
        return f"no usable CUDA GPU: {exc}"
    return None
