"""What a detection bench shows (issue 27, reporting): the target page's picture grid (ground truth, reference and
candidate boxes) and per-class AP table, mAP@0.5 in the run index where a classifier shows top-1, ``bench --data``
on another box folder, and validation images checked against the sha256 ``split.json`` records.

One tiny run (20 YOLO images at 64 px, 20 linear epochs) is trained and exported once for the module; every step
goes through the CLI, as a user runs it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .detect_data import CLASSES, write_set

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")
pytest.importorskip("onnxruntime")

TARGET = "cpu-onnxruntime-fp32"
STYLES = {"truth": "#009E73", "reference": "#0072B2", "candidate": "#D55E00"}  # charts.BOX_STYLES


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("yolo"), "yolo", n=20, size=64)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data: Path, one_thread: None) -> Path:
    from edge_tl.cli import main
    from edge_tl.detect.train import fit_detector

    out = tmp_path_factory.mktemp("run")
    # enough epochs for detections above the pictures' score floor (0.3): one epoch's score about 0.1
    fit_detector(data, out, mode="linear", input_size=64, epochs=20, batch_size=4, lr=1e-2, patience=None)
    assert main(["-q", "export", str(out), "--target", TARGET]) == 0
    return out


@pytest.fixture(scope="module")
def report(run: Path) -> dict[str, Any]:
    from edge_tl.cli import main

    assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency"]) == 0
    return json.loads((run / "reports" / f"{TARGET}.json").read_text())


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _rects(page: str, color: str) -> int:
    return len(re.findall(rf'<rect [^>]*stroke="{color}"', page))


def test_split_records_every_image_sha256(run: Path, data: Path) -> None:
    from edge_tl.manifest import sha256_file

    split = json.loads((run / "finetune" / "split.json").read_text())
    paths = [r["path"] for r in split["train"] + split["val"]]
    assert sorted(split["sha256"]) == sorted(paths)
    assert all(split["sha256"][p] == sha256_file(data / p) for p in paths)


def test_target_page_draws_the_three_kinds_of_box_and_per_class_ap(run: Path, report: dict[str, Any]) -> None:
    plot = report["detect_plot"]
    images = plot["images"]
    assert len(images) == min(12, report["n"]) and all(im["jpeg"].startswith("data:image/jpeg;base64,")
                                                        for im in images)
    counts = {kind: sum(len(im[kind]) for im in images) for kind in STYLES}
    assert counts["truth"] > 0 and counts["reference"] > 0 and counts["candidate"] > 0, counts
    assert sum(plot["boxes_per_class"].values()) == sum(len(im["truth"]) for im in images)  # n <= 12: all shown
    page = (run / "reports" / f"{TARGET}.html").read_text()
    # every stored box drawn once, in its own style (the legend draws lines, not rects)
    assert {kind: _rects(page, color) for kind, color in STYLES.items()} == counts
    assert page.count('<figure class="detection">') == len(images) and page.count("<image href=\"data:image/") == len(
        images)
    for word in ("ground truth", "reference (torch)", "candidate (target)", "AP@0.5 per class", "ground-truth boxes"):
        assert word in page, word
    table = page[page.index("class='per-class-ap'"):]
    table = table[:table.index("</table>")]
    for c in CLASSES:
        assert f"<td>{c}</td>" in table
    ref_ap = report["reference"]["per_class_ap50"]
    assert f"{ref_ap[CLASSES[0]]:.3f}" in table
    assert max(im["disagreement"] for im in images) == images[0]["disagreement"]  # the most disagreeing first
    assert [Path(im["path"]).name for im in images if not im["disagreement"]] == sorted(
        Path(im["path"]).name for im in images if not im["disagreement"])


def test_index_and_console_show_map_for_a_detect_target(run: Path, report: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    index = (run / "reports" / "index.html").read_text()
    ref = report["reference"]["map50"]
    assert f"mAP@0.5 {ref:.3f} on this evaluation set" in index and "top-1" not in index
    assert "<th>mAP@0.5</th>" in index and f"<td>{report['candidate']['map50']:.3f}</td>" in index
    data = json.loads((run / "reports" / "index.json").read_text())
    (own,) = data["evaluation_sets"]
    assert own["headline"] == {"figure": "mAP@0.5", "key": "map50"} and own["reference_map50"] == ref
    row = own["rows"][0]
    assert row["headline"] == row["map50"] == report["candidate"]["map50"] and row["task"] == "detect"
    capsys.readouterr()
    assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert f"{TARGET}: mAP@0.5 {report['candidate']['map50']:.3f} (reference {ref:.3f})" in out


def test_bench_data_reports_on_another_box_folder(run: Path, report: dict[str, Any], tmp_path: Path) -> None:
    from edge_tl.cli import main

    other = write_set(tmp_path / "line2", "coco", n=6, size=64, seed=7)
    assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency", "--data", str(other)]) == 0
    (folder,) = (run / "reports").glob("data-line2-*")
    r = json.loads((folder / f"{TARGET}.json").read_text())
    ident = r["eval_set"]
    assert ident["kind"] == "folder" and ident["folder"] == str(other.resolve()) and ident["n"] == r["n"] == 6
    assert ident["format"] == "coco" and folder.name == f"data-line2-{ident['sha256'][:8]}"
    assert any(str(other.resolve()) in n and "coco layout" in n for n in r["notes"])
    assert {Path(im["path"]).name for im in r["detect_plot"]["images"]} <= {f"img_{i:03d}.png" for i in range(6)}
    assert r["candidate"]["map50"] == pytest.approx(r["reference"]["map50"], abs=1e-6)
    assert "line2" in (folder / f"{TARGET}.html").read_text()
    # the run's own report is untouched; the index shows both evaluation sets, each with its mAP
    assert json.loads((run / "reports" / f"{TARGET}.json").read_text())["eval_set"] == report["eval_set"]
    sets = json.loads((run / "reports" / "index.json").read_text())["evaluation_sets"]
    assert [s["eval_set"]["kind"] for s in sets] == ["validation split", "folder"]
    assert all(s["headline"]["key"] == "map50" for s in sets)


def test_moved_or_edited_validation_image_is_refused(run: Path, data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from edge_tl.cli import main

    val = json.loads((run / "finetune" / "split.json").read_text())["val"][0]["path"]
    image = data / val
    kept = image.read_bytes()
    try:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)  # edited: decodes, other bytes
        capsys.readouterr()
        assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency"]) == 2
        err = _one_line_error(capsys)
        assert val in err and "changed since the run was fine-tuned" in err
        assert main(["-q", "export", str(run), "--target", TARGET]) == 2
        assert val in _one_line_error(capsys)
        # moved to a new folder: export --data reads it there, checked against the same sha256
        moved = tmp_path / "moved"
        shutil.copytree(data, moved)
        assert main(["-q", "export", str(run), "--target", TARGET, "--data", str(moved)]) == 2
        err = _one_line_error(capsys)
        assert f"--data {moved}" in err and val in err
        image.unlink()  # gone from the run's folder
        assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency"]) == 2
        err = _one_line_error(capsys)
        assert val in err and "missing" in err
    finally:
        image.write_bytes(kept)
    assert main(["-q", "bench", str(run), "--target", TARGET, "--no-latency"]) == 0


def test_a_split_without_sha256_still_loads(run: Path, tmp_path: Path) -> None:
    from edge_tl.detect.export import held_out

    stage = tmp_path / "finetune"
    stage.mkdir()
    split = json.loads((run / "finetune" / "split.json").read_text())
    split.pop("sha256")  # as a run fine-tuned before split.json recorded it
    (stage / "split.json").write_text(json.dumps(split))
    ft = json.loads((run / "finetune" / "manifest.json").read_text())
    assert len(held_out(stage, ft).frames.items) == len(split["val"])


def test_grid_order_is_disagreement_then_file_name() -> None:
    from edge_tl.detect.gallery import pick
    from edge_tl.detect.nms import Detections

    def dets(*boxes: tuple[float, float, float, float, int, float]) -> Detections:
        a = np.asarray(boxes, np.float32).reshape(-1, 6)
        return Detections(a[:, :4], a[:, 5], a[:, 4].astype(np.int64))

    box = (10, 10, 30, 30, 0, 0.9)
    paths = ["z/b.png", "a/d.png", "c.png", "a.png"]
    ref = [dets(box), dets(box), dets(box), dets(box)]
    cand = [dets(box), dets(), dets((10, 10, 30, 30, 1, 0.9), (40, 40, 60, 60, 0, 0.8)), dets((10, 10, 30, 30, 0, 0.2))]
    # c.png: 1 + 2 unmatched; d.png: 1; a.png: its only candidate box scores under the drawing floor: 1
    assert pick(paths, ref, cand) == [(2, 3), (3, 1), (1, 1), (0, 0)]
    assert pick(paths, ref, cand, n=2) == [(2, 3), (3, 1)]
    # agreeing images: spread over the file-name order (not its first n, often all of one class), in that order
    names = [f"{c}_{k}.png" for c in ("crazing", "inclusion", "patches") for k in range(4)][::-1]
    same = [dets(box)] * len(names)
    shown = [names[i] for i, _ in pick(names, same, same, n=3)]
    assert shown == ["crazing_0.png", "inclusion_0.png", "patches_0.png"]


def test_an_agreeing_candidate_label_is_not_printed_twice() -> None:
    from edge_tl.bench.charts import detections_svg

    im = {"path": "a.png", "width": 100, "height": 100, "jpeg": "data:image/jpeg;base64,AA==",
          "truth": [[10, 10, 40, 40, 0]], "reference": [[10, 10, 40, 40, 0, 0.91], [50, 50, 90, 90, 1, 0.5]],
          "candidate": [[10.2, 10, 40, 40, 0, 0.912], [50, 50, 90, 90, 1, 0.44]]}
    svg = detections_svg(im, CLASSES)
    assert svg.count(">bright 0.91</text>") == 1 and ">striped 0.50</text>" in svg and ">striped 0.44</text>" in svg
    assert svg.count("<rect ") == 5 and svg.count(">bright</text>") == 1  # every box drawn; the truth's label
