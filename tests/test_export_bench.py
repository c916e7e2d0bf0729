"""Export to ONNX / OpenVINO, bench against the reference, gates, and target profiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main
from edge_tl.errors import ConfigError
from edge_tl.targets import builtin_targets, get_target

from .conftest import write_folder


def test_targets_table_has_the_design_names(capsys: pytest.CaptureFixture[str]) -> None:
    names = {"cpu-onnxruntime-fp32", "cpu-onnxruntime-int8", "cpu-openvino-fp32", "cpu-openvino-int8",
             "arm64-onnxruntime-int8", "jetson-orin-nano-fp16", "jetson-orin-nano-int8", "gpu-tensorrt-fp16",
             "gpu-tensorrt-int8"}
    assert names <= set(builtin_targets())
    assert main(["targets"]) == 0
    assert main(["targets", "cpu-openvino-fp32"]) == 0
    shown = capsys.readouterr().out
    assert 'backend = "openvino"' in shown  # TOML a user can save as a profile


@pytest.mark.parametrize(("body", "key"), [
    ('backend = "onnxruntime"\nprecision = "fp32"\nbogus = 1\n', "bogus"),
    ('backend = "onnxruntime"\nprecision = "fp32"\nthreads = "two"\n', "threads"),
    ('backend = "onnxruntime"\nprecision = "fp32"\n[gates]\nmax_p95 = 3.0\n', "gates.max_p95"),
    ('backend = "cuda-magic"\nprecision = "fp32"\n', "backend"),
])
def test_profile_errors_name_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        get_target(str(path))
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_export_fp32_matches_torch_and_bench_passes(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    tdir = run_copy / "targets" / "cpu-onnxruntime-fp32"
    manifest = json.loads((tdir / "manifest.json").read_text())
    assert manifest["validation"]["agreement"] == 1.0
    assert manifest["validation"]["max_abs_logit_diff"] < 1e-3
    assert manifest["parent"]["path"].endswith("finetune/model.pt")
    import onnx

    graph = onnx.load(str(tdir / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    json_out = run_copy / "r.json"
    assert main(["bench", str(run_copy), "-t", "cpu-onnxruntime-fp32", "--json", str(json_out), "--quiet"]) == 0
    report = json.loads(json_out.read_text())
    assert report["candidate"]["agreement"] == 1.0 and report["candidate"]["top1_drop"] == 0.0
    for side in ("reference", "candidate"):
        assert set(report[side]["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
        assert report[side]["latency_ms"]["p50"] > 0
    assert report["speedup"] == pytest.approx(
        report["reference"]["latency_ms"]["p50"] / report["candidate"]["latency_ms"]["p50"])
    assert "alternating blocks" in report["timing"]
    calls = get_target("cpu-onnxruntime-fp32").iterations  # the profile's count
    assert report["reference"]["latency_ms"]["n"] == report["candidate"]["latency_ms"]["n"] == calls
    assert set(report["candidate"]["per_class_recall"]) == {"blobs", "horizontal", "vertical"}
    assert report["candidate"]["size_mb"] > 1 and report["candidate"]["peak_rss_mb"] > 10
    assert (run_copy / "reports" / "cpu-onnxruntime-fp32.md").read_text().count("|") > 20
    assert "speedup" in capsys.readouterr().out
    # the typed report and manifest (issue 25): what bench wrote loads, field for field as the JSON says
    from edge_tl.bench.schema import load_report
    from edge_tl.target_manifest import load_target_manifest

    typed = load_report(run_copy / "reports" / "cpu-onnxruntime-fp32.json")
    assert typed.task == "classification" and typed.skipped is None and typed.passed is True
    assert typed.candidate is not None and typed.candidate.latency_ms is not None
    assert typed.candidate.latency_ms.p95 == report["candidate"]["latency_ms"]["p95"]
    assert typed.candidate.target_manifest_sha256 == report["candidate"]["target_manifest_sha256"]
    assert [g.name for g in typed.gates] == [g["name"] for g in report["gates"]]
    tm = load_target_manifest(tdir)
    assert tm.validation is not None and tm.validation.agreement == 1.0 and tm.source_stage == "finetune"


def test_openvino_fp32_really_runs_fp32(run_copy: Path) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-openvino-fp32", "--quiet"]) == 0
    from edge_tl.backends import RunnerSpec, open_runner

    tdir = run_copy / "targets" / "cpu-openvino-fp32"
    runner = open_runner(RunnerSpec(tdir / "model.xml", "openvino", "CPU", "fp32", 2))
    assert "f32" in runner.precision_hint.lower()
    manifest = json.loads((tdir / "manifest.json").read_text())
    assert manifest["validation"]["agreement"] == 1.0


def test_failed_gate_exits_1_and_is_reported(run_copy: Path, tmp_path: Path) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    profile = tmp_path / "cpu-onnxruntime-fp32.toml"
    base = get_target("cpu-onnxruntime-fp32")
    profile.write_text(f'name = "{base.name}"\nbackend = "onnxruntime"\nprecision = "fp32"\niterations = 20\n'
                       "[gates]\nmax_p95_ms = 0.001\nmin_agreement = 1.0\n")
    assert main(["bench", str(run_copy), "-t", str(profile), "--quiet"]) == 1
    report = json.loads((run_copy / "reports" / "cpu-onnxruntime-fp32.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_p95_ms"]["passed"] is False and gates["max_p95_ms"]["limit"] == 0.001
    assert gates["min_agreement"]["passed"] is True
    assert report["passed"] is False


def test_bench_on_another_folder(run_copy: Path, tmp_path: Path) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    other = write_folder(tmp_path / "next_week", per_class=3, seed=7)
    assert main(["bench", str(run_copy), "-t", "cpu-onnxruntime-fp32", "--data", str(other), "--quiet"]) == 0
    # kept apart from the run's own reports (issue 12): reports/data-<name>-<sha8>/
    (path,) = (run_copy / "reports").glob("data-next_week-*/cpu-onnxruntime-fp32.json")
    report = json.loads(path.read_text())
    assert report["n"] == 9 and report["eval_set"]["folder"] == str(other.resolve())
    assert not (run_copy / "reports" / "cpu-onnxruntime-fp32.json").exists()
    wrong = write_folder(tmp_path / "wrong", classes=("x", "y"), per_class=2)
    assert main(["bench", str(run_copy), "-t", "cpu-onnxruntime-fp32", "--data", str(wrong), "--quiet"]) == 2


def test_all_targets_marks_unrunnable_ones_skipped(run_copy: Path) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    code = main(["bench", str(run_copy), "--all-targets", "--quiet"])
    assert code in (0, 1)
    reports = {p.stem: json.loads(p.read_text()) for p in (run_copy / "reports").glob("*.json")}
    assert reports["cpu-onnxruntime-fp32"]["skipped"] is None
    from edge_tl.bench.schema import Report

    skipped = Report.model_validate(reports["gpu-tensorrt-fp16"])  # a skipped target's report fits the model too
    assert skipped.candidate is None and skipped.passed is True and skipped.gates == []
    assert "TensorRT" in reports["gpu-tensorrt-fp16"]["skipped"] or "tensorrt" in reports["gpu-tensorrt-fp16"][
        "skipped"].lower()


def test_bench_without_torch_uses_eval_npz(run_copy: Path) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from edge_tl.cli import main\n"
        f"rc = main(['bench', {str(run_copy)!r}, '-t', 'cpu-onnxruntime-fp32', '--quiet'])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run_copy / "reports" / "cpu-onnxruntime-fp32.json").read_text())
    assert report["reference"]["latency_ms"] is None and report["candidate"]["agreement"] == 1.0
    assert any("no torch" in n for n in report["notes"])


def test_eval_npz_holds_reference_logits(run_copy: Path) -> None:
    from edge_tl.evalset import ensure_eval_set, load_eval_set
    from edge_tl.rundir import RunDir

    ev = load_eval_set(ensure_eval_set(RunDir(run_copy)))
    assert ev.inputs.dtype == np.float32 and ev.inputs.shape[1:] == (3, 224, 224)
    assert ev.logits.shape == (len(ev.labels), 3)
    assert len(ev.paths) == len(ev.labels) == 6


def test_export_without_finetune_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nothing"), "--target", "cpu-onnxruntime-fp32"]) == 2
    assert "edge-tl finetune" in capsys.readouterr().err


def test_paired_timing_alternates_blocks_so_both_see_every_period() -> None:
    import itertools
    import time

    from edge_tl.bench.latency import measure_paired

    calls: list[str] = []

    def runner(name: str, ms: float):  # a stand-in runner: only the timing helper is under test
        def run(x: np.ndarray) -> np.ndarray:
            calls.append(name)
            time.sleep(ms / 1000)
            return x
        return run

    ref, cand = measure_paired(runner("ref", 4.0), runner("cand", 1.0), np.zeros(1), warmup=2, iterations=40,
                               rounds=10)
    assert ref["n"] == cand["n"] == 40
    timed = calls[4:]  # after the warm-up calls
    # Ten blocks of each, alternating: every quarter of the measurement holds calls of both.
    switches = sum(a != b for a, b in itertools.pairwise(timed))
    assert switches == 19
    for part in np.array_split(np.asarray(timed), 4):
        assert {"ref", "cand"} <= set(part.tolist())
    assert 2.0 < ref["p50"] / cand["p50"] < 5.0
