"""``edge-tl bench RUN --all-targets --export``: one command exports and benches every target this host
can run, skips the others with the reason, and says what it is doing all along (issue 12, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edge_tl.cli import main
from edge_tl.targets import builtin_targets, get_target, load_target_file


def _fast(tmp_path: Path, name: str) -> Path:
    base = Path(get_target(name).source).read_text()
    profile = tmp_path / f"{name}.toml"
    profile.write_text("warmup = 1\niterations = 10\nbatch_size = 2\n" + re.sub(r"(?m)^batch_size = \d+\n", "", base))
    return profile


def test_all_targets_export_exports_benches_and_skips_with_reasons(run_copy: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import edge_tl.bench.run as bench_run

    real = builtin_targets()
    # The CPU target cut down (a shared 2-core machine), and two this host cannot run: a GPU engine
    # and a profile made for ARM boards.
    chosen = {"cpu-onnxruntime-fp32": load_target_file(_fast(tmp_path, "cpu-onnxruntime-fp32")),
              "gpu-tensorrt-fp16": real["gpu-tensorrt-fp16"], "arm64-onnxruntime-int8": real["arm64-onnxruntime-int8"]}
    monkeypatch.setattr(bench_run, "builtin_targets", lambda: chosen)
    monkeypatch.setattr(bench_run.platform, "machine", lambda: "x86_64")
    assert not (run_copy / "targets").exists()
    code = main(["bench", str(run_copy), "--all-targets", "--export"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    # exported, then benched
    assert (run_copy / "targets" / "cpu-onnxruntime-fp32" / "manifest.json").is_file()
    reports = {p.stem: json.loads(p.read_text()) for p in (run_copy / "reports").glob("*.json") if p.stem != "index"}
    assert set(reports) == set(chosen)
    assert reports["cpu-onnxruntime-fp32"]["skipped"] is None and reports["cpu-onnxruntime-fp32"]["candidate"]
    assert "tensorrt" in reports["gpu-tensorrt-fp16"]["skipped"].lower()
    assert "arm64 profile" in reports["arm64-onnxruntime-int8"]["skipped"]
    assert not (run_copy / "targets" / "arm64-onnxruntime-int8").exists()  # never exported here
    # progress all along: one line per step, numbered per target
    lines = [ln for ln in out.err.splitlines() if ln.startswith("bench [")]
    for step in ("[1/3] cpu-onnxruntime-fp32: exporting", "[1/3] cpu-onnxruntime-fp32: exported",
                 "cpu-onnxruntime-fp32: memory", "cpu-onnxruntime-fp32: throughput mode",
                 "cpu-onnxruntime-fp32: done: top-1", "gpu-tensorrt-fp16: skipped:",
                 "arm64-onnxruntime-int8: skipped:"):
        assert any(step in ln for ln in lines), (step, lines)
    assert len(lines) >= 8
    # the console table: one row per target, with the skip reasons
    assert "| cpu-onnxruntime-fp32 |" in out.out and "skipped: an arm64 profile" in out.out


def test_export_of_an_explicit_target_host_cannot_run_is_one_line_exit_2(run_copy: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(run_copy), "-t", "gpu-tensorrt-fp16", "--export", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot bench gpu-tensorrt-fp16 here")
