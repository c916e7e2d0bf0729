"""Throughput modes (issue 12, item 10) and per-layer timings (item 11), on tiny hand-made graphs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_tl.backends import RunnerSpec, ThreadedStreams, open_runner, open_streams, profile_layers
from edge_tl.backends.onnxruntime_.runner import op_precision
from edge_tl.backends.openvino_.runner import kernel_precision
from edge_tl.bench.latency import measure_streams
from edge_tl.bench.report import layers_text
from edge_tl.bench.run import _layer_summary

from .tiny_graphs import tiny_ir, tiny_onnx


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    onnx_path = tiny_onnx(root / "model.onnx", (True, True))
    return {"onnx": onnx_path, "xml": tiny_ir(onnx_path, root / "model.xml")}


def test_threaded_streams_keep_several_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_tl.backends.base as base

    opened: list[int] = []

    class Sleepy:  # a stand-in runner: only the scheduling is under test
        backend, precision = "onnxruntime", "fp32"

        def __init__(self, spec: RunnerSpec) -> None:
            opened.append(spec.threads)

        def run(self, batch: np.ndarray) -> np.ndarray:
            time.sleep(0.05)
            return np.zeros((len(batch), 2), np.float32)

        def close(self) -> None:
            pass

    monkeypatch.setattr(base, "open_runner", lambda spec: Sleepy(spec))
    streams = ThreadedStreams(RunnerSpec(Path("m.onnx"), "onnxruntime", threads=4), streams=4)
    assert opened == [1, 1, 1, 1]  # the threads are shared out between the sessions
    t0 = time.perf_counter()
    lat = streams.run_requests(np.zeros((2, 3, 4, 4), np.float32), 16)
    wall = time.perf_counter() - t0
    assert len(lat) == 16 and min(lat) >= 45
    assert wall < 0.6  # 16 requests of 50 ms with 4 in flight: ~0.2 s, not 0.8 s one after the other


def test_onnxruntime_throughput_mode_runs_parallel_sessions(graphs: dict[str, Path]) -> None:
    spec = RunnerSpec(graphs["onnx"], "onnxruntime", "cpu", "fp32", threads=2, max_batch=4)
    batch = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    streams = open_streams(spec)
    try:
        assert isinstance(streams, ThreadedStreams) and streams.streams == 2
        result = measure_streams(streams, batch, seconds=0.3)
    finally:
        streams.close()
    assert result["batch"] == 4 and result["streams"] == 2 and "parallel onnxruntime sessions" in result["mode"]
    assert result["images_per_s"] == pytest.approx(result["requests"] * 4 / result["seconds"])
    assert result["ms_per_image"] == pytest.approx(1000 / result["images_per_s"])
    assert 0 < result["request_latency_ms"]["p50"] <= result["request_latency_ms"]["p95"]


def test_openvino_throughput_mode_uses_the_hint_and_async_requests(graphs: dict[str, Path]) -> None:
    spec = RunnerSpec(graphs["xml"], "openvino", "CPU", "fp32", threads=2, max_batch=4)
    batch = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    streams = open_streams(spec)
    try:
        lat = streams.run_requests(batch, 12)
        assert len(lat) == 12 and all(v > 0 for v in lat)
        assert "THROUGHPUT hint" in streams.mode and "asynchronous infer requests" in streams.mode
        assert streams.streams >= 1
        result = measure_streams(streams, batch, seconds=0.3)
    finally:
        streams.close()
    assert result["images_per_s"] > 0 and result["requests"] >= 8
    # the same answers as the latency-mode runner
    runner = open_runner(spec)
    try:
        assert runner.run(batch).shape == (4, 4)
    finally:
        runner.close()


@pytest.mark.parametrize(("key", "backend", "device"), [("onnx", "onnxruntime", "cpu"), ("xml", "openvino", "CPU")])
def test_layers_say_where_the_time_goes(graphs: dict[str, Path], key: str, backend: str, device: str) -> None:
    spec = RunnerSpec(graphs[key], backend, device, "int8", threads=2, max_batch=1)
    result = profile_layers(spec, np.zeros((1, 3, 16, 16), np.float32), calls=10)
    names = {r["name"] for r in result["layers"]}
    assert {"conv0", "conv1"} <= names  # the graph's own layer names
    assert all(r["ms"] >= 0 and r["precision"] for r in result["layers"])
    summary = _layer_summary(result, top=3)
    assert len(summary["top"]) == 3 and summary["top"][0]["ms"] >= summary["top"][-1]["ms"]
    assert sum(summary["by_precision"].values()) == pytest.approx(1.0)
    text = layers_text(summary)
    assert "Where the time goes" in text and "| precision |" in text and summary["top"][0]["name"] in text
    if backend == "openvino":  # the quantised convolutions run INT8 kernels
        convs = {r["name"]: r["precision"] for r in result["layers"] if r["type"] == "Convolution"}
        assert convs == {"conv0": "int8", "conv1": "int8"}


def test_precision_of_kernels_and_a_backend_without_profiler() -> None:
    assert kernel_precision("brgconv_avx512_core_vnni_I8") == "int8"
    assert kernel_precision("jit_avx512_FP32") == "fp32" and kernel_precision("brgemm_avx512_BF16") == "bf16"
    assert kernel_precision("ref_any_f32", "FakeQuantize") == "int8<->fp32 conversion"
    assert op_precision("QLinearConv") == "int8" and op_precision("MatMulInteger") == "int8"
    assert op_precision("FusedConv") == "fp32" and op_precision("DequantizeLinear") == "int8<->fp32 conversion"
    with pytest.raises(NotImplementedError, match="torch"):
        profile_layers(RunnerSpec(Path("x"), "torch"), np.zeros((1, 3, 4, 4), np.float32))
