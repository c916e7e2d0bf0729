"""INT8 float layers are chosen on a selection set of training images; validation only judges, held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_tl.backends.onnxruntime_.onnx_graph import logits as _ort_logits
from edge_tl.calibration import SELECTION_CALIBRATION, SELECTION_TRAIN
from edge_tl.evalset import EvalSet, ensure_eval_set, load_eval_set
from edge_tl.manifest import read_json, sha256_file
from edge_tl.rundir import RunDir
from edge_tl.stages.export import export
from edge_tl.stages.quantize import gate_values
from edge_tl.targets import get_target
from tests import test_quantize
from tests.test_quantize import near_tie_eval, profile, quantize, selection_of

# Fixtures shared with test_quantize: a copy of the tiny run with its float.onnx, and the fixed ×1 error
# scale for selection sets made of near-ties.
prepared = test_quantize.prepared
unscaled_selection = test_quantize.unscaled_selection


# The held-out logic is the same for every quantiser: these tests take ORT's QDQ path (seconds; NNCF's bias
# correction takes a minute on 2 cores) with gates every graph passes, unless the test needs a miss.
QDQ = {"method": "onnx_qdq"}
LOOSE = {"max_top1_drop": 100.0, "min_agreement": 0.0}


def _validation_hashes(run: RunDir) -> set[str]:
    split = read_json(run.finetune / "split.json")
    return {sha256_file(Path(split["root"]) / p) for p, _ in split["val"]}


def test_selection_is_disjoint_and_the_verdict_is_measured_on_validation(run_copy: Path, tmp_path: Path) -> None:
    run = RunDir(run_copy)
    target = profile(tmp_path, "cpu-onnxruntime-int8", quantizer=QDQ, gates=LOOSE)
    m = export(run_copy, target)
    folder = run.target("cpu-onnxruntime-int8")
    cal = json.loads((folder / "calibration.json").read_text())
    selected = {im["sha256"] for im in cal["selection"]["images"]}
    calibrated = {im["sha256"] for im in cal["images"]}
    assert cal["selection"]["source"] == SELECTION_TRAIN and len(selected) == cal["selection"]["n"] >= 20
    assert not selected & calibrated
    assert not selected & _validation_hashes(run)
    fb = m["fallback"]
    assert fb["selection"]["source"] == SELECTION_TRAIN and fb["selection"]["n"] == len(selected)
    assert "selection images" in fb["measured_on"]
    # The verdict is the shipped graph's, on every validation image (what bench reports), unscaled.
    es = load_eval_set(ensure_eval_set(run))
    # The shipped graph's answer noise, measured on the selection images (never validation), is in the
    # manifest; validation's answers are split at it.
    noise = m["answer_noise"]
    assert noise["value"] >= 0 and noise["n"] == len(selected) and "selection images" in noise["measured_on"]
    assert fb["answer_noise"] == noise
    want = gate_values(_ort_logits(str(folder / "model.onnx"), es.inputs, 2, 8), es, get_target(target).gates,
                       noise["value"])
    held = fb["held_out"]
    assert held["n"] == len(es.labels)
    for key in ("top1", "top1_drop", "agreement", "agreement_confident", "near_tie_n", "answer_noise", "passed"):
        assert held[key] == pytest.approx(want[key]), key
    assert "validation" in held["measured_on"]
    # Bench splits at the same recorded number and judges with the same evaluator: the same figures.
    from edge_tl.bench.run import bench_target

    report = bench_target(run, get_target(target), es, memory=False, throughput_s=0, latency=False)
    cand = report["candidate"]
    for key in ("agreement", "agreement_confident", "near_tie_n", "near_tie_agreement", "answer_noise"):
        assert cand[key] == held[key], key
    gate = next(g for g in report["gates"] if g["name"] == "min_agreement")
    assert gate["value"] == held["agreement_confident"] and "confident answers" in gate["on"]
    assert cand["agreement_curve"] and cand["agreement_curve"][0]["margin"] == 0.0
    # The drop this graph's noise gives on random images, beside the measured one (the same drop).
    chance = cand["top1_drop_from_noise"]
    assert chance["measured"] == pytest.approx(cand["top1_drop"]) and chance["interval"][0] <= chance["mean"]
    assert chance["mean"] <= chance["interval"][1] and 0.0 <= chance["p_value"] <= 1.0


def test_a_training_split_too_small_for_a_disjoint_set_selects_on_calibration_images(
        prepared: dict[str, Any], tmp_path: Path) -> None:
    # Calibration takes every training image: nothing is left that is neither calibration nor validation.
    target = profile(tmp_path, "cpu-onnxruntime-int8", quantizer=QDQ | {"calibration_size": 10_000}, gates=LOOSE)
    _, m = quantize(prepared, target, tmp_path / "target")
    sel = m["fallback"]["selection"]
    assert sel["source"] == SELECTION_CALIBRATION and sel["disjoint_from_calibration"] is False
    assert "calibration images" in sel["note"] and sel["n"] == m["calibration"]["n"]
    assert m["fallback"]["held_out"]["n"] == len(prepared["evalset"].labels)


def test_selection_passes_but_held_out_fails_is_reported_not_searched_again(
        prepared: dict[str, Any], tmp_path: Path, run_copy: Path, unscaled_selection: None) -> None:
    # Near-ties the INT8 graph flips (found with a probe quantisation: the same calibration images give the
    # same graph) go to validation; near-ties it keeps make the selection set. All-INT8 then passes where
    # it is chosen and fails held out.
    pool, pool_logits, classes = near_tie_eval(run_copy)
    probe_set = EvalSet(pool, pool_logits.argmax(1), pool_logits, classes, [], "near-ties")
    quantize(prepared, profile(tmp_path, "cpu-onnxruntime-int8", quantizer=QDQ | {"accuracy_fallback": False}),
             tmp_path / "probe", evalset=probe_set)
    want = pool_logits.argmax(1)
    float_ok = _ort_logits(str(tmp_path / "probe" / "float.onnx"), pool, 2, 8).argmax(1) == want
    int8_ok = _ort_logits(str(tmp_path / "probe" / "model.onnx"), pool, 2, 8).argmax(1) == want
    flipped, steady = np.flatnonzero(float_ok & ~int8_ok), np.flatnonzero(float_ok & int8_ok)
    assert len(flipped) and len(steady) >= 8, f"precondition: {len(flipped)} flipped, {len(steady)} steady"
    held = np.concatenate([flipped[:4], steady[len(steady) // 2:][:8]])
    held_out = EvalSet(pool[held], want[held], pool_logits[held], classes, [], "near-ties")
    chosen_on = steady[:len(steady) // 2]
    # 10 points: above what the selection images' tiny margin changes are expected to lose on validation
    # (judged where the layers are chosen), below the 4 of 12 flips held out (33 points).
    tight = profile(tmp_path, "cpu-onnxruntime-int8", quantizer=QDQ,
                    gates={"max_top1_drop": 10.0, "max_balanced_accuracy_drop": 100.0, "min_agreement": 1.0})
    out = tmp_path / "target"
    _, m = quantize(prepared, tight, out, evalset=held_out,
                    selection=selection_of(pool[chosen_on], pool_logits[chosen_on], classes))
    fb = m["fallback"]
    assert fb["status"] == "not needed" and fb["before"]["passed"] and m["float_layers"] == []
    assert "candidates" not in fb  # nothing was ranked or searched, on either set
    assert [t["float_layers"] for t in fb.get("trials", [])] in ([], [0])  # the all-INT8 graph only
    assert fb["held_out"]["passed"] is False and fb["held_out"]["agreement"] < 1.0
    assert fb["held_out"]["n"] == len(held)
    assert "not searched again" in fb["message"]
    # What shipped is the all-INT8 graph the selection set chose, with its held-out miss.
    shipped = _ort_logits(str(out / "model.onnx"), held_out.inputs, 2, 8)
    assert gate_values(shipped, held_out, get_target(tight).gates)["agreement"] == fb["held_out"]["agreement"]
