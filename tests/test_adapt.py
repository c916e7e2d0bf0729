"""``edge-tl adapt``: AdaBN changes only BatchNorm statistics and undoes a contrast/brightness shift,
self-training records its rounds, ``export --from adapt`` ships the adapted model, the manifest hashes
every unlabelled image and records the bad ones, and bad input is one line and exit 2."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edge_tl.cli.adapt  # noqa: F401  (registers the command until edge_tl.cli imports it itself)
from edge_tl.checkpoint import load_model
from edge_tl.cli import main
from edge_tl.errors import ConfigError
from edge_tl.manifest import sha256_file
from edge_tl.rundir import RunDir
from edge_tl.settings import AdaptSettings
from edge_tl.stages.adapt import adapt_run
from edge_tl.stages.self_training import select_pseudo_labels

from .conftest import make_image

CLASSES = ("horizontal", "vertical", "blobs")  # the finetuned_run fixture's


@pytest.fixture(autouse=True)
def _logging_back() -> Iterator[None]:
    """``main`` points the edge_tl logger at the stderr of its moment (a test's capture, closed after
    it); give later tests the logger as it was."""
    logger = logging.getLogger("edge_tl")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def shifted(img: Image.Image, contrast: float = 0.15, brightness: float = -90.0) -> Image.Image:
    """The same part under another camera: a seventh of the contrast, much darker. A global affine
    change of the pixels is a per-channel affine change after the first convolution, which is exactly
    what re-estimated BatchNorm statistics undo."""
    a = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip((a - 128) * contrast + 128 + brightness, 0, 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shifted domain: a flat folder of unlabelled images (with one corrupt file and one text file)
    and a labelled --target-val folder of other images of the same classes."""
    root = tmp_path_factory.mktemp("target")
    unlabeled, val = root / "unlabeled", root / "val"
    (unlabeled / "day2").mkdir(parents=True)
    for k, name in enumerate(CLASSES):
        (val / name).mkdir(parents=True)
        for i in range(12):
            folder = unlabeled / ("day2" if i % 3 == 0 else "")
            shifted(make_image(k, 7000 + k * 100 + i)).save(folder / f"{name[0]}{i:02d}.png")
            shifted(make_image(k, 8000 + k * 100 + i)).save(val / name / f"{i:02d}.png")
    (unlabeled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (unlabeled / "notes.txt").write_text("camera 2, line B")
    return {"unlabeled": unlabeled, "val": val}


@pytest.fixture(scope="module")
def adabn(finetuned_run: Path, domain: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, dict]:
    """The tiny linear run adapted by AdaBN to the shifted domain (shared, read-only)."""
    run = tmp_path_factory.mktemp("adabn") / "run"
    shutil.copytree(finetuned_run, run)
    model, manifest = adapt_run(run, AdaptSettings(unlabeled=str(domain["unlabeled"]), method="adabn",
                                                   target_val=str(domain["val"]), device="cpu"))
    return run, model, manifest


def _batchnorm_names(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_adabn_changes_only_batchnorm_layers_and_undoes_the_shift(
        adabn: tuple[Path, torch.nn.Module, dict], finetuned_run: Path) -> None:
    run, model, manifest = adabn
    source, _ = load_model(run / "finetune")
    before, after = source.state_dict(), model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    bn = _batchnorm_names(source)
    # every BatchNorm layer was re-estimated (and re-anchored); no convolution or head weight moved
    assert changed and all(k.rsplit(".", 1)[0] in bn for k in changed), sorted(changed)[:5]
    assert {k for k in changed if k.endswith("running_mean")} == {k for k in before if k.endswith("running_mean")}
    assert manifest["adabn"]["batchnorm_layers"] == 52 and manifest["adabn"]["images"] == 36
    n_train = len(json.loads((run / "finetune" / "split.json").read_text())["train"])
    assert manifest["adabn"]["anchor"]["layers"] == 52 and manifest["adabn"]["anchor"]["images"] == n_train
    # the source model is untouched, and named by its sha256
    assert sha256_file(run / "finetune" / "model.pt") == sha256_file(finetuned_run / "finetune" / "model.pt")
    assert manifest["parent"]["sha256"] == manifest["source"]["sha256"] == sha256_file(run / "finetune" / "model.pt")
    assert manifest["source"]["stage"] == "finetune" and manifest["method"] == "adabn"
    # the shift clearly hurts the source model, and AdaBN takes most of the loss back
    r = manifest["report"]
    assert r["n_images"] == 36 and r["overlap_with_unlabeled"] == 0
    assert r["source"]["top1"] < 0.8, r["source"]
    assert r["adapted"]["top1"] >= r["source"]["top1"] + 0.2, (r["source"]["top1"], r["adapted"]["top1"])
    assert r["adapted"]["balanced_accuracy"] > r["source"]["balanced_accuracy"]
    assert r["gain"]["top1"] == pytest.approx(r["adapted"]["top1"] - r["source"]["top1"])


def test_anchoring_keeps_the_function_and_plain_adabn_loses_on_a_frozen_backbone(
        finetuned_run: Path, domain: dict[str, Path], tmp_path: Path) -> None:
    from edge_tl.batchnorm import anchor_batchnorm, input_statistics
    from edge_tl.data import split_from_json
    from edge_tl.manifest import read_json
    from edge_tl.preprocess import Preprocess

    model, m = load_model(finetuned_run / "finetune")
    root, train, _val = split_from_json(read_json(finetuned_run / "finetune" / "split.json"))
    stats, n = input_statistics(model, root, train, Preprocess.from_dict(m["preprocessing"]), "cpu", 32, True)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
    assert n == len(train) and anchor_batchnorm(model, stats) == 52
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)  # the same function...
    bn = model.features[0][1]
    torch.testing.assert_close(bn.running_mean, stats[id(bn)][0])  # ... with the source's statistics
    # Plain AdaBN (the paper's, --no-anchor) is recorded as such, and on a linear (frozen-backbone) run it
    # normalises the target to where the source images never were: worse than re-anchored.
    run = tmp_path / "run"
    shutil.copytree(finetuned_run, run)
    _model, plain = adapt_run(run, AdaptSettings(unlabeled=str(domain["unlabeled"]), target_val=str(domain["val"]),
                                                 device="cpu", anchor=False))
    assert plain["adabn"]["anchor"] is None and plain["settings"]["anchor"] is False
    assert plain["report"]["adapted"]["top1"] < 0.9


def test_manifest_hashes_every_unlabelled_image_and_records_the_bad_ones(
        adabn: tuple[Path, torch.nn.Module, dict], domain: dict[str, Path]) -> None:
    run, _model, manifest = adabn
    u = manifest["unlabeled"]
    assert u["n_images"] == len(u["images"]) == 36  # sub-folders count too; their names are no labels
    assert any(im["path"].startswith("day2/") for im in u["images"])
    for im in u["images"]:
        assert im["sha256"] == sha256_file(domain["unlabeled"] / im["path"])
    skipped = {s["path"]: s["reason"] for s in u["skipped"]}
    assert set(skipped) == {"broken.png", "notes.txt"} and u["n_skipped"] == 2
    assert "suffix '.txt'" in skipped["notes.txt"]
    assert json.loads((run / "adapt" / "manifest.json").read_text())["unlabeled"]["set_sha256"] == u["set_sha256"]
    assert json.loads((run / "adapt" / "manifest.json").read_text())["files"]["model.pt"] == sha256_file(
        run / "adapt" / "model.pt")


def test_export_from_adapt_ships_the_adapted_model(adabn: tuple[Path, torch.nn.Module, dict], domain: dict[str, Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    domain_val = domain["val"]
    src, model, _ = adabn
    run = tmp_path / "run"
    shutil.copytree(src, run)
    assert RunDir(run).source() == run / "finetune"  # an adapted model ships only when asked for
    assert main(["export", str(run), "--target", "cpu-onnxruntime-fp32", "--from", "adapt", "-q"]) == 0
    assert "from adapt" in capsys.readouterr().err
    target = run / "targets" / "cpu-onnxruntime-fp32"
    m = json.loads((target / "manifest.json").read_text())
    assert m["source_stage"] == "adapt" and m["validation"]["agreement"] == 1.0
    assert m["parent"]["sha256"] == sha256_file(run / "adapt" / "model.pt")
    x = np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32)
    onnx_out = ort.InferenceSession(str(target / "model.onnx")).run(None, {"input": x})[0]
    source, _ = load_model(run / "finetune")
    with torch.inference_mode():
        adapted, original = model(torch.from_numpy(x)).numpy(), source(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, adapted, atol=1e-4, rtol=1e-4)
    assert np.abs(onnx_out - original).max() > 1e-2  # ... not the fine-tuned one
    # Its ood score knows the new line as home: fitted on the unlabelled images, the shifted camera's
    # labelled images (never seen) are mostly in distribution.
    assert "unlabelled" in m["ood"]["fitted_on"]["what"] and m["ood"]["limit"] == 1.0
    from edge_tl.preprocess import Preprocess

    pre = Preprocess.from_dict(m["preprocessing"])
    xs = np.stack([pre(Image.open(p).convert("RGB")) for p in sorted(domain_val.rglob("*.png"))])
    ood = ort.InferenceSession(str(target / "model.onnx")).run(["ood_score"], {"input": xs})[0]
    assert np.mean(ood > 1.0) <= 0.25
    # and the bundle takes that target like any other
    assert main(["bundle", str(run), "--target", "cpu-onnxruntime-fp32", "--out", str(tmp_path / "b"), "-q",
                 "--allow-failed"]) == 0
    bundle = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert bundle["source"]["source_stage"] == "adapt"
    # ... judged against the adapted model, not the source: the golden images' reference is the adapted
    # model's answers, which the fp32 graph reproduces.
    assert bundle["golden"]["reference"].startswith("adapted")
    assert bundle["golden"]["reference_max_abs_logit_diff"] < 1e-3


def test_bench_judges_an_adapted_target_against_the_adapted_model(
        adabn: tuple[Path, torch.nn.Module, dict], domain: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_tl import evalset as evalset_mod
    from edge_tl.bench.run import bench_target
    from edge_tl.evalset import eval_set_from_folder, load_eval_set
    from edge_tl.targets import get_target

    src, _, _ = adabn
    run = tmp_path / "run"
    shutil.copytree(src, run)
    assert main(["export", str(run), "--target", "cpu-onnxruntime-fp32", "--from", "adapt", "-q"]) == 0
    rd, target = RunDir(run), get_target("cpu-onnxruntime-fp32")
    val = load_eval_set(rd.eval_npz)
    new_line = eval_set_from_folder(rd, domain["val"])
    from edge_tl.bench.report import markdown

    for es in (val, new_line):
        r = bench_target(rd, target, es, memory=False, throughput_s=0)
        assert r["reference"]["model"].startswith("adapted") and "Reference: adapted" in markdown(r)
        assert r["candidate"]["agreement"] == 1.0 and abs(r["candidate"]["top1_drop"]) < 1e-9
        # On the validation split (the old line) the report says where to judge an adapted model.
        assert any("--data on labelled new-line images" in n for n in r["notes"]) == (es is val)
    # Against the source model it would not agree: the adaptation is not drift.
    assert (val.logits.argmax(1) != np.load(run / "targets" / target.name / "reference.npz")["logits"].argmax(1)).any()
    # A device without torch benches it from the logits the export stored for eval.npz.

    def no_torch(*a: object, **k: object) -> None:
        raise ImportError("torch")

    monkeypatch.setattr(evalset_mod, "reference_logits", no_torch)
    with_ref, what = evalset_mod.with_reference(rd, val, json.loads(
        (run / "targets" / target.name / "manifest.json").read_text()), run / "targets" / target.name)
    assert what.startswith("adapted") and not np.array_equal(with_ref.logits, val.logits)
    with pytest.raises(evalset_mod.ArtifactError, match="needs"):
        evalset_mod.with_reference(rd, new_line, {"source_stage": "adapt"}, run / "targets" / target.name)


def test_self_training_runs_in_rounds_and_records_them(finetuned_run: Path, domain: dict[str, Path],
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finetuned_run, run)
    st = AdaptSettings(unlabeled=str(domain["unlabeled"]), method="both", target_val=str(domain["val"]), device="cpu",
                       threshold=0.5, epochs=3, rounds=3, views=2, distill=0.5)
    model, manifest = adapt_run(run, st)
    s = manifest["self_training"]
    assert s["trained"] == "the head, on cached backbone features" and s["epochs_per_round"] == 3
    assert s["rounds"][0]["round"] == 0 and sum(s["rounds"][0]["predicted_per_class"]) == 36
    assert 2 <= len(s["rounds"]) <= 4 and s["stopped"]
    first = s["rounds"][1]
    assert len(first["selected_per_class"]) == 3 and sum(first["selected_per_class"]) > 0
    assert max(first["selected_per_class"]) <= first["cap"]
    assert 0.0 <= first["changed"] <= 1.0 and first["train_loss"] > 0
    assert manifest["settings"]["threshold"] == 0.5 and manifest["method"] == "both"
    # linear mode: only the head trains; the backbone keeps the AdaBN statistics and its weights
    source, _ = load_model(run / "finetune")
    before, after = source.state_dict(), model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"classifier.1.weight", "classifier.1.bias"} <= moved
    bn = _batchnorm_names(source)
    assert all(k.rsplit(".", 1)[0] in bn or k.startswith("classifier.") for k in moved)
    r = manifest["report"]
    assert {"source", "adabn", "adapted"} <= set(r)
    assert r["adapted"]["top1"] >= r["source"]["top1"]


def test_self_training_end_to_end_for_a_full_fine_tune(finetuned_run: Path, domain: dict[str, Path],
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finetuned_run, run)
    # The same model, recorded as a full fine-tune (the manifest's own keys are not hashed).
    path = run / "finetune" / "manifest.json"
    m = json.loads(path.read_text())
    m["mode"] = m["train_config"]["mode"] = "full"
    path.write_text(json.dumps(m))
    from edge_tl import api

    # through the Python API; views=1: no augmented pass (time)
    manifest = api.adapt(run, domain["unlabeled"], method="self-train", threshold=0.5, epochs=1, rounds=1, views=1,
                         device="cpu")
    model, _ = load_model(run / "adapt")
    s = manifest["self_training"]
    assert s["trained"] == "every layer, end to end" and len(s["rounds"]) == 2
    assert manifest["report"] is None and "adabn" not in manifest
    source, _ = load_model(run / "finetune")
    assert not torch.equal(source.features[0][0].weight, model.features[0][0].weight)  # the backbone trained


def test_pseudo_labels_are_confident_consistent_and_class_balanced() -> None:
    rng = np.random.default_rng(0)
    pred = np.array([0] * 80 + [1] * 10 + [2] * 10)
    clean = rng.normal(0, 0.1, (100, 3)).astype(np.float32)
    clean[np.arange(100), pred] += np.linspace(1, 6, 100)  # confidence rises along the images
    aug = clean.copy()
    aug[95, 0] += 50  # the augmented view of image 95 disagrees
    idx, labels, info = select_pseudo_labels(clean, aug, threshold=0.8, class_factor=2.0)
    assert info["candidates_per_class"][2] == 9 and 95 not in idx  # inconsistent: dropped
    assert info["cap"] == 2 * min(info["candidates_per_class"]) and max(info["selected_per_class"]) <= info["cap"]
    assert info["selected_per_class"][0] == info["cap"] < info["candidates_per_class"][0]  # no take-over
    assert np.array_equal(labels, pred[idx])
    conf = np.exp(clean) / np.exp(clean).sum(1, keepdims=True)
    kept0 = idx[labels == 0]
    assert conf[kept0, 0].min() >= np.sort(conf[pred == 0, 0])[-info["cap"]] - 1e-6  # the most confident ones
    # one class only: nothing to train on
    idx, _labels, info = select_pseudo_labels(np.tile([[5.0, 0.0, 0.0]], (10, 1)), None, 0.8, 2.0)
    assert len(idx) == 0 and info["missing"] == [1, 2]


def _anomaly(run: Path) -> Path:
    path = run / "finetune" / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps(m | {"task": "anomaly"}))
    return run


@pytest.mark.parametrize("case", ["no-run", "empty-unlabeled", "unreadable-only", "anomaly", "other-classes",
                                  "bad-method", "from-adapt"])
def test_bad_input_is_one_line_and_exit_2(case: str, run_copy: Path, domain: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"")
    other = tmp_path / "other"
    for name in ("horizontal", "vertical", "stains"):
        (other / name).mkdir(parents=True)
        make_image(0, 1).save(other / name / "x.png")
    run, unlabeled, extra = str(run_copy), str(domain["unlabeled"]), []
    expect = {"no-run": "run directory not found", "empty-unlabeled": "holds no image",
              "unreadable-only": "none of its 1 image(s) can be read", "anomaly": "anomaly model",
              "other-classes": "the run's classes are", "bad-method": "--method: unknown value 'tent'",
              "from-adapt": "--from: unknown value 'adapt'; choose 'finetune' or 'prune'"}[case]
    if case == "no-run":
        run = str(tmp_path / "nothing")
    elif case == "empty-unlabeled":
        unlabeled = str(empty)
    elif case == "unreadable-only":
        unlabeled = str(junk)
    elif case == "anomaly":
        _anomaly(run_copy)
    elif case == "other-classes":
        extra = ["--target-val", str(other)]
    elif case == "bad-method":
        extra = ["--method", "tent"]
    elif case == "from-adapt":
        extra = ["--from", "adapt"]
    capsys.readouterr()
    assert main(["adapt", run, "--unlabeled", unlabeled, "-q", *extra]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not (run_copy / "adapt").exists()


def test_export_from_names_every_model_stage(run_copy: Path) -> None:
    with pytest.raises(ConfigError, match="--from must be finetune, prune or adapt, got 'bogus'"):
        RunDir(run_copy).source("bogus")
    with pytest.raises(Exception, match="run `edge-tl adapt` first"):
        RunDir(run_copy).source("adapt")


def test_an_adapted_model_of_an_older_fine_tune_is_not_exported(adabn: tuple[Path, torch.nn.Module, dict],
                                                                tmp_path: Path) -> None:
    from edge_tl.errors import ArtifactError

    src, _, _ = adabn
    run = tmp_path / "run"
    shutil.copytree(src, run)
    assert RunDir(run).source("adapt") == run / "adapt"
    path = run / "adapt" / "manifest.json"
    m = json.loads(path.read_text())
    m["parent"]["sha256"] = "0" * 64  # as if finetune had been run again since
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="older finetune model"):
        RunDir(run).source("adapt")
