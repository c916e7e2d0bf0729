"""The engine build on the device (TensorRT version differences live in the three helpers at the top), and
export's hook (``after_export``: the graph's readiness, and an engine where TensorRT is installed).

UNVERIFIED ON HARDWARE: TensorRT cannot be installed on the machines this project is developed on (the
package's ``runner`` says which documents this follows)."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ...errors import ArtifactError, ConfigError, EdgeTLError, require
from ...manifest import atomic_path, sha256_file, write_bytes, write_json
from .cuda_buffers import _check, _cudart
from .host import availability, host_description
from .sidecar import sidecar_path

log = logging.getLogger("edge_tl")

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024


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
    from .ready import float_type, to_fp16

    if float_type(onnx_path) == "fp16":
        return onnx_path
    return to_fp16(onnx_path, onnx_path.with_name(onnx_path.stem + ".fp16.onnx"))


def after_export(target: Any, folder: Path) -> dict[str, Any]:
    """Refuse a graph TensorRT would reject; on a device with TensorRT, build its engine now (export's
    backend hook, ``backends.base.after_export``).

    The engine and its sidecar are not listed in the manifest's files: the device may rebuild them.
    """
    from .ready import summary as trt_summary

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

    from ... import __version__

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
