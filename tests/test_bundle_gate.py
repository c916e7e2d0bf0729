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
