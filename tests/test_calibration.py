"""The INT8 calibration set: training split only, class-balanced, deterministic, auditable."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.calibration import (
    SOURCE_FOLDER,
    SOURCE_LIST,
    SOURCE_TRAIN,
    balanced_order,
    build_calibration_set,
)
from edge_tl.data import Sample
from edge_tl.errors import DataError
from edge_tl.manifest import read_json, read_manifest, sha256_file
from edge_tl.preprocess import Preprocess
from edge_tl.rundir import RunDir


def make_image(kind: int, seed: int, size: int = 48) -> Image.Image:
    """A small random RGB image (its content does not matter here, only that it decodes)."""
    rng = np.random.default_rng(seed * 10 + kind)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def _ctx(run_dir: Path) -> tuple[RunDir, Preprocess, list[str], dict]:
    run = RunDir(run_dir)
    manifest = read_manifest(run.finetune)
    split = read_json(run.finetune / "split.json")
    return run, Preprocess.from_dict(manifest["preprocessing"]), manifest["classes"], split


def test_calibration_never_draws_from_validation(finetuned_run: Path) -> None:
    run, pre, classes, split = _ctx(finetuned_run)
    train = {p for p, _ in split["train"]}
    val = {p for p, _ in split["val"]}
    # Ask for more than the training split holds: it must stop at the training images, not borrow.
    cset = build_calibration_set(run, pre, classes, size=10_000)
    paths = [im["path"] for im in cset.images]
    assert cset.source == SOURCE_TRAIN
    assert set(paths) <= train
    assert not set(paths) & val
    assert len(paths) == len(set(paths)) == len(train)
    assert cset.inputs.shape == (len(train), 3, pre.crop, pre.crop)


def test_a_split_listing_an_image_on_both_sides_still_keeps_it_out(run_copy: Path) -> None:
    from edge_tl.manifest import write_json

    run, pre, classes, split = _ctx(run_copy)
    leaked = split["val"][0]
    split["train"].append(leaked)
    write_json(run.finetune / "split.json", split)
    cset = build_calibration_set(run, pre, classes, size=10_000)
    assert leaked[0] not in {im["path"] for im in cset.images}


def test_class_balanced_deterministic_and_hashed(finetuned_run: Path) -> None:
    run, pre, classes, split = _ctx(finetuned_run)
    a = build_calibration_set(run, pre, classes, size=9)
    b = build_calibration_set(run, pre, classes, size=9)
    assert a.per_class == dict.fromkeys(classes, 3)
    assert [im["path"] for im in a.images] == [im["path"] for im in b.images]
    np.testing.assert_array_equal(a.inputs, b.inputs)
    root = Path(split["root"])
    for im in a.images:
        assert im["sha256"] == sha256_file(root / im["path"])
        assert im["class"] == Path(im["path"]).parts[0]
    summary = a.summary()
    assert summary["n"] == 9 and summary["source"] == SOURCE_TRAIN and summary["seed"] == 0
    other = build_calibration_set(run, pre, classes, size=9, seed=1)
    assert other.per_class == a.per_class
    assert [im["path"] for im in other.images] != [im["path"] for im in a.images]


def test_balanced_order_with_an_uneven_class() -> None:
    samples = [Sample(f"a/{i}.png", 0) for i in range(2)] + [Sample(f"b/{i}.png", 1) for i in range(10)]
    first6 = balanced_order(samples, seed=3)[:6]
    assert Counter(s.label for s in first6) == {0: 2, 1: 4}
    # The order depends on the paths and the seed, not on the order they were listed in.
    assert balanced_order(list(reversed(samples)), seed=3) == balanced_order(samples, seed=3)


def test_user_folder_recursive_capped_and_skips_bad_files(finetuned_run: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    run, pre, classes, _ = _ctx(finetuned_run)
    cam = tmp_path / "camera"
    for shift in ("day", "night/late"):
        (cam / shift).mkdir(parents=True)
        for i in range(4):
            make_image(i % 3, 500 + i + len(shift)).save(cam / shift / f"frame_{i}.png")
    (cam / "day" / "broken.jpg").write_bytes(b"not a jpeg")
    (cam / "notes.txt").write_text("ignored: not an image")
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        full = build_calibration_set(run, pre, classes, size=100, user_source=cam)
    assert full.source == SOURCE_FOLDER and full.per_class is None
    assert len(full.images) == 8
    assert {s["path"] for s in full.skipped} == {"day/broken.jpg"}
    assert "broken.jpg" in caplog.text
    capped = build_calibration_set(run, pre, classes, size=5, user_source=cam)
    again = build_calibration_set(run, pre, classes, size=5, user_source=cam)
    assert len(capped.images) == 5
    assert [im["path"] for im in capped.images] == [im["path"] for im in again.images]
    assert {im["path"] for im in capped.images} <= {im["path"] for im in full.images}


def test_user_folder_holding_a_validation_image_leaves_it_out(finetuned_run: Path, tmp_path: Path) -> None:
    run, pre, classes, split = _ctx(finetuned_run)
    cam = tmp_path / "camera"
    cam.mkdir()
    val_path = Path(split["root"]) / split["val"][0][0]
    shutil.copy(val_path, cam / f"copy{val_path.suffix}")
    make_image(0, 900).save(cam / "fresh.png")
    cset = build_calibration_set(run, pre, classes, size=10, user_source=cam)
    assert [im["path"] for im in cset.images] == ["fresh.png"]
    assert cset.excluded_validation == [f"copy{val_path.suffix}"]


def test_list_file(finetuned_run: Path, tmp_path: Path) -> None:
    run, pre, classes, _ = _ctx(finetuned_run)
    for i in range(3):
        make_image(1, 700 + i).save(tmp_path / f"img{i}.png")
    listing = tmp_path / "calib.txt"
    listing.write_text("# production frames\nimg0.png\nimg2.png\n\n")
    cset = build_calibration_set(run, pre, classes, size=10, user_source=listing)
    assert cset.source == SOURCE_LIST
    assert sorted(im["path"] for im in cset.images) == ["img0.png", "img2.png"]


@pytest.mark.parametrize("kind", ["missing", "empty", "only-bad"])
def test_unusable_user_folder_is_a_data_error(finetuned_run: Path, tmp_path: Path, kind: str) -> None:
    run, pre, classes, _ = _ctx(finetuned_run)
    folder = tmp_path / "cam"
    if kind != "missing":
        folder.mkdir()
    if kind == "only-bad":
        (folder / "a.png").write_bytes(b"")
    with pytest.raises(DataError):
        build_calibration_set(run, pre, classes, size=10, user_source=folder)


def test_recipe_profile_in_the_calibration_folder_loads() -> None:
    from edge_tl.targets import get_target

    path = Path(__file__).resolve().parents[1] / "calibration" / "cpu-onnxruntime-int8-entropy.toml"
    target = get_target(str(path))
    assert target.quantizer.calibration_method == "entropy" and target.quantizer.calibration_size == 500


def test_selection_set_judges_a_class_calibration_took_whole_and_names_one_it_cannot(
        finetuned_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 26: on an imbalanced line calibration can take every image of a rare class; the selection set
    then gets that class's calibration images (recorded), and a class with none at all is named."""
    from edge_tl.calibration import CalibrationSet, build_selection_set

    run, pre, classes, split = _ctx(finetuned_run)
    rare = classes[-1]
    root = Path(split["root"])
    val = {p for p, _ in split["val"]}
    whole = [{"path": p, "sha256": sha256_file(root / p), "class": classes[y]}
             for p, y in split["train"] if classes[y] == rare and p not in val]
    assert whole, "precondition: the rare class has training images"
    x = np.zeros((len(whole), 3, pre.crop, pre.crop), np.float32)
    cset = CalibrationSet(x, whole, SOURCE_TRAIN, str(root), len(whole), 0, classes=list(classes))
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        sel = build_selection_set(run, pre, classes, cset, size=30, minimum=5)
    summary = sel.summary()
    assert summary["per_class"][rare] == summary["per_class_from_calibration"][rare] == min(10, len(whole))
    assert not summary["disjoint_from_calibration"] and summary["classes_without_images"] == []
    assert all(im.get("from_calibration") for im in sel.images if im["class"] == rare)
    assert len(sel.inputs) == len(sel.labels) == len(sel.images)
    assert "topped up" in caplog.text
    # Unlabelled calibration images (a camera folder) cannot stand in: the class is named, in the manifest too.
    caplog.clear()
    unlabelled = CalibrationSet(x, [im | {"class": None} for im in whole], SOURCE_FOLDER, str(root), len(whole), 0)
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        sel = build_selection_set(run, pre, classes, unlabelled, size=30, minimum=5)
    assert sel.summary()["classes_without_images"] == [rare] and sel.per_class[rare] == 0
    assert f"no image of class(es) {rare}" in caplog.text
