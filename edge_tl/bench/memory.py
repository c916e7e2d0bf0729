"""The candidate's own resident memory: its model loaded and run in a fresh process.

A bench run inside ``edge-tl run`` shares its process with fine-tuning, torch and every other model,
so the process's peak RSS says nothing about the candidate (2,080 MB seen for a 9 MB model). This
starts ``python -m edge_tl.bench.memory`` with the runner's spec: it imports numpy and the backend's
library, notes the resident set (``runtime_rss_mb``), resets the peak (Linux ``clear_refs``), opens the
model and runs it at batch 1 and at the profile's batch size, then reads the peak:

* ``model_rss_mb``: the peak resident memory above the runtime's own, i.e. what loading and running
  this model costs (weights, compiled kernels, arena, activations);
* ``process_peak_rss_mb``: the fresh process's peak, i.e. what a process that does nothing but run
  this model on this backend needs (Python, numpy and the runtime library included).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

MEANING = ("model_rss_mb: peak resident memory of a fresh process above what it held once the runtime library "
           "was imported (model load + batch-1 and batch-N inference); process_peak_rss_mb: that process's "
           "peak, runtime included")


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(spec_json: str) -> dict[str, Any]:
    import numpy as np

    from ..backends import RunnerSpec, availability, open_runner

    d = json.loads(spec_json)
    shape = tuple(d.pop("shape"))
    spec = RunnerSpec(Path(d.pop("model_path")), **d)
    availability(spec.backend, spec.device)  # imports the backend's library
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    baseline = _status_mb("VmRSS")
    reset = _reset_peak()
    runner = open_runner(spec)
    after_load = _status_mb("VmRSS")
    for _ in range(3):
        runner.run(x)
    xb = np.repeat(x, spec.max_batch, axis=0)
    for _ in range(3):
        runner.run(xb)
    peak = _status_mb("VmHWM") if reset else None
    peak = peak if peak is not None else _maxrss_mb()
    runner.close()
    return {"runtime_rss_mb": baseline, "after_load_rss_mb": after_load, "process_peak_rss_mb": peak,
            "model_rss_mb": max(0.0, peak - baseline) if baseline is not None else None,
            "peak_reset": reset}


def measure_model_memory(model_path: Path, backend: str, device: str, precision: str, threads: int,
                         batch: int, shape: tuple[int, ...], timeout: float = 300.0) -> dict[str, Any]:
    """Run the child; returns its figures plus ``meaning``, or ``{"error": ...}`` when it failed."""
    spec = json.dumps({"model_path": str(model_path), "backend": backend, "device": device,
                       "precision": precision, "threads": threads, "max_batch": batch, "shape": list(shape)})
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_tl.bench.memory", spec], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "unreadable output: " + proc.stdout[-200:]}
    return out | {"meaning": MEANING}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
