"""A detection run through export, bench and the stages that refuse it yet (issue 27, follow-up; its bundle:
``test_detect_bundle.py``).

One tiny run (conftest ``detect_run``: 20 YOLO images at 64 px, one linear epoch) is copied for the module;
every step goes through the CLI, as a user runs it. The figures are not the point (one epoch finds little):
that the export answers as torch does, and that the reports say so in their typed fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .detect_data import CLASSES, write_set

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")
pytest.importorskip("onnxruntime")

# A float ONNX Runtime profile of the detection run's own: one thread and 20 timed calls (the built-in
# profile's 2 threads x 200 calls of torch eager took minutes on the 2 shared cores), with the mAP gate.
TINY_PROFILE = """\
name = "tiny-onnxruntime-fp32"
backend = "onnxruntime"
device = "cpu"
precision = "fp32"
batch_size = 4
threads = 1
warmup = 2
iterations = 20

[gates]
max_map_drop = 0.1
"""


@pytest.fixture(scope="module")
def run(detect_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    import shutil

    out = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(detect_run, out)  # the session's tiny run (conftest), trained once
    return out


@pytest.fixture(scope="module")
def exported(run: Path) -> dict[str, Any]:
    from edge_tl.cli import main

    assert main(["-q", "export", str(run), "--target", "cpu-onnxruntime-fp32"]) == 0
    return json.loads((run / "targets" / "cpu-onnxruntime-fp32" / "manifest.json").read_text())


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_export_writes_a_checked_detect_manifest(run: Path, exported: dict[str, Any]) -> None:
    from edge_tl.target_manifest import load_target_manifest

    m = exported
    assert m["task"] == "detect" and m["classes"] == CLASSES and m["source_stage"] == "finetune"
    assert m["model_file"] == "model.onnx" and set(m["files"]) == {"model.onnx"}
    assert m["preprocessing"]["crop"] == 64 and m["detect"]["num_classes"] == len(CLASSES)
    assert m["outputs"]["names"] == ["boxes", "scores"] and m["input_name"] == "input"
    assert set(m["postprocess"]) >= {"score_threshold", "iou_threshold", "max_detections"}
    v = m["validation"]
    ft = json.loads((run / "finetune" / "manifest.json").read_text())
    assert v["task"] == "detect" and v["backend"] == "onnxruntime" and v["passed"] is True
    assert v["n"] == ft["metrics"]["val_images"] and v["agreement"] >= 0.99
    assert v["map50_target"] == pytest.approx(v["map50_torch"], abs=1e-6)
    typed = load_target_manifest(run / "targets" / "cpu-onnxruntime-fp32")  # sha256 of every file checked
    assert type(typed.validation).__name__ == "DetectValidation"


def test_bench_reports_map_and_box_agreement(run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    from edge_tl.bench.schema import load_report
    from edge_tl.cli import main

    assert main(["-q", "bench", str(run), "--target", "cpu-onnxruntime-fp32", "--no-latency"]) == 0
    report = json.loads((run / "reports" / "cpu-onnxruntime-fp32.json").read_text())
    ref, cand = report["reference"], report["candidate"]
    ft = json.loads((run / "finetune" / "manifest.json").read_text())
    assert report["task"] == "detect" and report["n"] == ft["metrics"]["val_images"]
    # the reference is the fine-tune's own figure (original image pixels, the run's NMS)
    assert ref["map50"] == pytest.approx(ft["metrics"]["map50"], abs=1e-9)
    assert cand["map50"] == pytest.approx(ref["map50"], abs=1e-6)
    assert cand["map50_95"] == pytest.approx(ref["map50_95"], abs=1e-6)
    assert set(cand["per_class_ap50"]) == set(CLASSES) and abs(cand["map50_drop"]) <= 1e-4
    assert cand["box_agreement"] >= 0.99 and report["latency_measured"] is False
    assert load_report(run / "reports" / "cpu-onnxruntime-fp32.json").candidate.map50 == cand["map50"]
    md = (run / "reports" / "cpu-onnxruntime-fp32.md").read_text()
    assert "mAP@0.5" in md and "box agreement" in md
    assert "mAP@0.5" in (run / "reports" / "cpu-onnxruntime-fp32.html").read_text()
    assert (run / "reports" / "index.html").is_file()
    from edge_tl.bench.report import summary_table

    assert "| mAP@0.5 | mAP@0.5:0.95 | drop | box agreement |" in summary_table([report])


def test_bench_times_both_and_gates_the_map_drop(run: Path, tmp_path: Path) -> None:
    from edge_tl.cli import main

    profile = tmp_path / "tiny-onnxruntime-fp32.toml"
    profile.write_text(TINY_PROFILE)
    assert main(["-q", "export", str(run), "--target", str(profile)]) == 0
    assert main(["-q", "bench", str(run), "--target", str(profile), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference"]["latency_ms"]["n"] == report["candidate"]["latency_ms"]["n"] == 20
    assert report["speedup"] > 0 and report["timing_reliable"] in (True, False)
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_map_drop"]["passed"] is True and report["passed"] is True


def test_openvino_fp32_export(run: Path) -> None:
    pytest.importorskip("openvino")
    from edge_tl.cli import main

    assert main(["-q", "export", str(run), "--target", "cpu-openvino-fp32"]) == 0
    m = json.loads((run / "targets" / "cpu-openvino-fp32" / "manifest.json").read_text())
    assert m["task"] == "detect" and m["model_file"] == "model.xml"
    assert m["validation"]["backend"] == "openvino" and m["validation"]["passed"] is True
    assert m["validation"]["map50_target"] == pytest.approx(m["validation"]["map50_torch"], abs=1e-6)


@pytest.mark.parametrize(("argv", "words"), [
    (["export", "{run}", "--target", "gpu-tensorrt-int8"],
     "INT8 export of a detection run for tensorrt is not built yet"),
    (["export", "{run}", "--target", "cpu-openvino-int8", "--qat", "2"], "INT8 is post-training only"),
    (["prune", "{run}"], "prune does not take detection runs yet"),
    (["adapt", "{run}", "--unlabeled", "{tmp}"], "adapt does not take detection runs yet"),
])
def test_what_is_not_built_yet_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str], words: str) -> None:
    from edge_tl.cli import main

    capsys.readouterr()
    assert main(["-q", *[a.format(run=run, tmp=tmp_path) for a in argv]]) == 2
    err = _error(capsys)
    assert err.startswith("error: ") and words in err


def test_cli_finetune_detect_prints_map(tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    root = write_set(tmp_path / "voc", "voc", n=12, size=64)
    assert main(["finetune", str(root), "--task", "detect", "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--input-size", "64", "--batch-size", "6", "--mode", "linear"]) == 0
    out = " ".join(capsys.readouterr().err.split())  # the summary goes to stderr, as every console line
    assert "val mAP@0.5 " in out and "mAP@0.5:0.95" in out and "AP@0.5 per class (validation): bright" in out
