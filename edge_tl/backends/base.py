"""The Runner protocol and the backend table."""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .table import BACKENDS


@runtime_checkable
class Runner(Protocol):
    """A loaded model on one backend."""

    backend: str
    precision: str  # what actually runs (e.g. "fp32", "int8", "bf16")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 in, (N, classes) float32 logits out, in host memory."""
        ...

    def close(self) -> None:
        """Release the model and any device buffers."""
        ...

    # Runners of graphs with more than one output (an anomaly graph's ``anomaly_map``) also offer
    # ``run_outputs(batch) -> list[np.ndarray]``: every output in the graph's order (ONNX Runtime,
    # OpenVINO).


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner needs to open a model file."""

    model_path: Path
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 2
    max_batch: int = 8
    options: dict[str, Any] | None = None


def _module(backend: str) -> Any:
    """The runner module of ``backend`` (the table's ``runner``: ``open(spec) -> Runner``,
    ``availability(device) -> str | None``)."""
    try:
        return importlib.import_module(BACKENDS[backend].runner)
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}") from None


def after_export(backend: str, target: Any, folder: Path) -> dict[str, Any]:
    """The backend's own checks and builds on a freshly exported target folder (TensorRT: the graph's
    readiness, and an engine where TensorRT is installed); the fields they add to the target's
    manifest ({} for a backend with none)."""
    fn = getattr(_module(backend), "after_export", None)
    return {} if fn is None else fn(target, folder)


def open_runner(spec: RunnerSpec) -> Runner:
    """Open ``spec.model_path`` on its backend."""
    return _module(spec.backend).open(spec)


def availability(backend: str, device: str) -> str | None:
    """None when this host can run ``backend`` on ``device``; otherwise the reason it cannot."""
    return _module(backend).availability(device)


def checked_on(backend: str, device: str) -> tuple[str, str] | None:
    """Where this host checks a graph exported for ``backend`` on ``device``: the backend itself when it runs
    here, else its stand-in on the same graph (``BackendFacts.stand_in``: TensorRT's ONNX Runtime CPU) when
    that runs here, else None."""
    if availability(backend, device) is None:
        return backend, device
    stand_in = BACKENDS[backend].stand_in
    if stand_in is not None and availability(*stand_in) is None:
        return stand_in
    return None


# --------------------------------------------------------------------------------------------------
# Throughput mode: several requests in flight (a line with several cameras)


@runtime_checkable
class StreamRunner(Protocol):
    """A model opened for throughput: up to ``streams`` requests in flight at once."""

    streams: int
    mode: str  # how, in words (e.g. "OpenVINO THROUGHPUT hint, 2 streams, 2 infer requests")

    def run_requests(self, batch: np.ndarray, n: int) -> list[float]:
        """Run ``batch`` ``n`` times with up to ``streams`` requests in flight; returns each request's
        latency in ms (submission to result in host memory), in completion order."""
        ...

    def close(self) -> None:
        ...


class ThreadedStreams:
    """The default throughput mode of every backend: ``streams`` runners of the same model, each driven
    by its own Python thread (the engines release the GIL while they compute). For ONNX Runtime these
    are parallel sessions; the threads of ``spec.threads`` are shared out between them."""

    def __init__(self, spec: RunnerSpec, streams: int) -> None:
        self.streams = max(1, streams)
        per = max(1, spec.threads // self.streams)
        self.mode = (f"{self.streams} parallel {spec.backend} sessions (one Python thread each), "
                     f"{per} intra-op thread(s) each")
        self._runners = [open_runner(dataclasses.replace(spec, threads=per)) for _ in range(self.streams)]

    def run_requests(self, batch: np.ndarray, n: int) -> list[float]:
        lock = threading.Lock()
        left = [n]
        out: list[float] = []
        errors: list[BaseException] = []

        def work(runner: Runner) -> None:
            while True:
                with lock:
                    if left[0] <= 0 or errors:
                        return
                    left[0] -= 1
                t0 = time.perf_counter_ns()
                try:
                    runner.run(batch)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    out.append((time.perf_counter_ns() - t0) / 1e6)

        threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in self._runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def close(self) -> None:
        for r in self._runners:
            r.close()
        self._runners = []


def open_streams(spec: RunnerSpec, streams: int | None = None) -> StreamRunner:
    """Open ``spec`` for throughput: the backend's own mode where it has one (OpenVINO's THROUGHPUT hint
    with asynchronous infer requests), else :class:`ThreadedStreams`. ``streams`` None: the backend
    chooses (OpenVINO) or one per thread of ``spec.threads``."""
    native = getattr(_module(spec.backend), "open_streams", None)
    if native is not None:
        return native(spec, streams)
    return ThreadedStreams(spec, streams or spec.threads)


# --------------------------------------------------------------------------------------------------
# Per-layer timings


def profile_layers(spec: RunnerSpec, batch: np.ndarray, calls: int = 50) -> dict[str, Any]:
    """Where one call's time goes, from the backend's own profiler, after a few warm-up calls.

    Returns ``{"tool": str, "calls": int, "layers": [{"name", "type", "kernel", "precision", "ms"}]}``
    with ``ms`` the layer's time per call (median over the calls where the profiler gives one per
    call); raises ``NotImplementedError`` for a backend without a profiler here.
    """
    fn = getattr(_module(spec.backend), "profile_layers", None)
    if fn is None:
        raise NotImplementedError(f"per-layer timings are not available for the {spec.backend} backend")
    return fn(spec, batch, calls)
