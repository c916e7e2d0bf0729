"""Issue 24 item 6: byte-identical images never straddle training and validation; two-label copies are named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from edge_tl.data import scan_image_folder, split_to_json, stratified_split
from edge_tl.errors import DataError

from .conftest import write_folder


def _with_duplicates(root: Path) -> Path:
    """3 classes × 12 images, plus: 4 groups of same-class copies (2-4 copies each) and one image copied into
    another class (two labels): 44 files."""
    write_folder(root)
    for k, cls in enumerate(("horizontal", "vertical", "blobs", "horizontal")):
        for c in range(1 + k % 3):
            shutil.copyfile(root / cls / f"{cls}_{k:03d}.png" if k % 2 else root / cls / f"{cls}_{k:03d}.jpg",
                            root / cls / f"copy{c}_{cls}_{k:03d}{'.png' if k % 2 else '.jpg'}")
    shutil.copyfile(root / "vertical" / "vertical_005.png", root / "blobs" / "looks_vertical.png")
    return root


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_identical_files_stay_in_one_split_and_two_label_copies_are_left_out(
        tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    folder = scan_image_folder(_with_duplicates(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        train, val = stratified_split(folder.samples, 0.3, seed)
    digest = {s.path: s.sha256 for s in folder.samples}
    assert not {digest[s.path] for s in train} & {digest[s.path] for s in val}  # no copy on both sides
    conflicting = {"vertical/vertical_005.png", "blobs/looks_vertical.png"}
    assert not conflicting & {s.path for s in train + val}
    assert len(train) + len(val) == len(folder.samples) - 2
    assert {s.label for s in val} == {0, 1, 2}  # every class still validated
    text = caplog.text
    # Same-class groups: 1+2+3+1 copies plus their 4 originals = 11 files in 4 groups.
    assert "11 duplicate file(s) in 4 group(s) kept together in one split" in text
    assert "vertical/vertical_005.png" in text and "blobs/looks_vertical.png" in text and "two or more labels" in text
    record = split_to_json(folder, train, val, seed, 0.3)
    assert record["duplicates"] == {"files": 11, "groups": 4, "left_out": 2,
                                    "conflicting_labels": [["blobs/looks_vertical.png", "vertical/vertical_005.png"]]}
    assert record["sha256"]["blobs/looks_vertical.png"] == record["sha256"]["vertical/vertical_005.png"]
    json.dumps(record)


def test_split_without_duplicates_is_unchanged(image_folder: Path) -> None:
    """No copies: the same split as before the grouping (the first n_val of each shuffled class), and silence."""
    import random

    folder = scan_image_folder(image_folder)
    train, val = stratified_split(folder.samples, 0.2, 3)
    rng = random.Random(3)
    expected_val = []
    for label in range(3):
        group = sorted((s for s in folder.samples if s.label == label), key=lambda s: s.path)
        rng.shuffle(group)
        expected_val += group[:round(len(group) * 0.2)]
    assert val == expected_val and len(train) == len(folder.samples) - len(val)
    assert split_to_json(folder, train, val, 3, 0.2)["duplicates"]["files"] == 0


def test_class_made_only_of_another_class_copies_is_an_error(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=("a", "b"), per_class=3)
    (root / "c").mkdir()
    shutil.copyfile(root / "a" / "a_000.jpg", root / "c" / "x.jpg")
    with pytest.raises(DataError, match=r"class.* c have no image left"):
        stratified_split(scan_image_folder(root).samples, 0.2, 0)


def test_finetune_records_duplicates(tmp_path: Path) -> None:
    from edge_tl.stages.finetune import finetune
    from edge_tl.training import TrainConfig

    data = _with_duplicates(tmp_path / "data")
    manifest = finetune(data, tmp_path / "run", train_cfg=TrainConfig(mode="linear", epochs=1, quiet=True, workers=0))
    assert manifest["data"]["duplicates"]["groups"] == 4 and manifest["data"]["duplicates"]["left_out"] == 2
    split = json.loads((tmp_path / "run" / "finetune" / "split.json").read_text())
    assert split["duplicates"] == manifest["data"]["duplicates"]
