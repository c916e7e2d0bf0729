"""TensorRT backend: the device builds its own engine from the shipped ONNX graph, then runs it.

An engine is specific to the TensorRT version and the GPU it was built on, so the workstation ships
``model.onnx`` (float for fp16 targets, the symmetric INT8 QDQ graph for int8 targets) and the device
builds ``model.engine`` on first use. Beside the engine, ``model.engine.json`` (the sidecar) records
the TensorRT version, GPU, compute capability and the ONNX it came from; an engine whose sidecar does
not match this host is refused with a message saying what differs and how to rebuild.

UNVERIFIED ON HARDWARE: TensorRT cannot be installed on the machines this project is developed on.
This module follows TensorRT's documented Python API (10.x as on JetPack 6, 11.x on desktops):
  - Python API reference and the "Migrating from TensorRT 10.x to 11.x" guide (docs.nvidia.com/
    deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api.html): 11.x removed
    the weak-typing precision flags (BuilderFlag.FP16/INT8); networks are strongly typed.
  - the developer guide's "Explicit Quantization" (Q/DQ graphs; no calibrator).
  - the sample ``samples/python/common_runtime.py`` (name-based I/O, cuda-python buffers,
    ``execute_async_v3``).
What is checked here: the graph it consumes (``edge_tl.trt_ready``), the sidecar comparison, the
skip path, and the cuda-python buffer code (on a GPU host without TensorRT). The engine build and
``execute_async_v3`` are not.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError, EdgeTLError, MissingExtraError, require
from ..manifest import atomic_path, read_json, sha256_file, write_bytes, write_json
from .base import RunnerSpec

log = logging.getLogger("edge_tl")

INSTALL_HINT = "on a Jetson use JetPack's TensorRT; on a desktop pip install 'edge-tl[tensorrt]'"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024


# ----------------------------------------------------------------------------------------------------
# cuda-python: one import site, one error check
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Sidecar: which host and model an engine belongs to
# ----------------------------------------------------------------------------------------------------

def engine_path_for(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.engine`` (``float.onnx`` -> ``float.engine``: one engine per graph)."""
    return Path(onnx_path).with_suffix(".engine")


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# (key, label) of the host facts an engine is bound to. TensorRT refuses or mis-runs a plan from
# another TensorRT version or another compute capability; another GPU model of the same capability
# loads but with tactics timed for different hardware (TensorRT itself warns against it).
_HOST_FIELDS = (("tensorrt_version", "TensorRT version"), ("compute_capability", "compute capability"),
                ("gpu_name", "GPU"), ("multiprocessor_count", "SM count"), ("board", "board"))


def sidecar_mismatches(sidecar: dict[str, Any], host: dict[str, Any]) -> list[str]:
    """Why an engine described by ``sidecar`` must not run on ``host``; [] when it may.

    ``host`` holds this host's facts (``host_description``) and, where known, what the caller wants:
    ``onnx_sha256`` and ``engine_sha256`` (files as they are now), ``precision``, ``max_batch``. A key
    absent from ``host`` is not compared; a key absent from the sidecar is a mismatch.
    """
    out = []
    for key, label in _HOST_FIELDS:
        if key in host and sidecar.get(key) != host[key]:
            out.append(f"{label}: engine built with {sidecar.get(key)!r}, this host has {host[key]!r}")
    for key, label in (("onnx_sha256", "the ONNX model"), ("engine_sha256", "the engine file")):
        if host.get(key) and sidecar.get(key) != host[key]:
            out.append(f"{label} changed since the engine was built")
    if host.get("precision") and sidecar.get("precision") != host["precision"]:
        out.append(f"precision: engine built for {sidecar.get('precision')!r}, {host['precision']!r} wanted")
    if host.get("max_batch") and int(sidecar.get("max_batch") or 0) < int(host["max_batch"]):
        out.append(f"max batch: engine serves up to {sidecar.get('max_batch')}, {host['max_batch']} wanted")
    return out


def rebuild_hint(engine_path: str | os.PathLike[str]) -> str:
    """The command that rebuilds this engine, from its place in a run directory when it is in one."""
    folder = Path(engine_path).resolve().parent
    if folder.parent.name == "targets":
        cmd = f"edge-tl export {folder.parent.parent} --target {folder.name}"
    else:
        cmd = "edge-tl export RUN --target TARGET"
    return (f"rebuild it on this device with `{cmd}` (or delete {Path(engine_path).name}: the next run on "
            "this device builds it)")


def check_sidecar(engine_path: str | os.PathLike[str], host: dict[str, Any] | None = None, *,
                  onnx_path: str | os.PathLike[str] | None = None, precision: str | None = None,
                  max_batch: int | None = None, device_index: int = 0) -> dict[str, Any]:
    """Return the engine's sidecar, or raise ArtifactError naming what does not match this host.

    ``host`` defaults to this machine's ``host_description`` (which needs TensorRT and a GPU).
    """
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise ArtifactError(f"{engine_path} has no sidecar ({side.name}), so nothing says which TensorRT "
                            f"and GPU built it; {rebuild_hint(engine_path)}")
    sidecar = read_json(side)
    want = dict(host if host is not None else host_description(device_index))
    want["engine_sha256"] = sha256_file(engine_path)
    if onnx_path is not None and Path(onnx_path).is_file():
        want["onnx_sha256"] = sha256_file(onnx_path)
    if precision is not None:
        want["precision"] = precision
    if max_batch is not None:
        want["max_batch"] = max_batch
    problems = sidecar_mismatches(sidecar, want)
    if problems:
        raise ArtifactError(f"{engine_path} was not built for this device and model ({'; '.join(problems)}); "
                            f"{rebuild_hint(engine_path)}")
    return sidecar


# ----------------------------------------------------------------------------------------------------
# Engine build (TensorRT version differences live in the three helpers below)
# ----------------------------------------------------------------------------------------------------

def _weak_typing(trt: Any) -> bool:
    """True on TensorRT 10.x, where precision is chosen by builder flags.

    TensorRT 11 removed BuilderFlag.FP16/INT8 ("Removed Python APIs and Replacements", 10.x -> 11.x
    migration guide): every network is strongly typed and takes its precision from the graph.
    """
    return hasattr(trt.BuilderFlag, "FP16")


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    # EXPLICIT_BATCH is deprecated and ignored since TensorRT 10.0 (networks are always explicit
    # batch), so it is never set. STRONGLY_TYPED is accepted (and ignored) by 11.x.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strongly_typed and flag is not None else 0


def _set_precision(trt: Any, config: Any, precision: str, weak: bool) -> None:
    if "TF32" in trt.BuilderFlag.__members__ and precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means fp32: TF32 is on by default on Ampere+
    if not weak:
        return  # strongly typed: the graph's types (fp16 graph, int8 Q/DQ) are the precision
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        # Explicit quantisation: the Q/DQ nodes carry the scales; no calibrator (deprecated since 10.1).
        # FP16 as well lets the layers between Q/DQ pairs run in half precision.
        config.set_flag(trt.BuilderFlag.INT8)


def default_timing_cache(host: dict[str, Any]) -> Path:
    """A per-TensorRT-version, per-GPU timing cache shared by every engine built on this host."""
    root = Path(os.environ.get("EDGE_TL_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(host.get("board") or host.get("gpu_name") or "gpu")).strip("-")
    cc = str(host.get("compute_capability", "")).replace(".", "")
    return root / "edge-tl" / "tensorrt" / f"timing-{host.get('tensorrt_version')}-{gpu}-sm{cc}.cache"


def _attach_timing_cache(config: Any, path: Path | None) -> Any:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache written on another GPU is refused rather than trusted.
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not fit this GPU; starting an empty one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _fp16_graph(onnx_path: Path) -> Path:
    """The fp16 graph a strongly typed build needs: the shipped one if it is fp16, else a converted copy."""
    from ..trt_ready import float_type, to_fp16

    if float_type(onnx_path) == "fp16":
        return onnx_path
    return to_fp16(onnx_path, onnx_path.with_name(onnx_path.stem + ".fp16.onnx"))


def after_export(target: Any, folder: Path) -> dict[str, Any]:
    """Refuse a graph TensorRT would reject; on a device with TensorRT, build its engine now (export's
    backend hook, ``backends.base.after_export``).

    The engine and its sidecar are not listed in the manifest's files: the device may rebuild them.
    """
    from ..trt_ready import summary as trt_summary

    graph = trt_summary(folder / target.model_file, max_batch=target.batch_size, require_quantized=target.quantized)
    if graph["problems"]:
        raise EdgeTLError(f"{target.name}: the graph is not TensorRT-ready: {'; '.join(graph['problems'])}; "
                          "nothing was written")
    out: dict[str, Any] = {"tensorrt_graph": graph}
    if availability(target.device) is None:
        out["engine"] = build_engine(folder / target.model_file, folder / "model.engine", target.precision,
                                     target.batch_size)
    return out


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], precision: str,
                 max_batch: int, input_shape: tuple[int, int, int] | None = None,
                 timing_cache_path: str | os.PathLike[str] | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, opt_batch: int = 1,
                 device_index: int = 0) -> dict[str, Any]:
    """Build ``engine_path`` from ``onnx_path`` on this host's GPU; write it and its sidecar atomically.

    ``precision``: fp16 (float graph), int8 (symmetric QDQ graph, explicit quantisation) or fp32.
    The optimisation profile spans batch 1..``max_batch`` at C, H, W from the graph (or
    ``input_shape``), tuned for ``opt_batch`` (1: the batch-1 latency the gates measure). Returns the
    sidecar.
    """
    trt = require("tensorrt", "tensorrt")
    if precision not in PRECISIONS:
        raise ConfigError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"missing {onnx_path}: export the target first")
    host = host_description(device_index)
    _check(_cudart().cudaSetDevice(device_index), "cudaSetDevice")
    weak = _weak_typing(trt)
    graph = _fp16_graph(onnx_path) if precision == "fp16" and not weak else onnx_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, not weak))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT {trt.__version__} could not parse {graph}: {errors}")
    if network.num_inputs != 1:
        raise ArtifactError(f"{graph} has {network.num_inputs} inputs; the TensorRT runner feeds one")
    inp = network.get_input(0)
    dims = tuple(int(d) for d in inp.shape)
    chw = tuple(int(d) for d in input_shape) if input_shape is not None else dims[1:]
    if len(dims) != 4 or any(d <= 0 for d in chw):
        raise ConfigError(f"{graph} input {inp.name!r} has shape {dims}; need NCHW with fixed C, H, W")
    if dims[0] > 0:
        raise ConfigError(f"{graph} input {inp.name!r} has a fixed batch of {dims[0]}; export with a "
                          "dynamic batch axis")
    if precision == "int8":
        types = {network.get_layer(i).type for i in range(network.num_layers)}
        if trt.LayerType.DEQUANTIZE not in types:
            raise ConfigError(f"{graph} has no Q/DQ nodes: an int8 engine is built from the QDQ graph "
                              "(explicit quantisation), not the float one")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    _set_precision(trt, config, precision, weak)
    profile = builder.create_optimization_profile()
    opt = min(max(int(opt_batch), 1), int(max_batch))
    profile.set_shape(inp.name, (1, *chw), (opt, *chw), (int(max_batch), *chw))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache_path) if timing_cache_path is not None else default_timing_cache(host)
    _attach_timing_cache(config, cache_path)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeTLError(f"TensorRT {trt.__version__} failed to build an engine from {graph} (its log above "
                          "says why)")
    seconds = time.perf_counter() - started
    data = bytes(memoryview(serialized))  # IHostMemory exposes the buffer protocol
    try:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    except OSError as exc:  # a read-only home must not cost the engine
        log.warning("could not save the TensorRT timing cache %s: %s", cache_path, exc)

    from .. import __version__

    sidecar = {
        **host,
        "precision": precision,
        "strongly_typed": not weak,
        "max_batch": int(max_batch),
        "opt_batch": opt,
        "input_name": inp.name,
        "input_shape": list(chw),
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "built_from": graph.name,
        "engine_sha256": _sha256_bytes(data),
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path),
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "edge_tl_version": __version__,
    }
    # The sidecar lands before the engine is renamed into place: a crash in between leaves a sidecar
    # without its engine (rebuilt on next use), never an engine that nothing vouches for.
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(data)
        write_json(sidecar_path(engine_path), sidecar)
    log.info("built %s in %.0f s (TensorRT %s, %s)", engine_path, seconds, trt.__version__, host["gpu_name"])
    return sidecar


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Runner: cuda-python buffers, execute_async_v3, no torch
# ----------------------------------------------------------------------------------------------------

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
