"""Quantisation-aware training (export --qat): a real QDQ graph, trained, chosen on selection, judged held out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_tl.backends.onnxruntime_.onnx_graph import logits as _ort_logits
from edge_tl.backends.openvino_.quantize import logits as _ov_logits
from edge_tl.checkpoint import load_model
from edge_tl.cli import main
from edge_tl.evalset import ensure_eval_set, load_eval_set
from edge_tl.rundir import RunDir
from edge_tl.stages import qat
from edge_tl.stages.export import export
from tests.test_quantize import profile

LOOSE = {"max_top1_drop": 100.0, "min_agreement": 0.0}


def test_fake_quantised_model_matches_its_exported_qdq_graph(finetuned_run: Path) -> None:
    model, _ = load_model(RunDir(finetuned_run).finetune)
    es = load_eval_set(ensure_eval_set(RunDir(finetuned_run)))
    qm = qat.prepare(model, es.inputs.shape[-1], qat.qconfig_mapping("uint8", False, reduce_range=True), es.inputs[:8])
    graph = onnx.load_from_string(qat.to_onnx(qm, es.inputs.shape[-1], 17))
    ops = [n.op_type for n in graph.graph.node]
    # Quantisers where the runtime quantises: every conv input and weight (folded BN), the classifier too.
    convs = ops.count("Conv")
    assert ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= convs
    assert "BatchNormalization" not in ops  # folded into the convolutions
    fq = qat.logits_of(qm, es.inputs)
    qdq = qat.to_onnx(qm, es.inputs.shape[-1], 17)
    ort = _ort_logits(qdq, es.inputs, 2, 8)
    # ONNX Runtime and OpenVINO execute the same arithmetic (integer kernels, same scales): answers agree,
    # and the logits stay close (8-bit activations saturated OpenVINO's AVX2 kernels: 294 of 525 flipped).
    import openvino as ov

    onnx_path = finetuned_run.parent / "qat-test.onnx"
    onnx_path.write_bytes(qdq)
    vino = _ov_logits(ov.convert_model(str(onnx_path)), es.inputs, 2, 8)
    for got in (ort, vino):
        assert (fq.argmax(1) == got.argmax(1)).mean() >= 0.95
        assert np.abs(got - fq).max() <= 0.25 * np.abs(fq).max()
    # 7-bit activations where asked: every uint8 activation zero-point/scale pair spans at most 0..127.
    act_q = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert act_q
    # The float model is untouched by preparation.
    with torch.no_grad():
        again = model(torch.from_numpy(es.inputs)).numpy()
    np.testing.assert_allclose(again, es.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cpu-onnxruntime-int8", "cpu-openvino-int8"])
def test_export_qat_trains_chooses_on_selection_and_judges_on_validation(run_copy: Path, tmp_path: Path,
                                                                          name: str) -> None:
    target = profile(tmp_path, name, gates=LOOSE)
    m = export(run_copy, target, qat_epochs=1)
    q = m["quantizer"]
    assert q["method"] == "qat" and q["epochs"] == 1
    assert [h["epoch"] for h in q["history"]] == [0, 1] and q["history"][1]["images"] > 0
    assert q["chosen_epoch"] in (0, 1) and "selection images" in q["chosen_on"]
    fb = m["fallback"]
    assert fb["float_layers"] == [] and fb["held_out"]["n"] == len(load_eval_set(RunDir(run_copy).eval_npz).labels)
    assert "validation" in fb["held_out"]["measured_on"]
    # Trained on training images that are neither selection nor validation images.
    folder = RunDir(run_copy).target(name)
    cal = json.loads((folder / "calibration.json").read_text())
    split = json.loads((RunDir(run_copy).finetune / "split.json").read_text())
    n_train = len(split["train"]) - cal["selection"]["n"]
    assert q["trained_on"].startswith(f"{n_train} training images")
    assert m["validation"]["agreement"] >= 0.0 and (folder / m["model_file"]).is_file()
    # The trained graph carries the float ood_score subgraph too, calibrated on its own validation scores.
    from edge_tl.backends import RunnerSpec, open_runner

    runner = open_runner(RunnerSpec(folder / m["model_file"], m["target"]["backend"], m["target"]["device"], "int8"))
    try:
        ev = load_eval_set(RunDir(run_copy).eval_npz)
        logits, ood = runner.run_outputs(ev.inputs[:4])
    finally:
        runner.close()
    assert logits.shape == (4, len(ev.classes)) and ood.shape == (4,) and np.isfinite(ood).all()
    assert m["ood"]["limit"] > 0 and "validation images" in m["ood"]["limit_source"]


def test_cli_qat_on_a_float_target_warns_and_negative_epochs_exit_2(run_copy: Path, capsys) -> None:
    assert main(["export", str(run_copy), "--target", "cpu-onnxruntime-int8", "--qat", "-1"]) == 2
    assert "--qat" in capsys.readouterr().err


def test_qat_reports_the_epoch_it_ships(finetuned_run: Path) -> None:
    """With a score, the best epoch's state ships and is the one reported (ties: the earlier, here the
    calibrated epoch 0); without one (no selection images), the last epoch ships and is reported."""
    from edge_tl.manifest import read_manifest
    from edge_tl.preprocess import Preprocess

    run = RunDir(finetuned_run)
    model, _ = load_model(run.finetune)
    pre = Preprocess.from_dict(read_manifest(run.finetune)["preprocessing"])
    root, train, _val = run.split()
    es = load_eval_set(ensure_eval_set(run))
    mapping = qat.qconfig_mapping("uint8", False, reduce_range=True)

    def prepared(model: torch.nn.Module) -> torch.nn.Module:
        return qat.prepare(model, es.inputs.shape[-1], mapping, es.inputs[:8])

    qm = prepared(model)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    qm, history, shipped = qat.train(qm, model, root, train[:8], pre, 2, score=lambda m: 0.0)
    assert shipped == 0 and [h["epoch"] for h in history] == [0, 1, 2]
    assert all(torch.equal(before[k], v) for k, v in qm.state_dict().items() if v.is_floating_point())
    teacher, _ = load_model(run.finetune)  # train() freezes its teacher: a fresh one to prepare from
    qm, history, shipped = qat.train(prepared(teacher), teacher, root, train[:8], pre, 2, score=None)
    assert shipped == 2 == len(history)


def test_qat_with_no_training_image_left_stops_with_one_line(run_copy: Path, tmp_path: Path, capsys) -> None:
    """A calibration set that takes the whole training split leaves it as the selection set too: QAT would
    train on nothing (a DataLoader traceback before), so it stops with one line, exit 2, the target untouched."""
    target = profile(tmp_path, "cpu-onnxruntime-int8", quantizer={"calibration_size": 100000}, gates=LOOSE)
    folder = RunDir(run_copy).target("cpu-onnxruntime-int8")
    assert main(["export", str(run_copy), "--target", target, "--qat", "1"]) == 2
    err = capsys.readouterr().err
    assert "--qat: none of the training split" in err and "Traceback" not in err
    assert not (folder / "manifest.json").exists()
