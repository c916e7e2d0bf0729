"""INT8 export and bench of a detection run (issue 27): the classifier's quantisers and fallback, judged by mAP.

The tiny session run (``conftest.detect_run``: 20 synthetic images at 64 px, one linear epoch) is copied once
for the module; the profiles are the built-in x86 INT8 ones with a tiny calibration and timing (the figures
are not the point: that the export runs, chooses on the selection images, judges on the others and says so).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")
pytest.importorskip("onnxruntime")

PROFILE = """\
name = "{name}"
backend = "{backend}"
device = "{device}"
precision = "int8"
batch_size = 4
threads = 1
warmup = 1
iterations = 5

[quantizer]
method = "nncf"
calibration_size = 6

[gates]
max_map_drop = {limit}
"""


def profile(folder: Path, backend: str, limit: float = 1.0, name: str | None = None) -> Path:
    name = name or f"tiny-{backend}-int8"
    path = folder / f"{name}.toml"
    path.write_text(PROFILE.format(name=name, backend=backend, device="CPU" if backend == "openvino" else "cpu",
                                   limit=limit))
    return path


@pytest.fixture(scope="module")
def run(detect_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    dest = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(detect_run, dest)
    return dest


@pytest.fixture(scope="module")
def ort_int8(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edge_tl.cli import main

    prof = profile(tmp_path_factory.mktemp("profiles"), "onnxruntime")
    assert main(["-q", "export", str(run), "--target", str(prof)]) == 0
    return json.loads((run / "targets" / "tiny-onnxruntime-int8" / "manifest.json").read_text())


def _split(run: Path) -> dict[str, Any]:
    return json.loads((run / "finetune" / "split.json").read_text())


def _check_int8_manifest(run: Path, m: dict[str, Any], backend: str) -> None:
    from edge_tl.target_manifest import load_target_manifest

    split = _split(run)
    val = [r["path"] for r in split["val"]]
    fb, v = m["fallback"], m["validation"]
    assert m["task"] == "detect" and m["outputs"]["names"] == ["boxes", "scores"]
    assert m["quantizer"]["method"] == "nncf" and "float.onnx" in m["files"] and "calibration.json" in m["files"]
    # chosen on part of the validation images, judged on the rest: disjoint, together all of them
    chosen = fb["selection"]["images"]
    assert fb["selection"]["source"] == "validation split, selection part" and chosen and set(chosen) <= set(val)
    assert v["n"] == len(val) - len(chosen) == fb["held_out"]["n"] > 0 and v["selection_n"] == len(chosen)
    assert fb["status"] in ("not needed", "passed", "cannot pass") and "map50_drop" in fb["before"]
    # the verdict is mAP-judged, after NMS, against torch: recorded as the fp32 check is (DetectValidation)
    assert v["task"] == "detect" and v["backend"] == backend and v["match_iou"] == 0.5
    assert [g["name"] for g in v["gates"]] == ["max_map_drop"] and v["passed"] == v["gates"][0]["passed"]
    if v["map50_drop"] is not None:
        assert v["map50_drop"] == pytest.approx((v["map50_torch"] - v["map50_target"]) * 100, abs=1e-9)
    assert fb["held_out"]["passed"] == v["passed"]
    assert isinstance(m["float_layers"], list) and [r["name"] for r in m["float_layers"]] == fb["float_layers"]
    design = m["float_by_design"]["nodes"]
    assert design and not any(n.startswith(("/blocks", "/head/cls_tower/")) or n.endswith("/Conv") for n in design)
    # calibrated on training images only (none of the validation images), at the profile's count
    cal = json.loads((run / "targets" / m["target"]["name"] / "calibration.json").read_text())
    assert cal["n"] == m["calibration"]["n"] == 6 and cal["source"] == "train-split"
    assert {im["path"] for im in cal["images"]} <= {r["path"] for r in split["train"]}
    assert cal["selection"]["images"] == chosen
    typed = load_target_manifest(run / "targets" / m["target"]["name"])
    assert type(typed.validation).__name__ == "DetectValidation"


def test_onnxruntime_int8_export_is_judged_by_map(run: Path, ort_int8: dict[str, Any]) -> None:
    import onnx

    _check_int8_manifest(run, ort_int8, "onnxruntime")
    g = onnx.load(str(run / "targets" / "tiny-onnxruntime-int8" / "model.onnx")).graph
    made_by = {o: n for n in g.node for o in n.output}
    # the backbone is quantised, the decode after the head's last convolutions is not
    assert any(n.op_type == "QuantizeLinear" for n in g.node)
    decode = [n for n in g.node if n.op_type in ("Exp", "Sigmoid", "Sqrt")]
    assert decode and not any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear"
                              for n in decode for i in n.input)


def test_openvino_int8_export_is_judged_by_map(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from edge_tl.cli import main

    assert main(["-q", "export", str(run), "--target", str(profile(tmp_path, "openvino"))]) == 0
    m = json.loads((run / "targets" / "tiny-openvino-int8" / "manifest.json").read_text())
    _check_int8_manifest(run, m, "openvino")
    xml = (run / "targets" / "tiny-openvino-int8" / "model.xml").read_text()
    assert 'type="FakeQuantize"' in xml


def test_a_gate_nobody_meets_ships_the_best_measured_graph_and_says_it_fails(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every INT8 graph judged 50 points of mAP@0.5 below torch: the fallback searches, finds nothing that
    passes, ships the best graph it measured and says so; export exits 0 as a classifier's INT8 export does
    (bench fails the target)."""
    from edge_tl.cli import main
    from edge_tl.detect import quantize

    real = quantize.DetectJudge.values

    def handicapped(self: Any, images: Any, dets: list[Any]) -> dict[str, Any]:
        v = real(self, images, dets)
        if dets is images.reference:  # the float model against itself
            return v
        return quantize.map_gate_values(None if v["map50"] is None else v["map50"] - 0.5, v["reference_map50"],
                                        self.gates, map50_95=v["map50_95"], box_agreement=v["box_agreement"],
                                        box_match=v["box_match"])

    monkeypatch.setattr(quantize.DetectJudge, "values", handicapped)
    capsys.readouterr()
    assert main(["export", str(run), "--target", str(profile(tmp_path, "onnxruntime", name="tiny-never"))]) == 0
    out = " ".join(capsys.readouterr().err.split())
    m = json.loads((run / "targets" / "tiny-never" / "manifest.json").read_text())
    fb = m["fallback"]
    assert m["validation"]["passed"] is False and fb["status"] == "cannot pass"
    assert fb["shipped"] == "best measured" and "still fails" in fb["message"]
    assert fb["trials"] and all("map50_drop" in t for t in fb["trials"])  # the search was judged by mAP
    assert fb["held_out"]["passed"] is False and "mAP@0.5 drop" in fb["held_out"]["failed"][0]
    assert "FAILS its gate" in out


def test_bench_reports_int8_beside_fp32(run: Path, ort_int8: dict[str, Any], tmp_path: Path) -> None:
    from edge_tl.bench.schema import load_report
    from edge_tl.cli import main

    fp32 = tmp_path / "tiny-fp32.toml"
    fp32.write_text(PROFILE.replace('precision = "int8"', 'precision = "fp32"').replace(
        '[quantizer]\nmethod = "nncf"\ncalibration_size = 6\n', "").format(
        name="tiny-fp32", backend="onnxruntime", device="cpu", limit=100.0))
    assert main(["-q", "export", str(run), "--target", str(fp32)]) == 0
    int8 = profile(tmp_path, "onnxruntime")  # the module's export's profile, read again from its path
    code = main(["-q", "bench", str(run), "--target", str(fp32), "--target", str(int8), "--json",
                 str(tmp_path / "r.json")])
    reports = {r["target"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    f, q = reports["tiny-fp32"], reports["tiny-onnxruntime-int8"]
    assert code == (0 if f["passed"] and q["passed"] else 1)
    assert f["eval_set"]["sha256"] == q["eval_set"]["sha256"] and f["n"] == q["n"]  # the same images, one run
    c = q["candidate"]
    assert c["box_agreement"] is not None and {"map50", "map50_95", "map50_drop"} <= set(c)
    assert c["precision_state"]["layers"] >= c["precision_state"]["int8_layers"] >= 1
    held = c["held_out"]
    assert held["n"] == ort_int8["validation"]["n"] and held["selection_n"] == ort_int8["validation"]["selection_n"]
    gate = next(g for g in q["gates"] if g["name"] == "max_map_drop")
    assert gate["value"] == held["map50_drop"]  # the gate judges the images nothing was chosen on
    # latency beside the fp32 graph on the same backend, timed in the same run
    assert c["latency_ms"]["n"] == 5 and c["float_same_backend_p50_ms"] > 0 and c["int8_speedup_over_float"] > 0
    assert "held_out" not in f["candidate"] and f["candidate"].get("float_same_backend_p50_ms") is None
    assert load_report(run / "reports" / "tiny-onnxruntime-int8.json").candidate.int8_speedup_over_float
    md = (run / "reports" / "tiny-onnxruntime-int8.md").read_text()
    assert "held out" in md and "fp32 graph / INT8" in md


def test_an_int8_detection_bundle_answers_boxes_without_torch(run: Path, ort_int8: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """The INT8 target bundled (not benched: --allow-failed) answers with boxes in a process where torch cannot be
    imported: its golden boxes (computed at bundle time by the INT8 graph) reproduce, and a golden image's boxes
    are those the INT8 graph and the numpy NMS give."""
    import subprocess
    import sys

    from edge_tl.cli import main

    prof = profile(tmp_path, "onnxruntime")  # the module's export's profile, read again from its path
    floor = json.loads((run / "finetune" / "manifest.json").read_text())["postprocess"]["score_threshold"]
    out = tmp_path / "bundle"
    assert main(["-q", "bundle", str(run), "--target", str(prof), "--out", str(out), "--golden", "2",
                 "--defect-threshold", str(floor), "--allow-failed"]) == 0
    bm = json.loads((out / "bundle.json").read_text())
    assert bm["model"]["precision"] == "int8" and bm["task"] == "detect" and bm["detect"]["nms_inside"] is False
    image = out / bm["golden"]["images"][0]["file"]
    code = f"""
import json, sys
for name in ("torch", "torchvision", "openvino", "pycocotools", "edge_tl.training", "edge_tl.detect.ship"):
    sys.modules[name] = None  # any import of these raises ImportError
from edge_tl.runtime import open_bundle
with open_bundle({str(out)!r}) as rt:
    p = rt.predict({str(image)!r})
    print(json.dumps({{"golden": rt.golden_report["passed"], "boxes": p.to_dict()["boxes"],
                      "torch": sys.modules["torch"] is not None}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["golden"] is True and got["torch"] is False
    want = bm["golden"]["images"][0]["boxes"]
    assert len(got["boxes"]) == len(want) > 0
    assert [b["class"] for b in got["boxes"]] == [b["class"] for b in want]
    assert [b["score"] for b in got["boxes"]] == pytest.approx([b["score"] for b in want], abs=1e-4)


def test_quantisation_preprocessing_leaves_the_current_folder_clean(detect_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's symbolic shape inference gives up on the detector's graph and saves
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` in the current folder; the pre-processing runs elsewhere."""
    from edge_tl.backends.onnxruntime_.onnx_graph import preprocess_graph
    from edge_tl.checkpoint import load_model
    from edge_tl.detect.export import export_detector

    det, _ = load_model(detect_run / "finetune")
    src = export_detector(det, tmp_path / "float.onnx")
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    preprocess_graph(Path("..") / "float.onnx", Path("..") / "pre.onnx")  # relative paths still name the files
    assert (tmp_path / "pre.onnx").is_file() and src.is_file()
    assert sorted(p.name for p in here.iterdir()) == []


# ------------------------------------------------------------------ the pieces, without a run


def test_selection_and_verdict_split_the_validation_images() -> None:
    from edge_tl.detect.quantize import split_validation

    sel, ver = split_validation(9)
    assert sorted(sel + ver) == list(range(9)) and not set(sel) & set(ver) and len(sel) in (4, 5)
    assert split_validation(9) == (sel, ver)  # seeded
    assert split_validation(1) == ([0], [0])  # too few to split: said in the record


def test_the_decode_stays_float_and_boxes_and_scores_are_judged_together() -> None:
    from edge_tl.fixed_float import GraphView, float_names, judged

    names = ["/blocks.0/Conv", "/head/Add", "/head/cls_out/Conv", "Multiply_1", "/head/Mul", "/head/Exp", "/Sigmoid",
             "scores", "boxes"]
    view = GraphView({"/head/Add": ["/blocks.0/Conv"], "/head/cls_out/Conv": ["/head/Add"], "Multiply_1": ["/head/Add"],
                      "/head/Mul": ["Multiply_1"], "/head/Exp": ["/head/Mul"], "boxes": ["/head/Exp"],
                      "/Sigmoid": ["/head/cls_out/Conv"], "scores": ["/Sigmoid"]},
                     ["boxes", "scores"], frozenset({"/blocks.0/Conv", "/head/cls_out/Conv", "Multiply_1"}))
    # walked back from the outputs to the last convolutions, whatever a converter named them
    assert float_names({"boxes", "scores"}, names, view) == ["/head/Mul", "/head/Exp", "/Sigmoid", "scores", "boxes"]
    assert float_names({"logits"}, names, view) == []
    assert float_names({"boxes", "scores"}, names) == []  # counting layers: the last convolutions are quantised
    boxes, scores = np.full((2, 3, 4), 32.0, np.float32), np.full((2, 3, 2), 0.5, np.float32)
    packed = judged(["boxes", "scores"], [boxes, scores], 64)
    assert packed.shape == (2, 3, 6) and np.allclose(packed[..., :4], 0.5) and np.allclose(packed[..., 4:], 0.5)
    assert judged(["logits", "ood_score"], [scores[:, 0], boxes], 64).shape == (2, 2)


def test_the_map_gate_is_judged_in_points_and_ranks_failures() -> None:
    from edge_tl.stages.quantize.fallback import gate_margin, map_gate_values
    from edge_tl.targets import Gates

    gates = Gates(max_map_drop=1.0)
    ok, bad = map_gate_values(0.615, 0.62, gates), map_gate_values(0.60, 0.62, gates)
    assert ok["passed"] and ok["map50_drop"] == pytest.approx(0.5)
    assert not bad["passed"] and bad["failed"] == ["mAP@0.5 drop 2.00 > 1 points"]
    assert gate_margin(ok, gates) > 0 > gate_margin(bad, gates) > gate_margin(map_gate_values(0.5, 0.62, gates), gates)
    assert not map_gate_values(None, 0.62, gates)["passed"]


def test_targets_lists_the_detect_gate(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    assert main(["targets"]) == 0
    assert "mAP@0.5 drop≤1.0 pt" in " ".join(capsys.readouterr().out.split())


def _dets(rows: list[tuple[float, float, float, float, float, int]]) -> dict[str, np.ndarray]:
    a = np.array([r[:4] for r in rows], np.float32).reshape(-1, 4)
    return {"boxes": a, "scores": np.array([r[4] for r in rows], np.float32), "labels": np.array([r[5] for r in rows])}


def test_the_box_gate_counts_confident_boxes_only() -> None:
    """A candidate that loses a 0.08 box (noise at the score floor) keeps its confident agreement; one that loses
    a 0.9 box fails ``min_box_agreement`` and says so; both share the fallback's and bench's verdict function."""
    from edge_tl.detect.evaluate import box_figures
    from edge_tl.stages.quantize.fallback import gate_margin, map_gate_values
    from edge_tl.targets import Gates

    ref = [_dets([(10, 10, 50, 50, 0.9, 0), (60, 60, 90, 90, 0.08, 1)]),
           _dets([(5, 5, 30, 40, 0.7, 2)])]
    lost_low = [_dets([(11, 10, 50, 51, 0.85, 0)]), _dets([(5, 5, 30, 40, 0.72, 2)])]
    lost_sure = [_dets([(60, 60, 90, 90, 0.1, 1)]), _dets([(5, 5, 30, 40, 0.72, 2)])]
    gates = Gates(max_map_drop=1.0, min_box_agreement=0.9)
    low, sure = box_figures(lost_low, ref), box_figures(lost_sure, ref)
    assert low["box_agreement"] == pytest.approx(2 / 3) and low["box_agreement_confident"] == 1.0
    assert sure["box_agreement_confident"] == 0.5 and sure["confident_boxes"] == 2
    ok, bad = map_gate_values(0.6, 0.6, gates, **low), map_gate_values(0.6, 0.6, gates, **sure)
    assert ok["passed"] and [g["name"] for g in ok["gates"]] == ["max_map_drop", "min_box_agreement"]
    assert not bad["passed"] and bad["failed"] == ["box agreement on confident boxes 0.5000 < 0.9 (2 reference boxes)"]
    assert gate_margin(ok, gates) >= 0 > gate_margin(bad, gates)
    # no reference box at 0.3 or more (an untrained detector): the gate is not measured, neither passed nor failed
    faint = box_figures(lost_low, [_dets([(10, 10, 50, 50, 0.2, 0)]), _dets([])])
    unsure = map_gate_values(0.6, 0.6, gates, **faint)
    assert faint["box_agreement_confident"] is None and unsure["passed"]
    assert [g["passed"] for g in unsure["gates"]] == [True, None]


def test_a_profile_written_with_the_old_gate_name_still_loads(tmp_path: Path) -> None:
    from edge_tl.targets import load_target_file

    path = tmp_path / "old.toml"
    path.write_text(PROFILE.format(name="old", backend="onnxruntime", device="cpu", limit=0.7).replace(
        "max_map_drop", "max_map50_drop"))
    assert load_target_file(path).gates.max_map_drop == 0.7
