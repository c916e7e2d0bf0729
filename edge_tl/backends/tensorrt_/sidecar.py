"""The sidecar: which host and model an engine belongs to.

Beside ``model.engine``, ``model.engine.json`` records the TensorRT version, GPU, compute capability and
the ONNX it came from; an engine whose sidecar does not match this host is refused with a message saying
what differs and how to rebuild. Pure comparisons, checked on every machine here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ArtifactError
from ...manifest import read_json, sha256_file
from .host import host_description


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
