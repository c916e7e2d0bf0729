"""``prune`` when the run's images moved or vanished (one line, exit 2; ``--data`` re-points the run, checked
by sha256), and the plan with its estimated time printed before the work starts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from edge_tl.checkpoint import load_model
from edge_tl.cli import main
from edge_tl.data import Sample, locate_split, split_from_json
from edge_tl.errors import DataError
from edge_tl.preprocess import Preprocess
from edge_tl.stages.prune import LONG_PLAN_SECONDS, describe_plan, plan_prune
from edge_tl.training import TrainConfig, fit

from .conftest import make_image, write_folder


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A linear run fine-tuned on its own copy of a small folder (its tests move and break the folder);
    returns (run, data folder). Tests copy both before changing anything."""
    from edge_tl.stages.finetune import finetune

    base = tmp_path_factory.mktemp("own")
    data = write_folder(base / "data", per_class=8)
    run = base / "run"
    finetune(data, run, arch="mobilenet_v2", weights="imagenet",
             train_cfg=TrainConfig(mode="linear", epochs=3, seed=0, quiet=True, workers=0))
    return run, data


@pytest.fixture
def moved(own_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the run: (run, the data folder its split.json records, a folder to move the data
    to). A test that moves or deletes the recorded folder's files restores them before it returns."""
    run, data = own_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, data, tmp_path / "moved"


def _prune(run: Path, *extra: str) -> int:
    return main(["prune", str(run), "--ratio", "0.3", "--recover-epochs", "0", "--device", "cpu", "--quiet",
                 *extra])


# ---------------------------------------------------------------- item 3: data gone or moved


def test_images_mostly_gone_stop_at_once_with_one_line_and_exit_2(
        moved: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, recorded, _ = moved
    train_rows = json.loads((run / "finetune" / "split.json").read_text())["train"]
    keep = {train_rows[0][0], train_rows[1][0]}  # today: BatchNorm finds these, then an empty validation
    gone = recorded.parent / "gone"
    shutil.copytree(recorded, gone)
    try:
        for p in sorted(recorded.rglob("*.*")):
            if str(p.relative_to(recorded)) not in keep:
                p.unlink()
        code = main(["prune", str(run), "--ratio", "0.3", "--recover-epochs", "1", "--device", "cpu", "--quiet"])
    finally:
        shutil.rmtree(recorded)
        gone.rename(recorded)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert str(recorded) in lines[0] and "--data" in lines[0]
    assert "Traceback" not in err and "skipped unreadable" not in err
    assert not (run / "prune").exists()


def test_data_option_repoints_a_moved_run_checked_by_sha256(
        moved: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, recorded, new = moved
    shutil.move(str(recorded), new)
    try:
        assert _prune(run) == 2  # the recorded folder is gone: one line naming it and --data
        err = capsys.readouterr().err
        assert err.startswith("error:") and str(recorded) in err and "--data" in err

        assert _prune(run, "--data", str(new)) == 0
        err = capsys.readouterr().err
        manifest = json.loads((run / "prune" / "manifest.json").read_text())
        split = json.loads((run / "finetune" / "split.json").read_text())
        n = len(split["train"]) + len(split["val"])
        assert manifest["data"]["root"] == str(new) and manifest["data"]["missing"] == []
        assert manifest["data"]["verified"] == {"against": "sha256", "n": n}
        load_model(run / "prune")
    finally:
        shutil.move(str(new), recorded)
    # Item 10: the plan and its estimate, measured here, come before the work.
    plan_line = next(ln for ln in err.splitlines() if "prune plan:" in ln)
    assert "estimated about" in plan_line and "training + " in plan_line and "1 step(s)" in plan_line
    assert err.index("prune plan:") < err.index("pruned mobilenet_v2")
    plan = manifest["recovery"]["plan"]
    assert plan["estimated_seconds"] > 0 and plan["epochs_per_step"] == 0
    per = plan["measured_seconds_per_image"]
    assert per["forward"] > 0 and per["decode_eval"] > 0 and per["train_step"] == 0  # no training to time


def test_data_option_refuses_other_images(moved: tuple[Path, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run, recorded, new = moved
    shutil.copytree(recorded, new)
    victim = sorted(new.rglob("*.png"))[0]
    make_image(2, 4242).save(victim)  # same name, other bytes
    assert _prune(run, "--data", str(new)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sha256" in err and str(victim.relative_to(new)) in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
    assert not (run / "prune").exists()

    assert _prune(run, "--data", str(new / "horizontal")) == 2  # the wrong level: nothing where expected
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lacks" in err
    assert _prune(run, "--data", str(new / "nowhere")) == 2
    assert "not found" in capsys.readouterr().err


def test_a_few_missing_images_are_left_out_and_named(own_run: tuple[Path, Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    run, data = own_run
    new = tmp_path / "moved"
    shutil.copytree(data, new)
    split = json.loads((run / "finetune" / "split.json").read_text())
    lost = split["train"][0][0]
    (new / lost).unlink()
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        images = locate_split(split, new)
    assert "left out 1 image(s) of the run's split that are gone" in caplog.text
    assert images.missing == [lost] and len(images.train) == len(split["train"]) - 1
    assert images.record(split["root"])["n_train"] == len(split["train"]) - 1
    assert images.verified == {"against": "sha256", "n": len(split["train"]) + len(split["val"]) - 1}


def _linear_inputs(run: Path) -> tuple[object, Path, list[Sample], list[Sample], Preprocess, list[str]]:
    model, manifest = load_model(run / "finetune")
    root, train, val = split_from_json(json.loads((run / "finetune" / "split.json").read_text()))
    return model, root, train, val, Preprocess.from_dict(manifest["preprocessing"]), manifest["classes"]


def test_training_images_vanishing_mid_fit_stop_with_a_data_error(
        moved: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Images deleted while the recovery runs (past the start-up check): a few warnings, then DataError."""
    run, _recorded, _ = moved
    model, root, train, val, pre, classes = _linear_inputs(run)
    ghosts = [Sample(f"horizontal/ghost_{i:03d}.png", 0) for i in range(20)]
    teacher = load_model(run / "finetune")[0]
    cfg = TrainConfig(mode="full", epochs=1, seed=0, quiet=True, workers=0, batch_size=32)
    with caplog.at_level(logging.WARNING, logger="edge_tl"), pytest.raises(DataError, match="can no longer be read"):
        fit(model, "mobilenet_v2", root, classes, train[:4] + ghosts, val, pre, cfg, teacher=teacher)
    named = [r for r in caplog.records if "skipped unreadable image" in r.getMessage()]
    assert 1 <= len(named) <= 3


def test_validation_images_all_gone_is_a_data_error_not_an_argmax_crash(moved: tuple[Path, Path, Path]) -> None:
    run, _recorded, _ = moved
    model, root, train, val, pre, classes = _linear_inputs(run)
    ghosts = [Sample(f"vertical/ghost_{i:03d}.png", 1) for i in range(len(val))]
    cfg = TrainConfig(mode="linear", epochs=2, seed=0, quiet=True, workers=0, engine="torch")
    with pytest.raises(DataError, match="validation images"):
        fit(model, "mobilenet_v2", root, classes, train, ghosts, pre, cfg)


# ---------------------------------------------------------------- item 10: the plan before the work


def test_a_long_plan_names_recover_head(own_run: tuple[Path, Path]) -> None:
    """The README's default on a real-sized set: end-to-end recovery for minutes per epoch. The estimate
    comes from timing this model on this host, scaled to the set's size."""
    run, _data = own_run
    model, root, train, val, pre, _classes = _linear_inputs(run)
    teacher = load_model(run / "finetune")[0]
    big_train, big_val = train * 300, val * 300  # a NEU-sized split of these same files
    common = {"steps": 1, "importance": "l2", "ratio": 0.3, "batch_size": 32}
    full = plan_prune(model, teacher, root, big_train, big_val, pre, "cpu", recover="full", epochs=8, **common)
    assert full["estimated_seconds"] > LONG_PLAN_SECONDS > 0
    assert full["head_seconds"] < full["estimated_seconds"]
    line = describe_plan(full)
    assert "recovery full" in line and "up to 8 epoch(s)" in line and f"{len(big_train)} training" in line
    assert "--recover head" in line
    assert "--recover head" not in describe_plan(full | {"recover": "head"})  # already the cheap one


def test_adapt_data_option_repoints_the_anchor_images_checked_by_sha256(
        moved: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """adapt reads the fine-tune's training images (AdaBN's anchor): --data re-points them, checked."""
    run, recorded, new = moved
    shutil.copytree(recorded, new)
    frames = new / "vertical"  # any unlabelled images do for the new line
    victim = sorted((new / "blobs").glob("*.png"))[0]
    original = victim.read_bytes()
    make_image(0, 777).save(victim)
    args = ["adapt", str(run), "--unlabeled", str(frames), "--method", "adabn", "--device", "cpu", "--quiet"]
    assert main([*args, "--data", str(new)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sha256" in err and "blobs/" in err
    assert not (run / "adapt").exists()
    victim.write_bytes(original)
    assert main([*args, "--data", str(new)]) == 0, capsys.readouterr().err
    anchor = json.loads((run / "adapt" / "manifest.json").read_text())["adabn"]["anchor"]
    assert anchor["root"] == str(new) and anchor["images"] > 0


def test_export_data_option_reads_a_moved_run_for_calibration_and_eval_set(
        moved: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """export reads the run's images for calibration, the selection set, eval.npz and the OOD fit: with
    the folder moved it stops with one line naming --data; with --data it reads them there."""
    run, recorded, new = moved
    (run / "eval.npz").unlink(missing_ok=True)
    shutil.move(str(recorded), new)
    try:
        assert main(["export", str(run), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "--data" in lines[0], err
        assert main(["export", str(run), "--target", "cpu-onnxruntime-fp32", "--quiet", "--data", str(new)]) == 0
        manifest = json.loads((run / "targets" / "cpu-onnxruntime-fp32" / "manifest.json").read_text())
        assert manifest["validation"]["agreement"] == 1.0
        assert (run / "eval.npz").is_file()
    finally:
        shutil.move(str(new), recorded)
