"""Detection data (issue 27): the three layouts read the same boxes; bad annotations are named, not crashes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_tl.detect.data import class_counts, detect_format, read_detection_set, split_images
from edge_tl.errors import ConfigError, DataError

from .detect_data import CLASSES, synthetic_images, write_set


def _by_path(ds):
    return {Path(a.path).name: (a.boxes, a.labels) for a in ds.images}


@pytest.mark.parametrize("layout", ["voc", "coco", "yolo"])
def test_layouts_read_the_exact_boxes(tmp_path: Path, layout: str) -> None:
    write_set(tmp_path, layout, n=6)
    assert detect_format(tmp_path) == layout
    ds = read_detection_set(tmp_path)
    assert ds.format == layout and ds.classes == CLASSES and not ds.issues and ds.clipped == 0
    truth = synthetic_images(6)
    got = _by_path(ds)
    assert len(got) == 6
    for i, (_img, boxes, labels) in enumerate(truth):
        b, y = got[f"img_{i:03d}.png"]
        assert b.dtype == np.float32 and b.shape == boxes.shape
        np.testing.assert_allclose(b, boxes, atol=1e-3)  # YOLO stores fractions: float rounding only
        np.testing.assert_array_equal(y, labels)
    # Named explicitly, the same.
    assert _by_path(read_detection_set(tmp_path, layout)).keys() == got.keys()


def test_bad_annotations_are_named_and_the_image_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_set(tmp_path, "voc", n=6)
    ann = tmp_path / "annotations"
    xml = (ann / "img_000.xml").read_text()
    # Far outside the 96 px image; a zero-width box; an unknown class; a tiny overshoot (clipped).
    (ann / "img_000.xml").write_text(xml.replace("</annotation>", "<object><name>bright</name><bndbox><xmin>10</xmin>"
                                                 "<ymin>10</ymin><xmax>150</xmax><ymax>20</ymax></bndbox></object>"
                                                 "</annotation>"))
    (ann / "img_001.xml").write_text((ann / "img_001.xml").read_text().replace(
        "</annotation>", "<object><name>bright</name><bndbox><xmin>30</xmin><ymin>10</ymin><xmax>30</xmax>"
                         "<ymax>20</ymax></bndbox></object></annotation>"))
    (ann / "img_002.xml").write_text((ann / "img_002.xml").read_text().replace(
        "</annotation>", "<object><name>rust</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
                         "<ymax>9</ymax></bndbox></object></annotation>"))
    (ann / "img_003.xml").write_text((ann / "img_003.xml").read_text().replace(
        "</annotation>", "<object><name>bright</name><bndbox><xmin>80</xmin><ymin>80</ymin><xmax>97</xmax>"
                         "<ymax>96.5</ymax></bndbox></object></annotation>"))
    (ann / "img_004.xml").write_text("<annotation><filename>img_004.png</filename")  # broken XML
    with caplog.at_level(logging.WARNING, logger="edge_tl"):
        ds = read_detection_set(tmp_path, classes=CLASSES)
    files = {i["file"]: i["reason"] for i in ds.issues}
    assert "outside the 96x96 image" in files["annotations/img_000.xml"]
    assert "no positive width" in files["annotations/img_001.xml"]
    assert "unknown class" in files["annotations/img_002.xml"]
    assert "not readable XML" in files["annotations/img_004.xml"]
    names = {Path(a.path).name for a in ds.images}
    assert names == {"img_003.png", "img_005.png"}  # every image with a bad box is left out whole
    assert ds.clipped == 1
    clipped = next(a for a in ds.images if a.path.endswith("img_003.png")).boxes
    assert clipped.max() == 96.0
    text = caplog.text
    assert "img_000.xml" in text and "outside" in text and "clipped 1 box" in text


def test_nothing_usable_is_one_line_data_error(tmp_path: Path) -> None:
    write_set(tmp_path, "yolo", n=2)
    for p in (tmp_path / "labels").glob("*.txt"):
        p.write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 2 names
    with pytest.raises(DataError, match="no image with a usable box") as err:
        read_detection_set(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no detection annotations"):
        read_detection_set(tmp_path / "images")
    with pytest.raises(ConfigError, match="--format"):
        read_detection_set(tmp_path, "pascal")


def test_coco_categories_and_missing_image(tmp_path: Path) -> None:
    write_set(tmp_path, "coco", n=4)
    data = json.loads((tmp_path / "annotations.json").read_text())
    data["images"].append({"id": 99, "file_name": "gone.png", "width": 96, "height": 96})
    data["annotations"].append({"id": 999, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]})
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    ds = read_detection_set(tmp_path)
    assert len(ds.images) == 4
    assert any("gone.png not found" in i["reason"] for i in ds.issues)


def test_split_is_by_image_seeded_and_counted(tmp_path: Path) -> None:
    write_set(tmp_path, "voc", n=20)
    ds = read_detection_set(tmp_path)
    tr, va = split_images(ds.images, 0.2, seed=3)
    _tr2, va2 = split_images(ds.images, 0.2, seed=3)
    assert [a.path for a in va] == [a.path for a in va2] and len(va) == 4 and len(tr) == 16
    assert not {a.path for a in tr} & {a.path for a in va}
    assert [a.path for a in split_images(ds.images, 0.2, seed=4)[1]] != [a.path for a in va]
    counts_tr, counts_va = class_counts(tr, ds.classes), class_counts(va, ds.classes)
    assert counts_tr["all"]["boxes"] + counts_va["all"]["boxes"] == ds.n_boxes == 30
    assert set(counts_tr) == {*CLASSES, "all"}
