"""OpenVINO runner for an IR (.xml + .bin) or ONNX file, on CPU, GPU or NPU.

On CPUs with BF16 (AVX-512 BF16, AMX) OpenVINO runs "fp32" models in bf16 unless told otherwise, so
the precision hint is always set: an fp32 target really runs in fp32, and an INT8 graph's float parts
run in fp32 too, so the answers are the same on every x86 CPU, with or without BF16, and the
accuracy measured at export is the accuracy on the device. On the Zen 4 dev machine OpenVINO 2026.4
reported f32 as its own default for the INT8 graph, and interleaved timing showed no difference
(mobilenet_v2 INT8 p50 3.76 vs 3.65 ms); the hint matters on CPUs where OpenVINO would pick bf16.
The runner reports what ran (``precision``, ``float_precision``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import MissingExtraError, require
from ..base import RunnerSpec

_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}

# Why every OpenVINO call here goes through one ov.Core (``shared_core``), and NNCF's work through
# ``signal_stack_kept``: the segfault of issue 24 (finetune -> export cpu-openvino-int8 -> bench in one
# process, SIGSEGV with si_code SI_KERNEL while the main thread slept or waited for a child, or heap
# corruption found later by Python's allocator). OpenVINO's CPU plugin (2026.4, plugin.cpp
# ``SigAltStackSetup``) gives the thread that loads it, once per ov.Core, an alternate signal stack it
# mmaps, and on release puts back the stack it found, if its own is still installed, then unmaps its
# own. Two Cores alive at once and released in creation order (speed_check's float and INT8 runners in a
# dict, bench's candidate and float runners) leave the thread's alternate stack pointing at the first
# one's unmapped pages (seen under gdb: 0x7ffff79f6000, 11,568 bytes, not in /proc/self/maps). Python
# installs every signal handler with SA_ONSTACK, and fine-tuning with DataLoader workers leaves torch's
# SIGCHLD handler installed for good, so the next child to exit (bench's memory probe) made the kernel
# write the signal frame there: SIGSEGV when the pages were still unmapped, silent corruption of
# whatever had been mapped there since. Not two OpenMP runtimes, TBB or NNCF's torch backend: the stale
# stack is there after export with no torch DataLoader at all (workers=0 only hides it: no handler, so
# no signal frame), and under a gdb breakpoint on sigaltstack ONNX Runtime and NNCF's ONNX backend never
# call it. One Core for the process loads the plugin once and never releases it.
_CORE: Any = None
_CORE_LOCK = threading.Lock()


def shared_core() -> Any:
    """The process's one ``ov.Core`` (see above): runners, export checks and the quantiser all use it."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = require("openvino", "openvino").Core()
        return _CORE


_SS_DISABLE = 2  # sigaltstack's "no alternate stack" flag, the same on every Linux architecture


def _libc_stack() -> tuple[Any, Any] | None:
    """libc and its ``stack_t``, or None off Linux (OpenVINO's plugin sets the stack on Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    class StackT(ctypes.Structure):  # stack_t on every Linux ABI: pointer, int flags, size_t size
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    return ctypes.CDLL(None, use_errno=True), StackT


def _stack_now(libc: Any, stack_t: Any) -> Any:
    import ctypes

    now = stack_t()
    libc.sigaltstack(None, ctypes.byref(now))
    return now


def _usable(libc: Any, stack: Any) -> bool:
    """Off, or in mapped memory (msync fails with ENOMEM on an unmapped range)."""
    import ctypes
    import mmap

    if stack.ss_flags & _SS_DISABLE:
        return True
    sp = stack.ss_sp or 0
    start = sp - sp % mmap.PAGESIZE
    return libc.msync(ctypes.c_void_p(start), ctypes.c_size_t(sp + stack.ss_size - start), 1) == 0  # MS_ASYNC


def signal_stack_usable() -> bool:
    """Whether this thread's alternate signal stack is off or in mapped memory (a signal handled on an
    unmapped one kills the process with SIGSEGV); True where there is none to check."""
    api = _libc_stack()
    return api is None or _usable(api[0], _stack_now(*api))


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Run a block that may create and release ov.Cores we do not own (NNCF compiles through its own)
    and leave this thread's alternate signal stack as the block found it (see above), so a Core released
    out of order inside cannot leave it on unmapped memory. One already unusable is switched off."""
    import ctypes

    api = _libc_stack()
    if api is None:
        yield
        return
    libc, stack_t = api
    before = _stack_now(libc, stack_t)
    if not _usable(libc, before):
        before = stack_t(None, _SS_DISABLE, 0)
    try:
        yield
    finally:
        now = _stack_now(libc, stack_t)
        if (now.ss_sp, now.ss_flags, now.ss_size) != (before.ss_sp, before.ss_flags, before.ss_size):
            libc.sigaltstack(ctypes.byref(before), None)


def availability(device: str) -> str | None:
    try:
        devices = shared_core().available_devices
    except MissingExtraError:
        return "openvino is not installed (pip install 'edge-tl[openvino]')"
    if not any(d.split(".")[0] == device.upper().split(".")[0] for d in devices):
        return f"OpenVINO device {device} not present (have: {', '.join(devices)})"
    return None


def cpu_config(threads: int, precision: str) -> dict[str, object]:
    """The compile settings every OpenVINO CPU measurement uses (runner, export validation)."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _HINT.get(precision, "f32")}


def compile_static(core: Any, model: Any, shape: tuple[int, ...], device: str = "CPU",
                   config: dict[str, object] | None = None) -> Any:
    """Compile ``model`` for one fixed input ``shape``. The exported graph has a dynamic batch axis;
    OpenVINO's CPU plugin runs a static shape faster (pruned NEU mobilenet_v2 INT8 at batch 1, timed in
    alternating blocks: 2.59 vs 3.09 ms p50), and a camera always sends the same shape, so every
    OpenVINO measurement and the runtime compile per shape."""
    fixed = model.clone()
    fixed.reshape([int(d) for d in shape])
    return core.compile_model(fixed, device, config or {})


class OpenVINORunner:
    backend = "openvino"

    def __init__(self, spec: RunnerSpec) -> None:
        self._core = shared_core()
        self._device = spec.device.upper()
        self._model = self._core.read_model(str(spec.model_path))
        self._config = cpu_config(spec.threads, spec.precision) if self._device == "CPU" else {}
        self._requests: dict[tuple[int, ...], Any] = {}
        shape = self._model.inputs[0].get_partial_shape()
        first = tuple(1 if d.is_dynamic else d.get_length() for d in shape)  # batch 1: what a camera sends
        compiled = compile_static(self._core, self._model, first, self._device, self._config)
        self._requests[first] = compiled.create_infer_request()
        self.precision = spec.precision
        try:
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision_hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        except Exception:  # noqa: BLE001 - not every device reports it
            self.precision_hint = "unknown"
        self.float_precision = self.precision_hint
        if spec.precision == "fp32" and self.precision_hint in ("bf16", "f16"):
            # Report what really runs: a device that ignored the f32 hint is not an fp32 target.
            self.precision = {"bf16": "bf16", "f16": "fp16"}[self.precision_hint]

    def _infer(self, batch: np.ndarray) -> Any:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._requests.get(x.shape)
        if request is None:
            compiled = compile_static(self._core, self._model, x.shape, self._device, self._config)
            request = self._requests[x.shape] = compiled.create_infer_request()
        request.infer({0: x})
        return request

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self._infer(batch).get_output_tensor(0).data, dtype=np.float32)

    def run_outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in its order (an anomaly graph: logits, anomaly_map)."""
        request = self._infer(batch)
        return [np.array(request.get_output_tensor(i).data, dtype=np.float32)
                for i in range(len(self._model.outputs))]

    def close(self) -> None:
        self._requests.clear()
        self._model = None


def open(spec: RunnerSpec) -> OpenVINORunner:  # noqa: A001 - the backend table's entry point
    return OpenVINORunner(spec)


class OpenVINOStreams:
    """OpenVINO's own throughput mode: the ``THROUGHPUT`` performance hint (OpenVINO picks the number of
    streams and splits the threads between them) and an ``AsyncInferQueue`` of its optimal number of
    infer requests, all compiled for the batch's static shape."""

    def __init__(self, spec: RunnerSpec, streams: int | None = None) -> None:
        ov = require("openvino", "openvino")
        self._ov = ov
        self._core = shared_core()
        self._device = spec.device.upper()
        self._model = self._core.read_model(str(spec.model_path))
        config: dict[str, object] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if self._device == "CPU":
            config |= {"INFERENCE_NUM_THREADS": spec.threads,
                       "INFERENCE_PRECISION_HINT": _HINT.get(spec.precision, "f32")}
        if streams:
            config["NUM_STREAMS"] = streams
        self._config = config
        self._compiled: Any = None
        self._shape: tuple[int, ...] | None = None
        self.streams = streams or 0
        self.mode = "OpenVINO THROUGHPUT hint"

    def _queue(self, shape: tuple[int, ...]) -> Any:
        if self._shape != shape:
            self._compiled = compile_static(self._core, self._model, shape, self._device, self._config)
            jobs = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            try:
                self.streams = int(self._compiled.get_property("NUM_STREAMS"))
            except Exception:  # noqa: BLE001 - not every device reports it
                self.streams = jobs
            self._jobs = self._ov.AsyncInferQueue(self._compiled, jobs)
            self.mode = f"OpenVINO THROUGHPUT hint: {self.streams} stream(s), {jobs} asynchronous infer requests"
            self._shape = shape
        return self._jobs

    def run_requests(self, batch: np.ndarray, n: int) -> list[float]:
        import time

        x = np.ascontiguousarray(batch, dtype=np.float32)
        queue = self._queue(x.shape)
        started: dict[int, int] = {}
        out: list[float] = []

        def done(_request: Any, i: int) -> None:
            out.append((time.perf_counter_ns() - started[i]) / 1e6)

        queue.set_callback(done)
        for i in range(n):
            queue.get_idle_request_id()  # wait for a free request, so the clock starts at submission
            started[i] = time.perf_counter_ns()
            queue.start_async({0: x}, i)
        queue.wait_all()
        return out

    def close(self) -> None:
        self._jobs = None
        self._compiled = None
        self._model = None


def open_streams(spec: RunnerSpec, streams: int | None = None) -> OpenVINOStreams:
    return OpenVINOStreams(spec, streams)


def kernel_precision(exec_type: str, layer_type: str = "") -> str:
    """What an OpenVINO CPU kernel computes in, from its exec type (``brgconv_avx512_core_vnni_I8``)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    names = {"I8": "int8", "U8": "int8", "FP32": "fp32", "F32": "fp32", "BF16": "bf16", "FP16": "fp16",
             "F16": "fp16", "I32": "int32"}
    if layer_type == "FakeQuantize":
        return "int8<->fp32 conversion"
    return names.get(tail, tail.lower() or "?")


def profile_layers(spec: RunnerSpec, batch: np.ndarray, calls: int = 50) -> dict[str, object]:
    """Per-node real times from OpenVINO's performance counters (``PERF_COUNT``), median over ``calls``
    calls after 10 warm-up calls; compiled like the runner (latency hint, static shape)."""
    from collections import defaultdict

    ov = require("openvino", "openvino")
    core = shared_core()
    device = spec.device.upper()
    config = (cpu_config(spec.threads, spec.precision) if device == "CPU" else {}) | {"PERF_COUNT": True}
    x = np.ascontiguousarray(batch, dtype=np.float32)
    compiled = compile_static(core, core.read_model(str(spec.model_path)), x.shape, device, config)
    request = compiled.create_infer_request()
    for _ in range(10):
        request.infer({0: x})
    per_node: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    for _ in range(calls):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            per_node[info.node_name].append(info.real_time.total_seconds() * 1e3)
            meta[info.node_name] = (info.node_type, info.exec_type)
    layers = [{"name": n, "type": meta[n][0], "kernel": meta[n][1],
               "precision": kernel_precision(meta[n][1], meta[n][0]), "ms": float(np.median(v))}
              for n, v in per_node.items()]
    return {"tool": f"OpenVINO {ov.__version__} performance counters (median over {calls} calls)",
            "calls": calls, "layers": layers}
