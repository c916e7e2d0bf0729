"""A detection run exported for TensorRT with NMS inside the graph (issue 27), checked here on its stand-in.

The NMS graph (``detect.nms_graph.append_nms``) is checked exactly against the numpy NMS (``runtime.nms.nms``)
on made-up boxes where the answer is known: overlapping boxes of one class suppressed, of two classes kept, the
score threshold inclusive, the ``max_detections`` cap and its padding. The tiny detection run of
``conftest.detect_run`` is then exported for ``gpu-tensorrt-fp16`` (the graph, its manifest saying the NMS is
inside and why, the stand-in's check), bundled, and its bundle answers boxes through the runtime with ONNX
Runtime standing in for the TensorRT runner. The engine build itself needs TensorRT and is skipped without it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TARGET = "gpu-tensorrt-fp16"


def _box_graph(path: Path, k: int, c: int) -> Path:
    """A graph whose outputs ``boxes`` (B, k, 4) / ``scores`` (B, k, c) are its inputs ``bi`` / ``si``: the
    NMS appended to it sees exactly the boxes and scores a test feeds."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["bi"], ["boxes"]), helper.make_node("Identity", ["si"], ["scores"])], "g",
        [helper.make_tensor_value_info("bi", TensorProto.FLOAT, ["B", k, 4]),
         helper.make_tensor_value_info("si", TensorProto.FLOAT, ["B", k, c])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", "K", 4]),  # symbolic, as torch exports
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "K", "C"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path: Path, boxes: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"bi": boxes.astype(np.float32), "si": scores.astype(np.float32)})


def _same(a: Any, b: Any) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_nms_in_the_graph_equals_the_numpy_nms_on_known_boxes(tmp_path: Path) -> None:
    from edge_tl.detect.nms_graph import append_nms
    from edge_tl.runtime.nms import NMS_OUTPUTS, batched_nms, graph_detections

    # Image 0: boxes 0 and 1 overlap (IoU 0.81) and both are class 0: box 1 goes; box 2 overlaps box 0 as much but
    # is class 1: it stays; box 3 is alone, its class-1 score exactly the threshold (kept: ">= threshold");
    # box 4 scores just below everywhere (dropped). Image 1: nothing reaches the threshold (all padding).
    boxes = np.zeros((2, 5, 4), np.float32)
    boxes[0] = [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 9, 9], [30, 30, 40, 40], [50, 50, 60, 60]]
    boxes[1] = boxes[0]
    scores = np.zeros((2, 5, 2), np.float32)
    scores[0] = [[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.2, 0.25], [0.2499, 0.2499]]
    scores[1] = 0.1
    nms = {"score_threshold": 0.25, "iou_threshold": 0.5, "max_detections": 100}
    out = tmp_path / "nms.onnx"
    info = append_nms(_box_graph(tmp_path / "g.onnx", 5, 2), out, 5, 2, **nms)
    assert info["names"] == list(NMS_OUTPUTS) and info["max_detections"] == 10  # min(100, K * C)
    assert info["graph_score_threshold"] < 0.25 and np.float32(info["graph_score_threshold"]) < np.float32(0.25)
    outs = _run(out, boxes, scores)
    assert [o.dtype for o in outs] == [np.int32, np.float32, np.float32, np.int32]
    assert [o.shape for o in outs] == [(2,), (2, 10, 4), (2, 10), (2, 10)]
    inside, numpy_ = graph_detections(outs, True), batched_nms(boxes, scores, **nms)
    for a, b in zip(inside, numpy_, strict=True):
        _same(a, b)
    assert inside[0].labels.tolist() == [0, 1, 1] and inside[0].scores.tolist() == pytest.approx([0.9, 0.7, 0.25])
    assert outs[0].tolist() == [3, 0]
    # Padding: rows past num_detections are boxes 0, scores 0, class -1.
    assert not outs[1][0, 3:].any() and not outs[2][0, 3:].any() and (outs[3][0, 3:] == -1).all()
    assert (outs[3][1] == -1).all()


def test_max_detections_keeps_the_best_over_all_classes(tmp_path: Path) -> None:
    from edge_tl.detect.nms_graph import append_nms
    from edge_tl.runtime.nms import batched_nms, graph_detections

    rng = np.random.default_rng(0)
    k, c = 40, 3
    xy = rng.uniform(0, 60, (3, k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (3, k, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (3, k, c)).astype(np.float32)
    nms = {"score_threshold": 0.2, "iou_threshold": 0.45, "max_detections": 7}
    out = append_nms(_box_graph(tmp_path / "g.onnx", k, c), tmp_path / "nms.onnx", k, c, **nms)
    assert out["max_detections"] == 7
    inside = graph_detections(_run(tmp_path / "nms.onnx", boxes, scores), True)
    for a, b in zip(inside, batched_nms(boxes, scores, **nms), strict=True):
        assert len(b) == 7  # enough survivors: the cap binds
        _same(a, b)


def test_append_nms_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    from edge_tl.detect.nms_graph import append_nms
    from edge_tl.errors import ArtifactError

    g = _box_graph(tmp_path / "g.onnx", 5, 2)
    with pytest.raises(ValueError, match="thresholds in"):
        append_nms(g, tmp_path / "x.onnx", 5, 2, iou_threshold=1.5)
    model = onnx.load(str(g))
    model.opset_import[0].version = 11
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ArtifactError, match="opset 11"):
        append_nms(tmp_path / "old.onnx", tmp_path / "x.onnx", 5, 2)
    fixed = onnx.load(str(g))
    for out in fixed.graph.output:
        out.type.tensor_type.shape.dim[1].dim_value = 5  # K fixed in the graph, where an exporter fixes it
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    append_nms(tmp_path / "fixed.onnx", tmp_path / "x.onnx", 5, 2)
    with pytest.raises(ArtifactError, match=r"NMS needs \(B, 6, 4\)"):
        append_nms(tmp_path / "fixed.onnx", tmp_path / "x.onnx", 6, 2)  # the spec says 6 locations, the graph 5


def test_the_export_warns_only_where_tensorrts_candidate_limit_can_bind() -> None:
    from edge_tl.detect.nms_graph import topk_limit_warning

    assert topk_limit_warning(3000) is None  # NEU-DET at 320 px: 500 locations x 6 classes
    assert "at most 5000" in (topk_limit_warning(5001) or "")


# --------------------------------------------------------------------------------------------------
# the tiny run exported and bundled for TensorRT


@pytest.fixture(scope="module")
def shipped(detect_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    """{run, manifest, bundle, bundle_manifest}: a copy of the tiny detection run exported for
    gpu-tensorrt-fp16 (checked here on the stand-in) and bundled (not benched: --allow-failed)."""
    pytest.importorskip("torch")
    from tests.test_detect_bundle import export_and_bundle

    run, out = export_and_bundle(detect_run, tmp_path_factory.mktemp("detect-trt"), TARGET)
    return {"run": run, "manifest": json.loads((run / "targets" / TARGET / "manifest.json").read_text()),
            "bundle": out, "bundle_manifest": json.loads((out / "bundle.json").read_text())}


def test_tensorrt_export_ships_the_nms_graph_and_checks_it_on_the_stand_in(shipped: dict[str, Any]) -> None:
    from edge_tl.runtime.nms import NMS_OUTPUTS
    from edge_tl.target_manifest import load_target_manifest

    m, folder = shipped["manifest"], shipped["run"] / "targets" / TARGET
    load_target_manifest(folder)  # typed and hashed
    assert set(m["files"]) == {"model.onnx", "float.onnx"} and m["model_file"] == "model.onnx"
    out = m["outputs"]
    assert out["nms_inside"] is True and out["names"] == list(NMS_OUTPUTS)
    assert out["nms"].startswith("inside the graph") and "GPU" in out["nms"]  # says where and why
    post = json.loads((shipped["run"] / "finetune" / "manifest.json").read_text())["postprocess"]
    assert out["iou_threshold"] == post["iou_threshold"] and out["score_threshold"] == post["score_threshold"]
    model = onnx.load(str(folder / "model.onnx"))
    assert [o.name for o in model.graph.output] == list(NMS_OUTPUTS)
    assert sum(n.op_type == "NonMaxSuppression" for n in model.graph.node) == 1
    assert not any(n.domain not in ("", "ai.onnx") for n in model.graph.node)  # no plugin: ORT runs it
    assert m["tensorrt_graph"]["tensorrt_ready"] and "engine" not in m  # no TensorRT here: nothing built
    v = m["validation"]
    assert (v["backend"], v["device"]) == ("onnxruntime", "cpu") and v["passed"]
    nc = v["nms_check"]
    assert nc["passed"] and nc["images"] == v["n"] and nc["differing_detections"] == 0 and nc["detections"] > 0


def test_the_nms_check_counts_a_differing_detection() -> None:
    from edge_tl.detect.ship import nms_check
    from edge_tl.runtime.nms import batched_nms

    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    nms = {"score_threshold": 0.5, "iou_threshold": 0.5, "max_detections": 10}
    same = batched_nms(boxes, scores, **nms)
    assert nms_check(same, (boxes, scores), nms)["passed"]
    moved = batched_nms(boxes, scores, **nms)
    moved[0].scores = moved[0].scores + np.float32(0.01)
    r = nms_check(moved, (boxes, scores), nms)
    assert r["differing_detections"] == 2 and r["differing_images"] == 1 and not r["passed"]


def test_tensorrt_detect_bundle_answers_boxes_through_the_runtime(shipped: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime reads the graph's padded detections (``detect.nms_inside``), here with ONNX Runtime standing in
    for the TensorRT runner on the bundle's own model.onnx: the golden boxes (computed by the stand-in at bundle
    time) reproduce, and predict answers the boxes the numpy NMS gives on the graph without NMS."""
    import edge_tl.runtime.core as core
    from edge_tl.backends import open_runner
    from edge_tl.detect.export import onnx_outputs
    from edge_tl.runtime.nms import batched_nms

    bm, b = shipped["bundle_manifest"], shipped["bundle"]
    assert bm["model"]["backend"] == "tensorrt" and bm["detect"]["nms_inside"] is True
    assert bm["golden"]["expected_from"]["backend"] == "onnxruntime"
    opened: list[Any] = []

    def stand_in(spec: Any) -> Any:
        opened.append(spec)
        return open_runner(replace(spec, backend="onnxruntime", device="cpu"))

    monkeypatch.setattr(core, "availability", lambda backend, device: None)
    monkeypatch.setattr(core, "open_runner", stand_in)
    image = b / bm["golden"]["images"][0]["file"]
    with core.Runtime(b, engine_cache=tmp_path / "engines") as rt:
        assert rt.nms_inside and rt.golden_report is not None and rt.golden_report["passed"]
        x, size = rt.prepare_sized(image)
        got = rt.detect(x[None], [size])[0]
        pred = rt.predict(image)
    assert opened and opened[0].model_path.parent.parent == tmp_path / "engines"  # the engine cache's copy
    raw = onnx_outputs(shipped["run"] / "targets" / TARGET / "float.onnx", x[None])
    want = batched_nms(*raw, **bm["detect"]["nms"])[0]
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert pred.boxes is not None and len(pred.boxes) == len(want)


def test_tensorrt_int8_of_a_detection_run_is_refused_in_one_line() -> None:
    from edge_tl.detect.ship import check_detect_target
    from edge_tl.errors import ConfigError
    from edge_tl.targets import get_target

    check_detect_target(get_target("gpu-tensorrt-fp16"))
    check_detect_target(get_target("jetson-orin-nano-fp16"))
    for name in ("gpu-tensorrt-int8", "jetson-orin-nano-int8"):
        with pytest.raises(ConfigError, match="INT8 export of a detection run for tensorrt is not built yet") as e:
            check_detect_target(get_target(name))
        assert "\n" not in str(e.value)


def test_the_engine_builds_from_the_nms_graph(shipped: dict[str, Any], tmp_path: Path) -> None:
    """Needs TensorRT (8.5 or newer: NonMaxSuppression as an INMSLayer) and a GPU; skipped here."""
    pytest.importorskip("tensorrt")
    from edge_tl.backends.tensorrt_.build import build_engine

    side = build_engine(shipped["run"] / "targets" / TARGET / "model.onnx", tmp_path / "model.engine", "fp16", 4)
    assert (tmp_path / "model.engine").is_file() and side["precision"] == "fp16"
