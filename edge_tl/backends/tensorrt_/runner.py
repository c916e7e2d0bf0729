"""TensorRT runner: the device builds its own engine from the shipped ONNX graph, then runs it.

An engine is specific to the TensorRT version and the GPU it was built on, so the workstation ships
``model.onnx`` (float for fp16 targets, the symmetric INT8 QDQ graph for int8 targets) and the device
builds ``model.engine`` on first use. Beside the engine, ``model.engine.json`` (the sidecar) records
the TensorRT version, GPU, compute capability and the ONNX it came from; an engine whose sidecar does
not match this host is refused with a message saying what differs and how to rebuild.

UNVERIFIED ON HARDWARE: TensorRT cannot be installed on the machines this project is developed on.
This package follows TensorRT's documented Python API (10.x as on JetPack 6, 11.x on desktops):
  - Python API reference and the "Migrating from TensorRT 10.x to 11.x" guide (docs.nvidia.com/
    deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api.html): 11.x removed
    the weak-typing precision flags (BuilderFlag.FP16/INT8); networks are strongly typed.
  - the developer guide's "Explicit Quantization" (Q/DQ graphs; no calibrator).
  - the sample ``samples/python/common_runtime.py`` (name-based I/O, cuda-python buffers,
    ``execute_async_v3``).
What is checked here: the graph it consumes (``ready``), the sidecar comparison, the
skip path, and the cuda-python buffer code (on a GPU host without TensorRT). The engine build and
``execute_async_v3`` are not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError, EdgeTLError, MissingExtraError, require
from ..base import RunnerSpec
from .build import DEFAULT_WORKSPACE_MB, after_export, build_engine
from .cuda_buffers import CudaIO, _Buffer, _check, _cudart
from .host import _device_index, availability
from .sidecar import check_sidecar, engine_path_for, rebuild_hint

__all__ = ["TensorRTRunner", "after_export", "availability", "open"]  # the backend table's entry points

log = logging.getLogger("edge_tl")


def _np_dtype(trt: Any, dtype: Any) -> np.dtype:
    return np.dtype(trt.nptype(dtype))


class TensorRTRunner:
    """A deserialised engine with one execution context and fixed device buffers sized for its profile."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], device_index: int = 0,
                 precision: str = "fp16", build_info: dict[str, Any] | None = None) -> None:
        trt = require("tensorrt", "tensorrt")
        self.build_info = build_info  # the engine's sidecar, for reports
        rt = _cudart()
        if rt is None:
            raise MissingExtraError("cuda-python", "tensorrt")
        _check(rt.cudaSetDevice(device_index), "cudaSetDevice")
        self.precision = precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not load {engine_path} (its log above "
                                f"says why); {rebuild_hint(engine_path)}")
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise ArtifactError(f"{engine_path} has inputs {inputs} and outputs {outputs}; expected one "
                                "input and at least one output")
        # The first output is the logits; an anomaly graph adds its anomaly map (run_outputs).
        self.input, self.output, self.extra_outputs = inputs[0], outputs[0], outputs[1:]
        self.context = engine.create_execution_context()
        shape = tuple(engine.get_tensor_shape(self.input))
        max_shape = tuple(engine.get_tensor_profile_shape(self.input, 0)[2]) if -1 in shape else shape
        self.max_batch = int(max_shape[0])
        self.in_dtype = _np_dtype(trt, engine.get_tensor_dtype(self.input))
        self.out_dtype = _np_dtype(trt, engine.get_tensor_dtype(self.output))
        if not self.context.set_input_shape(self.input, max_shape):
            raise ArtifactError(f"{engine_path}: cannot set input shape {max_shape}")
        out_max = tuple(self.context.get_tensor_shape(self.output))
        self.io = CudaIO(device_index, int(np.prod(max_shape)) * self.in_dtype.itemsize,
                         int(np.prod(out_max)) * self.out_dtype.itemsize)
        # The buffers never move, so their addresses are bound once.
        self.context.set_tensor_address(self.input, self.io.inp.device)
        self.context.set_tensor_address(self.output, self.io.out.device)
        # Every output needs a bound buffer, read or not (UNVERIFIED on hardware: no TensorRT here).
        self.extra: list[tuple[str, np.dtype, _Buffer]] = []
        for name in self.extra_outputs:
            dtype = _np_dtype(trt, engine.get_tensor_dtype(name))
            buf = _Buffer(rt, int(np.prod(tuple(self.context.get_tensor_shape(name)))) * dtype.itemsize)
            self.context.set_tensor_address(name, buf.device)
            self.extra.append((name, dtype, buf))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 in, (N, classes) float32 logits out in host memory, after the GPU has finished."""
        if len(batch) > self.max_batch:  # the profile's limit: run in slices
            return np.concatenate([self.run(batch[i:i + self.max_batch])
                                   for i in range(0, len(batch), self.max_batch)])
        x = np.ascontiguousarray(batch, dtype=self.in_dtype)
        if not self.context.set_input_shape(self.input, x.shape):
            raise EdgeTLError(f"input shape {x.shape} is outside the engine's profile "
                              f"(batch 1..{self.max_batch})")
        self.io.upload(x)
        if not self.context.execute_async_v3(self.io.stream_handle):
            raise EdgeTLError("TensorRT execute_async_v3 failed (its log above says why)")
        shape = tuple(self.context.get_tensor_shape(self.output))
        return self.io.download(self.out_dtype, shape).astype(np.float32, copy=False)

    def run_outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output in the engine's order (an anomaly graph: logits, anomaly_map)."""
        if len(batch) > self.max_batch:
            parts = [self.run_outputs(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            return [np.concatenate(p) for p in zip(*parts, strict=True)]
        out = [self.run(batch)]
        for name, dtype, buf in self.extra:
            shape = tuple(self.context.get_tensor_shape(name))
            out.append(self.io.download(dtype, shape, buf).astype(np.float32, copy=False))
        return out

    def close(self) -> None:
        for _, _, buf in getattr(self, "extra", []):
            buf.free()
        self.extra = []
        if getattr(self, "io", None) is not None:
            self.io.close()
            self.io = None
        # Release in dependency order: context, engine, then the runtime that made it.
        self.context = None
        self.engine = None
        self._runtime = None


def open(spec: RunnerSpec) -> TensorRTRunner:  # noqa: A001 - the backend table's entry point
    """Open ``spec.model_path`` (the target's ``model.onnx``, or an ``.engine``) on this GPU.

    The engine beside the ONNX is built here on first use (minutes on a Jetson); an existing one is
    loaded only if its sidecar matches this host, this ONNX, the precision and the batch size.
    ``spec.options``: ``rebuild`` (bool), ``timing_cache`` (path), ``workspace_mb``, ``opt_batch``.
    """
    require("tensorrt", "tensorrt")
    if _cudart() is None:
        raise MissingExtraError("cuda-python", "tensorrt")
    index = _device_index(spec.device)
    opts = spec.options or {}
    path = Path(spec.model_path)
    if path.suffix == ".engine":
        engine, onnx_path = path, path.with_suffix(".onnx")
    else:
        engine, onnx_path = engine_path_for(path), path
    if opts.get("rebuild") or not engine.is_file():
        log.warning("building the TensorRT engine %s on this device (first use: this can take minutes)",
                    engine)
        info = build_engine(onnx_path, engine, spec.precision, spec.max_batch,
                            timing_cache_path=opts.get("timing_cache"),
                            workspace_mb=int(opts.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
                            opt_batch=int(opts.get("opt_batch", 1)), device_index=index)
    else:
        info = check_sidecar(engine, onnx_path=onnx_path if onnx_path.is_file() else None,
                             precision=spec.precision, max_batch=spec.max_batch, device_index=index)
    return TensorRTRunner(engine, index, spec.precision, build_info=info)
