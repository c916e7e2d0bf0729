"""``bench`` flags and report facts (issue 24, items 7, 9, 12, 16, 17): ``--json`` with several targets,
the torch reference timed once per bench, ``--no-latency``, the candidate's stage (a pruned model's own
drop), the reference's per-class recall, and float-by-design layers in the INT8 count."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main

from .tiny_graphs import tiny_ir, tiny_onnx

PROFILE = ('backend = "onnxruntime"\nprecision = "fp32"\nbatch_size = 2\nwarmup = 1\niterations = 5\n'
           "[gates]\nmax_top1_drop = 50.0\nmax_p95_ms = 100000.0\n")


def _profiles(root: Path, *names: str, gates: bool = True) -> list[Path]:
    """Small user profiles (few timed calls: a shared 2-core machine), with a latency gate or none."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        (root / f"{name}.toml").write_text(PROFILE if gates else PROFILE.split("[gates]")[0])
        out.append(root / f"{name}.toml")
    return out


@pytest.fixture(scope="module")
def run(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A copy of the tiny run with two fp32 ONNX Runtime targets exported (shared by the tests here)."""
    from edge_tl.stages.export import export

    dest = tmp_path_factory.mktemp("flags") / "run"
    shutil.copytree(finetuned_run, dest)
    profiles = _profiles(dest.parent / "profiles", "flag-a", "flag-b")
    for p in profiles:
        export(dest, str(p))
    return dest, profiles


def test_json_with_several_targets_is_a_list_and_the_reference_is_timed_once(
        run: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, (a, b) = run
    out = tmp_path / "all.json"
    assert main(["bench", str(root), "-t", str(a), "-t", str(b), "--json", str(out), "-q"]) == 0
    capsys.readouterr()
    reports = json.loads(out.read_text())
    assert [r["target"] for r in reports] == ["flag-a", "flag-b"]  # one file, a list in bench order
    first, second = (r["reference"] for r in reports)
    # Item 12: one timing of torch, shared; two timings would never give the same samples.
    assert second["latency_ms"]["samples"] == first["latency_ms"]["samples"]
    assert "latency_shared" not in first and second["latency_shared"]["timed_with"] == "flag-a"
    assert "timed once" in reports[1]["timing"] and reports[1]["speedup_spread"] is None
    assert reports[1]["speedup"] == pytest.approx(second["latency_ms"]["p50"]
                                                  / reports[1]["candidate"]["latency_ms"]["p50"])
    md = (root / "reports" / "flag-b.md").read_text()
    assert "reference timed once, with flag-a, and shared" in md
    # Item 16: the reference's per-class recall is in the JSON and fills the Markdown column.
    recall = first["per_class_recall"]
    assert set(recall) == {"blobs", "horizontal", "vertical"}
    for cls, value in recall.items():
        assert f"| recall: {cls} | {value:.3f} |" in md


def test_no_latency_times_nothing_and_leaves_latency_gates_unjudged(
        run: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, (a, _) = run
    out = tmp_path / "one.json"
    assert main(["bench", str(root), "-t", str(a), "--no-latency", "--json", str(out)]) == 0
    console = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["reference"]["latency_ms"] is None and report["candidate"]["latency_ms"] is None
    assert report["candidate"]["throughput_ips"] is None and report["candidate"]["throughput_mode"] is None
    assert report["speedup"] is None and report["latency_measured"] is False
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_p95_ms"]["passed"] is None and gates["max_p95_ms"]["status"] == "not measured"
    assert gates["max_top1_drop"]["passed"] is True and report["passed"] is True
    assert "| max_p95_ms | 100000.000 | – | not measured |" in console.out
    assert "latency not measured (--no-latency)" in console.out
    assert "done:" in console.err and "latency not measured" in console.err and "p50" not in console.err
    html = (root / "reports" / "flag-a.html").read_text()
    assert "not measured" in html and "FAIL<" not in html
    # --layers times every layer: not with --no-latency (one line, exit 2)
    assert main(["bench", str(root), "-t", str(a), "--no-latency", "--layers", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-latency" in err[0]


def test_a_pruned_candidate_says_so_with_the_pruned_float_models_own_drop(
        finetuned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.stages.export import export
    from edge_tl.stages.prune import prune

    root = tmp_path / "run"
    shutil.copytree(finetuned_run, root)
    prune(root, 0.3, recover_epochs=0, device="cpu")  # BatchNorm statistics only: seconds
    [profile] = _profiles(tmp_path / "profiles", "pruned-ort", gates=False)
    assert export(root, str(profile))["source_stage"] == "prune"
    assert main(["bench", str(root), "-t", str(profile), "--no-latency"]) == 0
    console = capsys.readouterr()
    report = json.loads((root / "reports" / "pruned-ort.json").read_text())
    source = report["candidate"]["source"]
    assert source["stage"] == "prune" and source["ratio"] == pytest.approx(0.3)
    assert "pruned torch model" in source["float_from"]
    # the pruned fp32 torch model and its fp32 ONNX export agree, so their drops agree too
    assert source["float_top1_drop"] == pytest.approx(report["candidate"]["top1_drop"], abs=1e-6)
    said = f"the pruned float model alone: top-1 drop {source['float_top1_drop']:.2f} points"
    assert "candidate from prune (30 % of channels removed)" in console.err and said in console.err
    md = (root / "reports" / "pruned-ort.md").read_text()
    assert f"Candidate from prune (30 % of channels removed); {said}" in md
    assert re.search(r"\*\*(PASSED|FAILED)[^*]*\*\* \(candidate from prune", md)
    assert said in (root / "reports" / "pruned-ort.html").read_text()


def _with_ood_score(path: Path) -> Path:
    """tiny_onnx's two-conv graph, both convolutions INT8, plus an out-of-distribution score as the
    export makes it: two float MatMuls under /ood/ and an output named ood_score."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tiny_onnx(path, (True, True))
    model = onnx.load(str(path))
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.ones((4, 3), np.float32), "ood_w"),
                          numpy_helper.from_array(np.ones((3, 2), np.float32), "ood_w2")])
    g.node.extend([helper.make_node("MatMul", ["logits", "ood_w"], ["ood_a"], name="/ood/MatMul"),
                   helper.make_node("MatMul", ["ood_a", "ood_w2"], ["ood_b"], name="/ood/MatMul_1"),
                   helper.make_node("ReduceMin", ["ood_b"], ["ood_min"], name="/ood/ReduceMin", keepdims=0,
                                    axes=[1]),
                   helper.make_node("Sqrt", ["ood_min"], ["ood_score"], name="/ood/Sqrt")])
    g.output.append(helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, ["batch"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_int8_layer_count_names_the_ood_score_float_by_design(tmp_path: Path) -> None:
    from edge_tl.bench.precision import precision_state
    from edge_tl.bench.report import markdown

    onnx_path = _with_ood_score(tmp_path / "model.onnx")
    tiny_ir(onnx_path, tmp_path / "model.xml")
    want = "int8 (2 of 4 layers INT8; 2 float by design (OOD score))"
    for name, backend in (("model.onnx", "onnxruntime"), ("model.xml", "openvino")):
        state = precision_state(tmp_path, name, backend, {})
        assert state["label"] == want, backend
        assert state["float_by_design"] == 2 and state["precision"] == "int8"
    report = {"target": "t", "reference": {"format": "torch", "precision": "fp32"}, "gates": [], "passed": True,
              "candidate": {"format": "onnxruntime", "precision": "int8", "precision_state": state}}
    assert f"onnxruntime / {want}" in markdown(report)
