"""Precision that pays: the float and INT8 models timed in this process on the target's backend."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.table import facts
from ...targets import Target

log = logging.getLogger("edge_tl")


def _target_arch(target: Target) -> str | None:
    """The CPU architecture the target runs on; None where its engine is built on the device (TensorRT)."""
    if facts(target.backend).engine_on_device:
        return None
    if re.search(r"arm64|aarch64", target.name, re.IGNORECASE):
        return "aarch64"
    return platform.machine().lower()


def speed_check(target: Target, float_model: Path, int8_model: Path, warmup: int = 3,
                iterations: int = 20, rounds: int = 2, max_seconds: float = 2.0) -> dict[str, Any]:
    """Batch-1 latency of the float and INT8 models on the target's backend, in this process.

    Alternates the two (``rounds`` times) and keeps each one's best p50, so a noisy neighbour hurts
    both alike. Warns when INT8 is slower. TensorRT engines are built on the device: not timed here.
    """
    from ...backends import RunnerSpec, availability, open_runner
    from ...bench.latency import measure_latency

    host = platform.machine().lower()
    arch = _target_arch(target)
    if arch is None or availability(target.backend, target.device) is not None:
        return {"measured": False, "speedup": None,
                "note": f"{target.backend} on {target.device} cannot run here: bench times it on the device"}
    specs = {"float": RunnerSpec(float_model, target.backend, target.device, "fp32", target.threads, 1),
             "int8": RunnerSpec(int8_model, target.backend, target.device, "int8", target.threads, 1)}
    best: dict[str, float] = {}
    samples = 0
    runners = {k: open_runner(s) for k, s in specs.items()}
    try:
        shape = _input_shape(float_model)
        x = np.random.default_rng(0).standard_normal((1, 3, shape, shape)).astype(np.float32)
        for _ in range(rounds):
            for kind, runner in runners.items():
                lat = measure_latency(runner.run, x, warmup, iterations, max_seconds=max_seconds)
                best[kind] = min(best.get(kind, float("inf")), lat["p50"])
                samples += lat["n"]
    finally:
        for r in runners.values():
            r.close()
    speedup = best["float"] / best["int8"]
    out = {"measured": True, "backend": target.backend, "device": target.device, "host_machine": host,
           "float_p50_ms": best["float"], "int8_p50_ms": best["int8"], "speedup": speedup,
           "threads": target.threads, "timed_calls": samples, "rounds": rounds}
    if arch != host:
        out["note"] = (f"timed on this {host} host, not on the target's {arch} CPU: bench on the device "
                       "decides whether INT8 pays there")
    elif speedup < 1.0:
        out["note"] = "INT8 is slower than float on this host"
        log.warning("%s: the INT8 model is SLOWER than the float model on this host (%.2f ms vs %.2f ms at "
                    "batch 1, %.2f× float speed): ship the fp32 target here, or bench on the device",
                    target.name, best["int8"], best["float"], speedup)
    return out


def _input_shape(onnx_path: Path) -> int:
    """Spatial size of the model's input (static in our exports), from the ONNX graph."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 224
