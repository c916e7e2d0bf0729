"""One gate evaluator (issue 25, item 4): export's accuracy fallback and bench judge the same numbers
alike, exactly at a limit and a hair beyond it."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.bench.run import target_gates
from edge_tl.evalset import EvalSet
from edge_tl.gates import NOT_MEASURED, TOLERANCE, failed_text, verdicts
from edge_tl.stages.quantize.fallback import gate_values
from edge_tl.targets import Gates, get_target

# Four images, all right for the reference; the candidate gets the last one wrong: top-1 drop exactly
# 25.0 points, agreement exactly 0.75.
REF = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]] * 5
CAND = np.eye(2, dtype=np.float32)[[0, 1, 0, 0]] * 5
EVALSET = EvalSet(inputs=np.zeros((4, 3, 2, 2), np.float32), labels=np.array([0, 1, 0, 1]), logits=REF,
                  classes=["a", "b"], paths=[f"{i}.png" for i in range(4)], source="test")


def both(gates: Gates) -> tuple[bool, bool]:
    """(export fallback's verdict, bench's verdict) on the same candidate."""
    export = gate_values(CAND, EVALSET, gates)
    target = get_target("cpu-onnxruntime-fp32").model_copy(update={"gates": gates})
    bench = target_gates(target, {"max_top1_drop": export["top1_drop"], "min_agreement": export["agreement"]})
    return export["passed"], all(g["passed"] for g in bench)


def test_values_are_exact() -> None:
    values = gate_values(CAND, EVALSET, Gates())
    assert values["top1_drop"] == 25.0 and values["agreement"] == 0.75


@pytest.mark.parametrize(("gates", "passes"), [
    (Gates(max_top1_drop=25.0), True), (Gates(max_top1_drop=25.0 - 1e-12), True),
    (Gates(max_top1_drop=25.0 - 1e-6), False),
    (Gates(min_agreement=0.75), True), (Gates(min_agreement=0.75 + 1e-12), True),
    (Gates(min_agreement=0.75 + 1e-6), False),
    (Gates(max_top1_drop=25.0, min_agreement=0.75 + 1e-12), True),
    (Gates(max_top1_drop=25.0 - 1e-12, min_agreement=0.75 + 1e-6), False),
])
def test_export_and_bench_agree_at_the_limit(gates: Gates, passes: bool) -> None:
    """At the limit and 1e-12 beyond it (within the one tolerance) both pass; 1e-6 beyond, both fail."""
    export, bench = both(gates)
    assert export is bench is passes


def test_verdicts_rule_and_not_measured() -> None:
    limits = {"max_p95_ms": 2.0, "min_agreement": 0.9, "max_top1_drop": None, "max_auroc_drop": 0.01}
    got = verdicts(limits, {"max_p95_ms": 3.0, "min_agreement": 0.9 - TOLERANCE / 2}, not_measured=("max_p95_ms",))
    assert got == [{"name": "max_p95_ms", "limit": 2.0, "value": None, "passed": None, "status": NOT_MEASURED},
                   {"name": "min_agreement", "limit": 0.9, "value": 0.9 - TOLERANCE / 2, "passed": True}]
    assert verdicts({"max_p95_ms": 2.0}, {"max_p95_ms": None})[0]["passed"] is False
    assert verdicts({"max_p95_ms": 2.0}, {"max_p95_ms": 2.0 + 2 * TOLERANCE})[0]["passed"] is False


def test_a_failure_names_each_failed_gate_with_value_and_limit() -> None:
    gates = verdicts({"max_top1_drop": 2.0, "min_agreement": 0.98, "max_p95_ms": 5.0},
                     {"max_top1_drop": 5.0, "min_agreement": 0.95, "max_p95_ms": 1.0})
    text = failed_text({"target": "cpu-openvino-int8", "gates": gates, "passed": False})
    assert text == "cpu-openvino-int8 (max_top1_drop 5 > 2; min_agreement 0.95 < 0.98)"
    assert failed_text({"target": "t", "gates": [], "skipped": "export failed: x"}) == "t (export failed: x)"


def test_a_small_class_that_loses_its_recall_fails_the_balanced_accuracy_gate() -> None:
    """95 good parts and 5 defects, all right for the reference; the candidate calls 2 defects good. Top-1
    loses 2 points (inside its limit), balanced accuracy 20 (the defect class's recall 1.0 -> 0.6): export's
    fallback and bench both fail the balanced gate alone, with the same value."""
    labels = np.array([0] * 95 + [1] * 5)
    ref = np.eye(2, dtype=np.float32)[labels] * 5
    cand = ref.copy()
    cand[[95, 96]] = np.eye(2, dtype=np.float32)[0] * 5
    es = EvalSet(inputs=np.zeros((100, 3, 2, 2), np.float32), labels=labels, logits=ref, classes=["good", "defect"],
                 paths=[f"{i}.png" for i in range(100)], source="test")
    gates = Gates(max_top1_drop=2.0, max_balanced_accuracy_drop=4.0)
    export = gate_values(cand, es, gates)
    assert export["top1_drop"] == pytest.approx(2.0) and export["balanced_accuracy_drop"] == pytest.approx(20.0)
    assert not export["passed"] and export["failed"] == ["balanced accuracy drop 20.00 > 4 points"]
    target = get_target("cpu-onnxruntime-int8").model_copy(update={"gates": gates})
    bench = target_gates(target, {"max_top1_drop": export["top1_drop"],
                                  "max_balanced_accuracy_drop": export["balanced_accuracy_drop"]})
    assert [(g["name"], g["passed"]) for g in bench] == [("max_top1_drop", True), ("max_balanced_accuracy_drop", False)]
    # every shipped profile that gates top-1 gates balanced accuracy too, and no tighter than top-1
    for name in ("cpu-onnxruntime-int8", "cpu-openvino-int8", "cpu-onnxruntime-fp32", "gpu-tensorrt-fp16"):
        g = get_target(name).gates
        assert g.max_balanced_accuracy_drop is not None and g.max_balanced_accuracy_drop >= g.max_top1_drop
