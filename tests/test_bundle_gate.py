"""``bundle`` ships only what passed its bench (issue 24, item 5): an unbenched, failed or re-exported
(stale report) target is refused with one line and exit 2 unless ``--allow-failed``, which bundle.json
records; and a policy without an ok class says what it will do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_tl.cli import main

# An impossible latency budget: the bench fails whenever it times the candidate, passes with --no-latency.
PROFILE = ('backend = "onnxruntime"\nprecision = "fp32"\nbatch_size = 2\nwarmup = 1\niterations = 5\n'
           "[gates]\nmax_p95_ms = 0.000001\n")


@pytest.fixture
def run(finetuned_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    from edge_tl.stages.export import export

    dest = tmp_path / "run"
    shutil.copytree(finetuned_run, dest)
    profile = tmp_path / "gate-ort.toml"
    profile.write_text(PROFILE)
    export(dest, str(profile))
    return dest, profile


def _bundle(run: Path, profile: Path, out: Path, *extra: str) -> list[str]:
    return ["bundle", str(run), "--target", str(profile), "--out", str(out), "--golden", "3", *extra]


def test_bundle_refuses_unbenched_failed_and_stale_targets(run: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.stages.export import export

    root, profile = run
    out = tmp_path / "bundle"
    # never benched
    assert main(_bundle(root, profile, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gate-ort has not been benched" in err[0] and "edge-tl bench" in err[0]
    assert "--allow-failed" in err[0] and not out.exists()
    # benched and failed
    assert main(["bench", str(root), "-t", str(profile), "-q"]) == 1
    capsys.readouterr()
    assert main(_bundle(root, profile, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gate-ort FAILED its bench (max_p95_ms" in err[0] and "> 1e-06" in err[0]
    assert not out.exists()
    # shipped anyway on request, and the bundle says so
    assert main(_bundle(root, profile, out, "--allow-failed")) == 0
    console = capsys.readouterr().err
    assert "shipped with --allow-failed: gate-ort FAILED its bench" in console
    # the tiny run's classes (horizontal, vertical, blobs) hold no ok class: say what that means
    assert "ok classes: none (no ok class: every part will be defect or review)" in console
    shipped = json.loads((out / "bundle.json").read_text())["bench"]
    assert shipped["allowed_failed"] is True and shipped["status"] == "failed"
    assert shipped["passed"] is False and shipped["failed_gates"] == ["max_p95_ms"]
    # an accuracy-only bench leaves the latency gate unjudged: no failed gate, so it ships
    assert main(["bench", str(root), "-t", str(profile), "--no-latency", "-q"]) == 0
    assert main(_bundle(root, profile, out)) == 0
    shipped = json.loads((out / "bundle.json").read_text())["bench"]
    assert shipped["passed"] is True and shipped["gates_not_measured"] == ["max_p95_ms"]
    assert "allowed_failed" not in shipped
    capsys.readouterr()
    # exported again after that bench: the report measured another export
    export(root, str(profile))
    assert main(_bundle(root, profile, tmp_path / "b2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured another export of gate-ort" in err[0]


def _float_graph_as_int8(run: Path, tmp_path: Path, fp32: str) -> Path:
    """An INT8 profile whose export is the fp32 target's (what a fallback that kept every layer float ships):
    its speed against fp32 is then set by the test, through its report."""
    from edge_tl.manifest import write_json
    from edge_tl.targets import get_target

    profile = tmp_path / "line3-int8.toml"
    profile.write_text('backend = "onnxruntime"\nprecision = "int8"\nwarmup = 1\niterations = 10\nbatch_size = 4\n'
                       '[quantizer]\nmethod = "onnx_qdq"\n')
    dest = run / "targets" / "line3-int8"
    shutil.copytree(run / "targets" / fp32, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    write_json(dest / "manifest.json", manifest | {"target": get_target(str(profile)).model_dump()})
    return profile


def _edit_report(run: Path, target: str, **candidate: object) -> dict:
    """Set candidate fields of a target's report; a ``gates`` keyword replaces its gates' verdicts. The rule
    under test reads the reports: the bench's own figures are tested where the bench is."""
    path = run / "reports" / f"{target}.json"
    report = json.loads(path.read_text())
    gates = candidate.pop("gates", None)
    report["candidate"] |= candidate
    if gates is not None:
        report["gates"] = gates
        report["passed"] = all(g["passed"] is not False for g in gates)
    path.write_text(json.dumps(report))
    return report


def test_bundle_ships_the_first_target_that_passed_and_int8_only_where_it_is_faster(
        run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .test_report_sets import _fast_profile

    root, gate = run
    fp32 = _fast_profile(tmp_path, "cpu-onnxruntime-fp32")
    assert main(["export", str(root), "--target", str(fp32), "--quiet"]) == 0
    int8 = _float_graph_as_int8(root, tmp_path, "cpu-onnxruntime-fp32")
    # one bench session, accuracy only (fast); then the figures the rule reads: gate-ort's latency budget
    # failed, and the two others' batch-1 p50
    assert main(["bench", str(root), "-t", str(gate), "-t", str(int8), "-t", str(fp32), "--no-latency", "-q"]) == 0
    _edit_report(root, "gate-ort", gates=[{"name": "max_p95_ms", "limit": 1e-06, "value": 2.5, "passed": False}])
    _edit_report(root, "cpu-onnxruntime-fp32", latency_ms={"p50": 2.0, "p95": 2.5})
    capsys.readouterr()
    out = tmp_path / "bundle"
    assert main(_bundle(root, gate, out, "--fallback", str(fp32))) == 0
    shipped = json.loads((out / "bundle.json").read_text())
    assert shipped["target"]["name"] == "cpu-onnxruntime-fp32"
    assert [n.split(" (")[0] for n in shipped["bench"]["passed_over"]] == ["gate-ort FAILED its bench"]
    assert "not shipped: gate-ort FAILED its bench" in capsys.readouterr().err
    # INT8 ships only where the same bench timed it faster than the fallback
    _edit_report(root, "line3-int8", latency_ms={"p50": 4.0, "p95": 5.0})
    assert main(_bundle(root, int8, out, "--fallback", str(fp32))) == 0
    shipped = json.loads((out / "bundle.json").read_text())
    assert shipped["target"]["name"] == "cpu-onnxruntime-fp32"
    assert shipped["bench"]["passed_over"][0].startswith("line3-int8 is not faster than cpu-onnxruntime-fp32")
    _edit_report(root, "line3-int8", latency_ms={"p50": 1.0, "p95": 1.5})
    assert main(_bundle(root, int8, out, "--fallback", str(fp32))) == 0
    shipped = json.loads((out / "bundle.json").read_text())
    assert shipped["target"]["name"] == "line3-int8" and "passed_over" not in shipped["bench"]
    # nothing passed: the first target's own refusal, one line, exit 2
    capsys.readouterr()
    assert main(_bundle(root, gate, tmp_path / "b3", "--fallback", str(gate))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "gate-ort FAILED its bench" in err[-1] and "refusing to bundle it" in err[-1]
