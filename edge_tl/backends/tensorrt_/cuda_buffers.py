"""cuda-python for the TensorRT runner: one import site (``_cudart``), one error check (``_check``), and the
pinned-host / device buffer pairs on one CUDA stream the engine reads and writes (``CudaIO``). No TensorRT
and no torch: tested on any CUDA GPU (``tests/test_tensorrt.py``)."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ...errors import EdgeTLError, MissingExtraError


def _cudart() -> Any | None:
    """cuda-python's runtime API module, or None when cuda-python is missing.

    cuda-python >= 12.6 names it ``cuda.bindings.runtime``; older releases ``cuda.cudart`` (removed
    in 13.x). JetPack 6 ships CUDA 12, so a Jetson may have either.
    """
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined]

        return cudart
    except ImportError:
        return None


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple; raise with the CUDA error's name on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # cudaSuccess
        rt = _cudart()
        name = rt.cudaGetErrorName(err)[1] if rt is not None else err
        text = rt.cudaGetErrorString(err)[1] if rt is not None else b""
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise EdgeTLError(f"{what} failed: {text} ({name})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _Buffer:
    """``nbytes`` of pinned host memory and as much device memory."""

    def __init__(self, rt: Any, nbytes: int) -> None:
        self.rt, self.nbytes = rt, nbytes
        self.host = int(_check(rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        try:
            self.device = int(_check(rt.cudaMalloc(nbytes), "cudaMalloc"))
        except EdgeTLError:
            rt.cudaFreeHost(self.host)
            raise
        self._view = np.frombuffer((ctypes.c_byte * nbytes).from_address(self.host), dtype=np.uint8)

    def host_array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return self._view[:count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.device:
            self.rt.cudaFree(self.device)
            self.rt.cudaFreeHost(self.host)
            self.device = self.host = 0


class CudaIO:
    """One input and one output buffer pair on one CUDA stream: copy in, (run), copy out, synchronise."""

    def __init__(self, device_index: int, in_bytes: int, out_bytes: int) -> None:
        rt = _cudart()
        if rt is None:
            raise MissingExtraError("cuda-python", "tensorrt")
        self.rt = rt
        _check(rt.cudaSetDevice(device_index), "cudaSetDevice")
        self.stream = _check(rt.cudaStreamCreate(), "cudaStreamCreate")
        self.inp = _Buffer(rt, in_bytes)
        self.out = _Buffer(rt, out_bytes)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def upload(self, array: np.ndarray) -> None:
        """Queue a host->device copy of ``array`` into the input buffer (via pinned memory)."""
        if array.nbytes > self.inp.nbytes:
            raise ValueError(f"{array.nbytes} bytes do not fit the {self.inp.nbytes}-byte input buffer")
        np.copyto(self.inp.host_array(array.dtype, array.shape), array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt.cudaMemcpyAsync(self.inp.device, self.inp.host, array.nbytes, kind, self.stream),
               "cudaMemcpyAsync (host to device)")

    def download(self, dtype: np.dtype, shape: tuple[int, ...], buffer: _Buffer | None = None) -> np.ndarray:
        """Queue a device->host copy of the output buffer (or ``buffer``: an extra output's), wait for the
        stream, return a fresh array."""
        out = buffer or self.out
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > out.nbytes:
            raise ValueError(f"output of {nbytes} bytes exceeds the {out.nbytes}-byte buffer")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt.cudaMemcpyAsync(out.host, out.device, nbytes, kind, self.stream),
               "cudaMemcpyAsync (device to host)")
        _check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out.host_array(dtype, shape).copy()

    def close(self) -> None:
        if self.stream is None:
            return
        self.rt.cudaStreamSynchronize(self.stream)
        self.inp.free()
        self.out.free()
        self.rt.cudaStreamDestroy(self.stream)
        self.stream = None
