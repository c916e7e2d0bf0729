"""TensorRT backend: what can be proven without TensorRT, and the hardware checks for where it exists.

Proven here: the symmetric INT8 QDQ graph a TensorRT device builds from is structurally ready (and
the uint8 / asymmetric / int32-bias / old-opset / wrong-axis graphs are flagged by name), that graph
keeps the float model's answers in ONNX Runtime, the fp16 graph a strongly typed TensorRT 11 build
needs keeps them too, the sidecar comparison refuses engines from another host with a rebuild
command, and TensorRT targets are skipped with the reason on a host without TensorRT. With a CUDA
GPU (and cuda-python) the CUDA buffer code runs for real; with TensorRT too, the engine build and
runner run end to end (no machine here has TensorRT: those tests skip).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edge_tl.errors import ArtifactError, EdgeTLError

from .conftest import make_image

# ORT's quantiser and torch's TorchScript exporter warn on every call; the tests check results.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# ----------------------------------------------------------------------------------------------------
# Graphs: a tiny float model and its quantised variants, made with ONNX Runtime's own quantiser
# ----------------------------------------------------------------------------------------------------

def _export_tiny(path: Path, dynamic: dict | None = None) -> None:
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
            self.fc = torch.nn.Linear(16, 5)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            return self.fc(torch.relu(self.c2(x)).mean((2, 3)))

    torch.manual_seed(0)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic is None else dynamic
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes=axes)


class _Reader:
    """Calibration batches for onnxruntime.quantization (one image each)."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter([{"input": b[None]} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed by MinMax, part of the reader protocol
        pass


# TensorRT's recipe: signed int8 both sides, symmetric (zero point 0), per-channel weights, float bias.
SYMMETRIC = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def _quantize(src: Path, dest: Path, calib: list[np.ndarray], *, unsigned: bool = False,
              per_channel: bool = True, extra: dict | None = None) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader = type("R", (_Reader, CalibrationDataReader), {})(calib)
    quantize_static(str(src), str(dest), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options=extra or {})
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trt_graphs")
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(16)]
    _export_tiny(d / "float.onnx")
    return {
        "float": d / "float.onnx",
        "s8": _quantize(d / "float.onnx", d / "s8.onnx", calib, extra=SYMMETRIC),
        "s8_pairs": _quantize(d / "float.onnx", d / "s8_pairs.onnx", calib,
                              extra={**SYMMETRIC, "AddQDQPairToWeight": True, "DedicatedQDQPair": True}),
        "u8": _quantize(d / "float.onnx", d / "u8.onnx", calib, unsigned=True),
        "s8_bias": _quantize(d / "float.onnx", d / "s8_bias.onnx", calib,
                             extra={"ActivationSymmetric": True, "WeightSymmetric": True}),
        "per_tensor": _quantize(d / "float.onnx", d / "per_tensor.onnx", calib, per_channel=False,
                                extra=SYMMETRIC),
    }


# ----------------------------------------------------------------------------------------------------
# backends/tensorrt_/ready: structural checks
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s8", "s8_pairs"])
def test_symmetric_qdq_graph_is_tensorrt_ready(tiny: dict[str, Path], name: str) -> None:
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready, summary

    assert check_tensorrt_ready(tiny[name], max_batch=32, require_quantized=True) == []
    s = summary(tiny[name], max_batch=32)
    assert s["tensorrt_ready"] and s["problems"] == []
    assert s["opset"] == 17 and s["input_shape"] == ["batch", 3, 32, 32]
    # Conv (BN folded in), grouped Conv and the Linear's Gemm: all per channel on their output axis.
    assert s["weight_dq"] == 3 and s["per_channel_weights"] == 3
    assert s["nonzero_zero_points"] == 0 and set(s["qdq_dtypes"]) == {"int8"}
    assert s["activation_qdq"] > 0


def _qdq_params(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Activation QuantizeLinear name -> (scale, zero point)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.name: (inits[n.input[1]], inits[n.input[2]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_nncf_unsigned_activations_become_signed_on_the_same_range(tiny: dict[str, Path], tmp_path: Path) -> None:
    from edge_tl.backends.onnxruntime_.nncf_onnx import nncf_quantize_onnx
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready

    calib = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    nncf_quantize_onnx(tiny["float"], tmp_path / "u.onnx", calib, signed=False)
    info = nncf_quantize_onnx(tiny["float"], tmp_path / "s.onnx", calib, signed=True)
    unsigned, signed = _qdq_params(tmp_path / "u.onnx"), _qdq_params(tmp_path / "s.onnx")
    assert "uint8 Q/DQ: TensorRT needs signed int8" in " ".join(check_tensorrt_ready(tmp_path / "u.onnx"))
    assert check_tensorrt_ready(tmp_path / "s.onnx", require_quantized=True) == []
    assert unsigned.keys() == signed.keys()
    made_signed = 0
    for name, (scale, zp) in unsigned.items():
        s_scale, s_zp = signed[name]
        assert s_zp.dtype == np.int8 and not s_zp.any()
        if zp.dtype == np.uint8:  # the top of the range is kept: 255 unsigned steps = 127 signed steps
            made_signed += 1
            np.testing.assert_allclose(s_scale * 127, scale * 255, rtol=1e-6)
        else:
            np.testing.assert_array_equal(s_scale, scale)
    assert made_signed == info["activation_quantizers_made_signed"] > 0
    x = calib[:8]
    ref = _ort(tiny["float"], x)
    for graph in ("u.onnx", "s.onnx"):  # both stay close to the float graph
        assert np.abs(_ort(tmp_path / graph, x) - ref).max() < 0.1 * np.abs(ref).max()


def test_uint8_asymmetric_graph_is_flagged(tiny: dict[str, Path]) -> None:
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready

    problems = check_tensorrt_ready(tiny["u8"])
    text = "\n".join(problems)
    assert "uint8 Q/DQ: TensorRT needs signed int8" in text
    assert "non-zero zero point (asymmetric)" in text
    assert re.search(r"input_QuantizeLinear=\d+", text)  # the node and its zero point
    assert "int32 bias DequantizeLinear" in text and "QuantizeBias=False" in text
    assert len(problems) == 3  # one line per kind of problem, naming the nodes


def test_int32_bias_and_per_tensor_weights_are_flagged(tiny: dict[str, Path]) -> None:
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready

    bias = check_tensorrt_ready(tiny["s8_bias"])
    assert len(bias) == 1 and bias[0].startswith("int32 bias DequantizeLinear") and "3 nodes" in bias[0]
    per_tensor = check_tensorrt_ready(tiny["per_tensor"])
    assert any(p.startswith("per-tensor weight DequantizeLinear") and "(Conv)" in p for p in per_tensor)


def test_wrong_axis_and_old_opset_are_flagged(tiny: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready

    model = onnx.load(str(tiny["s8"]))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights)
    next(a for a in dq.attribute if a.name == "axis").i = 1
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 12
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    problems = check_tensorrt_ready(path)
    assert problems[0].startswith("opset 12 is below 13")
    assert any("wrong axis: Conv weights hold their output channels on axis 0" in p and "(axis 1)" in p
               for p in problems)


def test_input_shape_rules(tiny: dict[str, Path], tmp_path: Path) -> None:
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready

    static = tmp_path / "static.onnx"
    _export_tiny(static, dynamic={})
    assert check_tensorrt_ready(static) == []  # a fixed batch of 1 is fine for batch-1 engines...
    assert any("fixed batch of 1" in p and "up to 8" in p for p in check_tensorrt_ready(static, max_batch=8))
    dyn_hw = tmp_path / "dyn_hw.onnx"
    _export_tiny(dyn_hw, dynamic={"input": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}})
    assert any("C, H and W must be fixed" in p for p in check_tensorrt_ready(dyn_hw))
    assert check_tensorrt_ready(tiny["float"]) == []  # the fp16 target ships the float graph
    assert "no Q/DQ nodes" in check_tensorrt_ready(tiny["float"], require_quantized=True)[0]


# ----------------------------------------------------------------------------------------------------
# Accuracy in ONNX Runtime of the graphs TensorRT would build from (real mobilenet_v2 weights)
# ----------------------------------------------------------------------------------------------------

def _images(pre, seeds: range) -> np.ndarray:
    return pre.batch([make_image(k, s) for s in seeds for k in range(3)])


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def test_symmetric_qdq_and_fp16_graphs_keep_the_answers_in_onnxruntime(finetuned_run: Path,
                                                                       tmp_path: Path) -> None:
    from edge_tl.backends.onnxruntime_.nncf_onnx import nncf_quantize_onnx
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready, float_type, summary, to_fp16
    from edge_tl.checkpoint import load_model
    from edge_tl.preprocess import Preprocess
    from edge_tl.stages.export import export_onnx

    model, manifest = load_model(finetuned_run / "finetune")
    pre = Preprocess.from_dict(manifest["preprocessing"])
    export_onnx(model, tmp_path / "float.onnx", pre.crop, 17)
    calib = _images(pre, range(900, 908))  # 24 images, none of them in the test set
    qdq = tmp_path / "model.onnx"
    info = nncf_quantize_onnx(tmp_path / "float.onnx", qdq, calib, signed=True)  # what TensorRT targets ship
    assert info["activation_quantizers_made_signed"] > 0  # NNCF made unsigned ones; TensorRT needs int8
    assert check_tensorrt_ready(qdq, max_batch=32, require_quantized=True) == []
    s = summary(qdq)
    assert s["per_channel_weights"] == s["weight_dq"] == 53  # 52 convs + the classifier's Gemm

    x = _images(pre, range(500, 516))  # 48 images
    ref = _ort(tmp_path / "float.onnx", x)
    int8 = _ort(qdq, x)
    agreement = float((int8.argmax(1) == ref.argmax(1)).mean())
    print(f"symmetric int8 QDQ vs float in ONNX Runtime: agreement {agreement:.3f} on {len(x)} images, "
          f"max |Δlogit| {np.abs(int8 - ref).max():.3f}")
    assert agreement >= 0.95

    half = to_fp16(tmp_path / "float.onnx", tmp_path / "model.fp16.onnx")
    assert float_type(half) == "fp16" and float_type(tmp_path / "float.onnx") == "fp32"
    fp16 = _ort(half, x)
    assert fp16.dtype == np.float32  # float32 I/O kept: the runner and eval.npz need no change
    assert float((fp16.argmax(1) == ref.argmax(1)).mean()) == 1.0
    assert np.abs(fp16 - ref).max() < 0.05


# ----------------------------------------------------------------------------------------------------
# Sidecar: engines built elsewhere are refused, with the rebuild command
# ----------------------------------------------------------------------------------------------------

ORIN = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
        "multiprocessor_count": 8, "board": "NVIDIA Jetson Orin Nano Developer Kit"}
RTX = {"tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
       "multiprocessor_count": 128, "board": None}


def test_sidecar_mismatches_is_a_pure_comparison() -> None:
    from edge_tl.backends.tensorrt_.sidecar import sidecar_mismatches

    sidecar = {**ORIN, "precision": "int8", "max_batch": 8, "onnx_sha256": "a" * 64,
               "engine_sha256": "b" * 64}
    assert sidecar_mismatches(sidecar, ORIN) == []
    same = {**ORIN, "onnx_sha256": "a" * 64, "precision": "int8", "max_batch": 4}
    assert sidecar_mismatches(sidecar, same) == []
    newer = sidecar_mismatches(sidecar, {**ORIN, "tensorrt_version": "10.7.0"})
    assert newer == ["TensorRT version: engine built with '10.3.0', this host has '10.7.0'"]
    other = sidecar_mismatches(sidecar, RTX)
    assert [m.split(":")[0] for m in other] == ["TensorRT version", "compute capability", "GPU", "SM count",
                                               "board"]
    # Same SoC, other module: CUDA calls every Orin "Orin", the SM count and board tell them apart.
    agx = sidecar_mismatches(sidecar, {**ORIN, "multiprocessor_count": 16, "board": "Jetson AGX Orin"})
    assert [m.split(":")[0] for m in agx] == ["SM count", "board"]
    stale = sidecar_mismatches(sidecar, {**ORIN, "onnx_sha256": "c" * 64, "precision": "fp16",
                                         "max_batch": 32})
    assert stale == ["the ONNX model changed since the engine was built",
                     "precision: engine built for 'int8', 'fp16' wanted",
                     "max batch: engine serves up to 8, 32 wanted"]
    assert sidecar_mismatches({}, ORIN)  # an empty sidecar vouches for nothing


def test_check_sidecar_refuses_an_engine_from_another_host(tmp_path: Path) -> None:
    from edge_tl.backends.tensorrt_.sidecar import check_sidecar, sidecar_path
    from edge_tl.manifest import sha256_file, write_json

    folder = tmp_path / "run" / "targets" / "jetson-orin-nano-int8"
    folder.mkdir(parents=True)
    onnx_path, engine = folder / "model.onnx", folder / "model.engine"
    onnx_path.write_bytes(b"the shipped QDQ graph")
    engine.write_bytes(b"a serialised plan")
    with pytest.raises(ArtifactError, match="has no sidecar"):
        check_sidecar(engine, ORIN)
    write_json(sidecar_path(engine), {**ORIN, "precision": "int8", "max_batch": 8,
                                      "onnx_sha256": sha256_file(onnx_path),
                                      "engine_sha256": sha256_file(engine)})
    assert sidecar_path(engine).name == "model.engine.json"
    ok = check_sidecar(engine, ORIN, onnx_path=onnx_path, precision="int8", max_batch=8)
    assert ok["gpu_name"] == "Orin"

    with pytest.raises(ArtifactError) as err:
        check_sidecar(engine, RTX, onnx_path=onnx_path, precision="int8", max_batch=8)
    msg = str(err.value)
    assert "TensorRT version: engine built with '10.3.0', this host has '11.4.0.106'" in msg
    assert "compute capability: engine built with '8.7', this host has '8.9'" in msg
    run = (tmp_path / "run").resolve()
    assert f"rebuild it on this device with `edge-tl export {run} --target jetson-orin-nano-int8`" in msg
    assert "\n" not in msg  # one readable line

    onnx_path.write_bytes(b"a re-exported graph")
    with pytest.raises(ArtifactError, match="the ONNX model changed since the engine was built"):
        check_sidecar(engine, ORIN, onnx_path=onnx_path)
    engine.write_bytes(b"another plan copied in by hand")
    with pytest.raises(ArtifactError, match="the engine file changed"):
        check_sidecar(engine, ORIN)


def test_engine_and_timing_cache_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_tl.backends.tensorrt_.build import default_timing_cache
    from edge_tl.backends.tensorrt_.sidecar import engine_path_for, rebuild_hint

    assert engine_path_for(tmp_path / "model.onnx").name == "model.engine"
    assert engine_path_for(tmp_path / "float.onnx").name == "float.engine"  # bench's float twin: no clash
    monkeypatch.setenv("EDGE_TL_CACHE", str(tmp_path))
    cache = default_timing_cache(ORIN)
    assert cache.parent == tmp_path / "edge-tl" / "tensorrt"
    assert cache.name == "timing-10.3.0-NVIDIA-Jetson-Orin-Nano-Developer-Kit-sm87.cache"
    assert "edge-tl export RUN --target TARGET" in rebuild_hint(tmp_path / "loose.engine")


# ----------------------------------------------------------------------------------------------------
# Skip path on a host without TensorRT
# ----------------------------------------------------------------------------------------------------

def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


needs_no_tensorrt = pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")


@needs_no_tensorrt
def test_availability_names_tensorrt_and_open_raises_missing_extra(tmp_path: Path) -> None:
    from edge_tl.backends import RunnerSpec, availability, open_runner
    from edge_tl.errors import MissingExtraError

    reason = availability("tensorrt", "cuda:0")
    assert reason is not None and reason.startswith("TensorRT is not installed")
    with pytest.raises(MissingExtraError, match=r"edge-tl\[tensorrt\]"):
        open_runner(RunnerSpec(tmp_path / "model.onnx", "tensorrt", "cuda:0", "fp16"))


@needs_no_tensorrt
def test_bench_skips_tensorrt_targets_with_the_reason(run_copy: Path) -> None:
    from edge_tl.backends.tensorrt_.ready import check_tensorrt_ready
    from edge_tl.bench.run import bench, bench_target
    from edge_tl.evalset import ensure_eval_set, load_eval_set
    from edge_tl.rundir import RunDir
    from edge_tl.stages.export import export
    from edge_tl.targets import get_target

    run = RunDir(run_copy)
    manifest = export(run_copy, "gpu-tensorrt-fp16")
    folder = run.target("gpu-tensorrt-fp16")
    assert manifest["model_file"] == "model.onnx" and (folder / "model.onnx").is_file()
    assert manifest["validation"]["backend"] == "onnxruntime"  # the shipped graph, checked on the CPU
    assert manifest["validation"]["agreement"] == 1.0
    assert check_tensorrt_ready(folder / "model.onnx", max_batch=32) == []
    assert not (folder / "model.engine").exists()  # engines are built on the device

    evalset = load_eval_set(ensure_eval_set(run))
    for name in ("gpu-tensorrt-fp16", "jetson-orin-nano-int8"):
        report = bench_target(run, get_target(name), evalset)
        assert report["skipped"].startswith("TensorRT is not installed"), report["skipped"]
        assert report["candidate"] is None and report["gates"] == []
    with pytest.raises(EdgeTLError, match="cannot bench gpu-tensorrt-fp16 here: TensorRT is not installed"):
        bench(run_copy, ["gpu-tensorrt-fp16"])


# ----------------------------------------------------------------------------------------------------
# On a CUDA GPU: the cuda-python half of the runner (no TensorRT needed)
# ----------------------------------------------------------------------------------------------------

def _gpu_or_skip() -> dict:
    from edge_tl.backends.tensorrt_ import host as t

    if t._cudart() is None:
        pytest.skip("cuda-python is not installed")
    try:
        return t.gpu_info(0)
    except EdgeTLError as exc:
        pytest.skip(f"no CUDA GPU: {exc}")


def test_no_gpu_is_reported_by_cuda_python() -> None:
    from edge_tl.backends.tensorrt_ import host as t

    if t._cudart() is None:
        pytest.skip("cuda-python is not installed")
    try:
        t.gpu_info(0)
    except EdgeTLError as exc:  # this CPU host: the real CUDA runtime's own error, one line
        assert "cudaGetDeviceCount" in str(exc) and "\n" not in str(exc)
    else:
        pytest.skip("a CUDA GPU is present")


def test_gpu_info_and_cuda_buffers_round_trip() -> None:
    info = _gpu_or_skip()
    from edge_tl.backends.tensorrt_.cuda_buffers import CudaIO, _check

    print(f"GPU: {info}")
    assert info["gpu_name"] and re.fullmatch(r"\d+\.\d+", info["compute_capability"])
    assert info["multiprocessor_count"] > 0
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    io = CudaIO(0, x.nbytes, x.nbytes)
    try:
        assert isinstance(io.stream_handle, int) and io.stream_handle != 0
        rt = io.rt
        for n in (8, 3, 1):  # smaller batches reuse the same buffers
            io.upload(x[:n])
            # A device-to-device copy on the same stream stands in for the engine's work.
            _check(rt.cudaMemcpyAsync(io.out.device, io.inp.device, x[:n].nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, io.stream), "D2D copy")
            y = io.download(np.float32, x[:n].shape)
            assert np.array_equal(y, x[:n])
        with pytest.raises(ValueError, match="do not fit"):
            io.upload(np.zeros((9, 3, 32, 32), np.float32))
    finally:
        io.close()
    io.close()  # idempotent


@needs_no_tensorrt
def test_gpu_without_tensorrt_is_skipped_for_tensorrt_alone() -> None:
    _gpu_or_skip()
    from edge_tl.backends.tensorrt_.host import availability

    assert availability("cuda:0") == availability("cuda") != None  # noqa: E711
    assert availability("cuda:0").startswith("TensorRT is not installed")
    assert "cuda-python" not in availability("cuda:0")


# ----------------------------------------------------------------------------------------------------
# On a device with TensorRT: build, sidecar and run end to end (skipped on every machine here)
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("graph,precision", [("float", "fp16"), ("s8", "int8")])
def test_engine_build_and_run_on_a_tensorrt_device(tiny: dict[str, Path], tmp_path: Path, graph: str,
                                                   precision: str) -> None:
    pytest.importorskip("tensorrt")
    _gpu_or_skip()
    import shutil

    from edge_tl.backends import RunnerSpec, open_runner
    from edge_tl.backends.tensorrt_.sidecar import check_sidecar, sidecar_path
    from edge_tl.manifest import read_json, write_json

    onnx_path = tmp_path / "model.onnx"
    shutil.copy(tiny[graph], onnx_path)
    spec = RunnerSpec(onnx_path, "tensorrt", "cuda:0", precision, max_batch=8,
                      options={"timing_cache": str(tmp_path / "timing.cache")})
    x = np.random.default_rng(1).standard_normal((11, 3, 32, 32)).astype(np.float32)
    runner = open_runner(spec)  # builds model.engine + sidecar
    try:
        got = runner.run(x)  # 11 > max_batch 8: run in slices
    finally:
        runner.close()
    ref = _ort(tiny[graph], x)  # the graph the engine was built from, run by ONNX Runtime
    assert got.shape == ref.shape and got.dtype == np.float32
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.8  # 11 inputs, a random tiny model
    sidecar = check_sidecar(tmp_path / "model.engine", onnx_path=onnx_path, precision=precision, max_batch=8)
    assert sidecar["precision"] == precision and (tmp_path / "timing.cache").is_file()
    open_runner(spec).close()  # second open loads the engine after checking the sidecar
    write_json(sidecar_path(tmp_path / "model.engine"),
               {**read_json(sidecar_path(tmp_path / "model.engine")), "tensorrt_version": "0.0"})
    with pytest.raises(ArtifactError, match=r"TensorRT version: engine built with '0\.0'"):
        open_runner(spec)
