"""``edge-tl prune``: keeps the head, rounds widths to 8, recovers, reloads without pickle, exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_tl.checkpoint import load_model
from edge_tl.cli import main
from edge_tl.data import scan_image_folder
from edge_tl.preprocess import Preprocess, load_image
from edge_tl.stages.prune import prune_run, recalibrate_batchnorm

N_CLASSES = 3


@pytest.fixture(scope="module")
def pruned(finetuned_run: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, dict]:
    """The tiny linear run pruned by 0.3 in two rounds, each followed by the default recovery (end to end,
    distilled from the unpruned model) (shared, read-only)."""
    run = tmp_path_factory.mktemp("pruned") / "run"
    shutil.copytree(finetuned_run, run)
    model, manifest = prune_run(run, 0.3, recover_epochs=2, importance="l2", steps=2, device="cpu")
    return run, model, manifest


def test_pruning_keeps_head_and_output_shape(pruned: tuple[Path, torch.nn.Module, dict]) -> None:
    run, model, manifest = pruned
    head = model.classifier[1]
    assert head.out_features == N_CLASSES
    assert head.in_features == model.features[18][0].out_channels < 1280
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, N_CLASSES)
    assert manifest["classes"] == json.loads((run / "finetune" / "manifest.json").read_text())["classes"]
    assert manifest["parent"]["path"].endswith("finetune/model.pt")
    assert manifest["macs"]["after"] < 0.75 * manifest["macs"]["before"]
    assert manifest["params"]["after"] < manifest["params"]["before"]


def test_channel_counts_are_multiples_of_8(pruned: tuple[Path, torch.nn.Module, dict]) -> None:
    _run, model, manifest = pruned
    assert manifest["round_to"] == 16  # the default: whole 16-channel INT8 blocks, and so multiples of 8
    changed = {name: ab for name, ab in manifest["channels"].items() if ab[0] != ab[1]}
    assert len(changed) > 40  # nearly every mobilenet_v2 conv lost channels
    for name, (before, after) in changed.items():
        assert after % 16 == 0 and 16 <= after < before, (name, before, after)
        # about (1 - ratio) kept, rounded to the nearest multiple of 16
        assert abs(after - before * 0.7) <= 8, (name, before, after)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name in changed:
            assert m.out_channels == changed[name][1]


@pytest.mark.parametrize("round_to", [8, 16, 32])
def test_kept_widths_are_the_nearest_multiple_of_round_to(round_to: int) -> None:
    import torchvision

    from edge_tl.stages.prune import _layer_ratios

    model = torchvision.models.mobilenet_v2(num_classes=N_CLASSES)
    ratios, untouched = _layer_ratios(model, model.classifier[1], 0.3, round_to)
    assert ratios and model.classifier[1] not in ratios
    for m, r in ratios.items():
        width = m.out_channels
        kept = int(width * (1 - r))  # what torch-pruning keeps for this ratio
        assert kept % round_to == 0 and kept >= round_to and kept < width
        assert abs(kept - 0.7 * width) <= round_to / 2
    for m in untouched:  # the full width is the nearest choice
        target = 0.7 * m.out_channels
        below = [k for k in range(round_to, m.out_channels, round_to)]
        assert all(m.out_channels - target <= abs(k - target) for k in below)


def test_bad_round_to_is_a_config_error(run_copy: Path) -> None:
    from edge_tl.errors import ConfigError

    with pytest.raises(ConfigError, match="round-to"):
        prune_run(run_copy, 0.3, round_to=12)


def _kept_filters(pruned_w: torch.Tensor, full_w: torch.Tensor) -> torch.Tensor:
    """[kept, original] bool: which original filter each pruned filter is an exact copy of."""
    return (pruned_w.flatten(1)[:, None, :] == full_w.flatten(1)[None, :, :]).all(dim=2)


def test_linear_run_recovers_end_to_end_distilled_from_the_unpruned_model(
        pruned: tuple[Path, torch.nn.Module, dict]) -> None:
    run, model, manifest = pruned
    full, _ = load_model(run / "finetune")
    # A frozen backbone cannot win back lost channels: recovery trains it (no stem filter is a plain slice).
    same = _kept_filters(model.features[0][0].weight, full.features[0][0].weight)
    assert not same.any(dim=1).all()
    rec = manifest["recovery"]
    assert rec["mode"] == "full" and rec["finetune_mode"] == "linear" and rec["epochs_per_step"] == 2
    assert rec["distillation"]["teacher"] == "the unpruned fine-tuned model"
    assert rec["train_config"]["backbone_lr_scale"] == 1.0
    assert manifest["steps"] == 2 and [h["step"] for h in rec["history"]] == [1, 2]
    assert all(h["bn_images"] > 0 and "val_top1" in h for h in rec["history"])
    assert rec["history"][0]["macs"] > rec["history"][1]["macs"] == manifest["macs"]["after"]
    assert manifest["metrics"]["val_top1_before"] == pytest.approx(1.0)
    assert manifest["metrics"]["val_top1"] >= 2 / 3


def test_head_recovery_leaves_backbone_weights_and_recomputes_batchnorm(run_copy: Path) -> None:
    model, manifest = prune_run(run_copy, 0.3, recover_epochs=3, recover="head", device="cpu")
    full, _ = load_model(run_copy / "finetune")
    # The backbone is only sliced: each kept filter of the stem is one of the original filters...
    same = _kept_filters(model.features[0][0].weight, full.features[0][0].weight)
    assert same.any(dim=1).all()
    kept = same.int().argmax(dim=1)
    # ...while its BatchNorm statistics were recomputed on the training images.
    assert not torch.allclose(model.features[0][1].running_mean, full.features[0][1].running_mean[kept])
    rec = manifest["recovery"]
    assert rec["mode"] == "head" and rec["distillation"] is None and manifest["steps"] == 1  # l2 + head: 1 round
    assert "val_top1" in rec["history"][0] and rec["epochs_per_step"] == 3


def test_pruned_model_reloads_in_a_new_process_without_pickle(
        pruned: tuple[Path, torch.nn.Module, dict], tmp_path: Path) -> None:
    run, model, _ = pruned
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from edge_tl.checkpoint import load_model
        state = torch.load({str(run / 'prune' / 'model.pt')!r}, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        model, manifest = load_model({str(run / 'prune')!r})
        assert "torch_pruning" not in sys.modules  # rebuilt from the manifest, not by the pruner
        x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
        with torch.inference_mode():
            np.save({str(tmp_path / 'y.npy')!r}, model(x).numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5, rtol=1e-4)


def test_onnx_export_of_the_pruned_model_matches_it(pruned: tuple[Path, torch.nn.Module, dict]) -> None:
    import onnxruntime as ort

    from edge_tl.evalset import load_eval_set
    from edge_tl.stages.export import export

    run, model, manifest = pruned
    target = export(run, "cpu-onnxruntime-fp32", source="prune")
    assert target["source_stage"] == "prune" and target["structure"] == manifest["structure"]
    assert target["validation"]["agreement"] == 1.0
    inputs = load_eval_set(run / "eval.npz").inputs
    sess = ort.InferenceSession(str(run / "targets" / "cpu-onnxruntime-fp32" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {"input": inputs})[0]
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(inputs)).numpy()
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-3, rtol=1e-3)


def test_cli_taylor_one_shot_without_recovery(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["prune", str(run_copy), "--ratio", "0.5", "--importance", "taylor", "--steps", "1",
                 "--recover-epochs", "0", "--device", "cpu", "--quiet"])
    assert code == 0
    assert "MACs" in capsys.readouterr().err
    manifest = json.loads((run_copy / "prune" / "manifest.json").read_text())
    assert manifest["importance"] == "taylor" and manifest["steps"] == 1
    assert "val_top1" not in manifest["recovery"]["history"][0]  # no training, BatchNorm only
    assert 0.0 <= manifest["metrics"]["val_top1"] <= 1.0
    assert manifest["macs"]["after"] < 0.5 * manifest["macs"]["before"]
    for name, (before, after) in manifest["channels"].items():
        assert after == before or (after % 8 == 0 and after >= 8), name
    model, _ = load_model(run_copy / "prune")
    assert model.classifier[1].out_features == N_CLASSES


@pytest.mark.parametrize("args", [["--ratio", "1.5"], ["--ratio", "0"], ["--ratio", "-0.2"],
                                  ["--importance", "l7"], ["--steps", "0"], ["--ratio", "0.001"],
                                  ["--recover", "sideways"]])
def test_bad_options_exit_2_and_write_nothing(run_copy: Path, args: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", str(run_copy), *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (run_copy / "prune").exists()


def test_missing_finetune_exits_2(tmp_path: Path) -> None:
    assert main(["prune", str(tmp_path / "nothing"), "--ratio", "0.3", "--quiet"]) == 2


def test_recalibrate_batchnorm_gives_the_statistics_of_the_data(image_folder: Path) -> None:
    folder = scan_image_folder(image_folder)
    pre = Preprocess(resize=40, crop=32)
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
    model = torch.nn.Sequential(conv, bn, torch.nn.ReLU())
    n = recalibrate_batchnorm(model, folder.root, folder.samples, pre, batch_size=64)
    assert n == len(folder.samples) and not model.training and bn.momentum == 0.1
    x = torch.from_numpy(pre.batch([load_image(folder.root / s.path) for s in folder.samples]))
    with torch.no_grad():
        y = conv(x).transpose(0, 1).flatten(1)
    torch.testing.assert_close(bn.running_mean, y.mean(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, y.var(1), atol=1e-5, rtol=1e-4)


def test_recalibration_draws_class_ordered_samples_in_mixed_order(image_folder: Path) -> None:
    """Image folders list samples class by class; BatchNorm statistics averaged over one-class batches
    miss the between-class variance, so every draw is shuffled, even when it takes all samples."""
    from edge_tl.stages.prune import _subset

    samples = scan_image_folder(image_folder).samples
    labels = [s.label for s in samples]
    assert labels == sorted(labels)  # precondition: folder order is class order
    drawn = _subset(samples, 10 * len(samples), seed=0)
    assert sorted(drawn, key=samples.index) == samples  # all of them, each once
    first_batch = [s.label for s in drawn[: len(samples) // N_CLASSES]]
    assert len(set(first_batch)) > 1  # a batch mixes classes
    assert _subset(samples, 5, seed=0) == _subset(samples, 5, seed=0)  # deterministic
