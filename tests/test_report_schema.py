"""The typed bench report and target manifest (issue 25, item 4): a misspelt or mistyped field is refused
before anything is written, and reports and manifests of earlier versions still load. Real bench runs are
checked where the bench tests run them (test_export_bench, test_anomaly, test_bench_flags)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_tl.bench.schema import Report, check_report, load_report
from edge_tl.bench.writer import write_reports
from edge_tl.errors import ArtifactError
from edge_tl.manifest import write_manifest
from edge_tl.target_manifest import check_target_manifest, load_target_manifest, read_target_manifest

from .test_anomaly_report import anomaly_report
from .test_html import skipped_report, synthetic_report

# A report as the first bench wrote it (commit 1678d40): the eval set a bare path; no task, session, date,
# host load, timing or balanced accuracy.
FIRST_BENCH = {
    "target": "cpu-onnxruntime-fp32", "profile": {"name": "cpu-onnxruntime-fp32"}, "eval_set": "/runs/x/eval.npz",
    "n": 9, "classes": ["a", "b", "c"], "host": {"cpu": "x", "cpu_count": 2}, "versions": {"python": "3.11"},
    "notes": [],
    "reference": {"format": "torch", "precision": "fp32", "top1": 1.0,
                  "latency_ms": {"p50": 9.0, "p90": 9.5, "p95": 9.8, "p99": 10.0, "mean": 9.1, "min": 8.7, "n": 20},
                  "throughput_ips": 100.0, "size_mb": 9.0},
    "candidate": {"format": "onnxruntime", "precision": "fp32", "top1": 1.0, "top1_drop": 0.0, "agreement": 1.0,
                  "per_class_recall": {"a": 1.0, "b": 1.0, "c": 1.0},
                  "confusion": [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
                  "latency_ms": {"p50": 2.0, "p90": 2.2, "p95": 2.3, "p99": 2.5, "mean": 2.1, "min": 1.9, "n": 20},
                  "throughput_ips": 500.0, "size_mb": 9.0, "peak_rss_mb": 300.0, "source_stage": "finetune",
                  "float_layers": None},
    "speedup": 4.5,
    "gates": [{"name": "max_top1_drop", "limit": 1.0, "value": 0.0, "passed": True}],
    "passed": True, "skipped": None,
}


@pytest.mark.parametrize("report", [FIRST_BENCH, synthetic_report(), skipped_report(), anomaly_report()],
                         ids=["first-bench", "classification", "skipped", "anomaly"])
def test_reports_of_every_kind_and_age_load(report: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    typed = load_report(path)
    assert typed.target == report["target"] and typed.passed is report["passed"]
    assert (typed.candidate is None) == (report["candidate"] is None)


@pytest.mark.parametrize(("where", "field"), [
    ((), "top1_dorp"),                        # a top-level field nobody reads
    (("gates", 0), "limits"),                 # a gate's
    (("candidate", "latency_ms"), "p59"),     # a latency figure's
])
def test_a_misspelt_field_is_refused_and_nothing_is_written(where: tuple[Any, ...], field: str,
                                                             tmp_path: Path) -> None:
    report = copy.deepcopy(synthetic_report())
    part = report
    for key in where:
        part = part[key]
    part[field] = 1.0
    with pytest.raises(ValidationError, match=field):
        write_reports(report, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_wrong_type_is_refused() -> None:
    report = copy.deepcopy(synthetic_report())
    report["candidate"]["top1"] = "high"
    with pytest.raises(ValidationError, match=r"candidate\.top1"):
        check_report(report)
    report = copy.deepcopy(synthetic_report())
    report["gates"][0]["passed"] = "maybe"
    with pytest.raises(ValidationError, match=r"gates\.0\.passed"):
        check_report(report)


def test_candidate_accepts_fields_added_later_and_types_the_known_ones() -> None:
    report = copy.deepcopy(synthetic_report())
    report["candidate"] |= {"npu_cycles": 1234, "agreement_confident": 1.0}  # a backend adds its own
    typed = Report.model_validate(report)
    assert typed.candidate is not None and typed.candidate.model_extra == {"npu_cycles": 1234}
    assert typed.candidate.agreement_confident == 1.0
    report["candidate"]["confident_n"] = "many"
    with pytest.raises(ValidationError, match="confident_n"):
        Report.model_validate(report)
    assert typed.candidate.latency_ms is not None and typed.candidate.latency_ms.p95 > 0


def test_a_report_that_does_not_fit_is_one_clear_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "cpu-openvino-int8.json"
    path.write_text(json.dumps(synthetic_report() | {"speedupp": 2.0}))
    with pytest.raises(ArtifactError, match=r"cpu-openvino-int8.json is not a bench report .*speedupp: unknown field"):
        load_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a bench report"):
        load_report(path)


def test_bundle_treats_a_report_it_cannot_read_as_no_bench(tmp_path: Path) -> None:
    from edge_tl.rundir import RunDir
    from edge_tl.stages.bundle import bench_verdict
    from edge_tl.targets import get_target

    run = RunDir(tmp_path / "run")
    run.reports.mkdir(parents=True)
    (run.reports / "cpu-openvino-int8.json").write_text(json.dumps(synthetic_report() | {"oops": 1}))
    facts, refusal = bench_verdict(run, get_target("cpu-openvino-int8"))
    assert facts["status"] == "not benched" and refusal is not None and "oops: unknown field" in refusal


def test_target_manifests_old_and_new(tmp_path: Path) -> None:
    # An export's manifest as early versions wrote it (no validation record, OOD or structure) still loads.
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"graph")
    write_manifest(old, "export", files=["model.onnx"], float_layers=[], fallback={"status": "passed"})
    assert load_target_manifest(old).files == {"model.onnx": read_target_manifest(old)["files"]["model.onnx"]}
    # ... but export itself must write every field it writes today, with the right types
    with pytest.raises(ValueError, match="lacks created, parent"):
        check_target_manifest({"stage": "export"})
    with pytest.raises(ValidationError, match=r"validation\.agreement"):
        check_target_manifest({"stage": "export", "validation": {"backend": "onnxruntime", "device": "cpu", "n": 3,
                                                                 "agreement": "all", "disagreements": 0,
                                                                 "max_abs_logit_diff": 0.0}})
    # a manifest that does not fit is an ArtifactError naming the file and the field
    bad = tmp_path / "bad"
    bad.mkdir()
    write_manifest(bad, "export", classes="abc")
    with pytest.raises(ArtifactError, match=r"bad/manifest.json is not a target manifest .*classes"):
        read_target_manifest(bad)
