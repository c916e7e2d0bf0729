"""A detection run bundled, and its bundle answering with boxes without torch (issue 27: detection as a third task).

The tiny detection run of ``conftest.detect_run`` (one linear epoch: its boxes are weak, scores near the NMS floor)
is copied, exported and bundled once for the module with the box threshold at the NMS floor, so every box decides
and is drawn. The box policy's tuning is checked on made-up detections, where the right threshold is known.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("pycocotools")
ort = pytest.importorskip("onnxruntime")

TARGET = "cpu-onnxruntime-fp32"


@pytest.fixture(scope="module")
def bundled(detect_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    """{run, bundle, manifest}: a private copy of the tiny detection run, exported and bundled (not benched:
    --allow-failed) with the box threshold at the NMS floor."""
    run, out = export_and_bundle(detect_run, tmp_path_factory.mktemp("detect-bundle"), TARGET)
    return {"run": run, "bundle": out, "manifest": json.loads((out / "bundle.json").read_text())}


def export_and_bundle(detect_run: Path, root: Path, target: str) -> tuple[Path, Path]:
    """A copy of the tiny detection run in ``root/run``, exported for ``target`` and bundled in ``root/bundle``
    (not benched: --allow-failed) with the box threshold at the NMS floor, so every box decides."""
    from edge_tl.cli import main

    run = root / "run"
    shutil.copytree(detect_run, run)
    assert main(["-q", "export", str(run), "--target", target]) == 0
    floor = json.loads((run / "finetune" / "manifest.json").read_text())["postprocess"]["score_threshold"]
    out = root / "bundle"
    assert main(["-q", "bundle", str(run), "--target", target, "--out", str(out), "--golden", "3",
                 "--defect-threshold", str(floor), "--allow-failed"]) == 0
    return run, out


@pytest.fixture(scope="module")
def odd_image(bundled: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validation image stretched to 160 x 96: another size and shape than the 64 x 64 input."""
    split = json.loads((bundled["run"] / "finetune" / "split.json").read_text())
    src = Path(split["root"]) / split["val"][0]["path"]
    dest = tmp_path_factory.mktemp("odd") / "odd.png"
    Image.open(src).convert("RGB").resize((160, 96), Image.Resampling.BILINEAR).save(dest)
    return dest


def test_bundle_manifest_carries_task_nms_policy_and_golden_boxes(bundled: dict[str, Any]) -> None:
    m, out = bundled["manifest"], bundled["bundle"]
    ft = json.loads((bundled["run"] / "finetune" / "manifest.json").read_text())
    assert m["task"] == "detect" and m["classes"] == ft["classes"]
    post = ft["postprocess"]
    assert m["detect"]["nms"] == {k: post[k] for k in ("score_threshold", "iou_threshold", "max_detections")}
    assert m["detect"]["input_size"] == 64 and m["detect"]["resize_mode"] == ft["preprocessing"]["resize_mode"]
    assert m["preprocessing"] == ft["preprocessing"] and m["model"]["file"] == "model.onnx"
    p = m["policy"]
    assert p["defect_classes"] == ft["classes"] and p["ok_classes"] == []  # no class named like ok
    assert p["thresholds"] == {c: post["score_threshold"] for c in ft["classes"]} and p["tuning"] is None
    v = p["validation"]
    assert v["n"] == len(json.loads((bundled["run"] / "finetune" / "split.json").read_text())["val"])
    assert v["n_defect"] == v["n"] and v["n_ok"] == 0 and v["false_reject_rate"] is None
    assert v["escape_rate"] is not None and 0 <= v["escape_rate"] <= 1
    golden = m["golden"]
    assert len(golden["images"]) >= 1 and golden["tolerance"]["iou"] == pytest.approx(0.99)
    for it in golden["images"]:
        assert (out / it["file"]).is_file() and it["decision"] in ("ok", "defect")
        w, h = it["size"]
        for b in it["boxes"]:
            assert set(b) == {"class", "score", "x1", "y1", "x2", "y2"} and b["class"] in m["classes"]
            assert 0 <= b["x1"] <= b["x2"] <= w and 0 <= b["y1"] <= b["y2"] <= h
    sums = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert sums == {"model.onnx", "bundle.json", *(it["file"] for it in golden["images"])}


def test_predict_without_torch_gives_boxes_in_the_original_pixels(bundled: dict[str, Any], odd_image: Path) -> None:
    """In a process where torch cannot be imported, the runtime and `predict --json` answer with boxes, in the
    pixels of a 160 x 96 image fed to a 64 x 64 model: the graph's boxes after NMS, the resize undone (letterbox:
    the padding removed, then scaled by 160/64 and 96/38; full: scaled by 160/64 and 96/64), clipped to the image."""
    b = str(bundled["bundle"])
    code = f"""
import json, sys
for name in ("torch", "torchvision", "openvino", "onnx", "pycocotools", "edge_tl.training", "edge_tl.models",
             "edge_tl.checkpoint", "edge_tl.evalset", "edge_tl.detect.train", "edge_tl.detect.ship"):
    sys.modules[name] = None  # any import of these raises ImportError
from edge_tl.runtime import open_bundle
with open_bundle({b!r}) as rt:
    p = rt.predict({str(odd_image)!r})
    golden = rt.golden_report
from edge_tl.cli import main
rc = main(["predict", {b!r}, {str(odd_image)!r}, "--json"])
print(json.dumps({{"rc": rc, "n": len(p.boxes), "golden": golden["passed"],
                  "torch": sys.modules["torch"] is not None}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    row, summary = json.loads(lines[0]), json.loads(lines[-1])
    assert summary == {"rc": 0, "n": len(row["boxes"]), "golden": True, "torch": False}
    assert row["decision"] in ("ok", "defect") and row["reason"] in ("defect_box", "no_defect_box")
    assert row["boxes"], "the floor threshold keeps every box after NMS: the tiny model finds some"
    # The same image through ONNX Runtime directly: the boxes the graph gives in input pixels, after NMS.
    from edge_tl.runtime import Runtime
    from edge_tl.runtime.nms import nms

    m = bundled["manifest"]
    with Runtime(bundled["bundle"]) as rt:
        x = rt.prepare(odd_image)[None]
    sess = ort.InferenceSession(str(bundled["bundle"] / "model.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"input": x})
    d = nms(boxes[0], scores[0], **m["detect"]["nms"])
    if m["detect"]["resize_mode"] == "letterbox":  # 160 x 96 fitted to 64 x 38, centred: 13 rows of padding above
        expected = (d.boxes - np.array([0, 13, 0, 13], np.float32)) * np.array([160 / 64, 96 / 38, 160 / 64, 96 / 38])
    else:  # squeezed into the square
        expected = d.boxes * np.array([160 / 64, 96 / 64, 160 / 64, 96 / 64], np.float32)
    expected = expected.clip(0, [160, 96, 160, 96])
    got = np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in row["boxes"]])
    assert expected.max() > 1  # so that an answer left in input pixels would differ
    np.testing.assert_allclose(got, expected, atol=0.011)
    assert [r["class"] for r in row["boxes"]] == [m["classes"][k] for k in d.labels]
    np.testing.assert_allclose([r["score"] for r in row["boxes"]], d.scores, atol=1e-6)


def test_draw_writes_the_image_with_its_boxes(bundled: dict[str, Any], odd_image: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    assert main(["predict", str(bundled["bundle"]), str(odd_image), "--json", "--draw", str(tmp_path / "drawn")]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    drawn = tmp_path / "drawn" / "odd.drawn.png"
    assert drawn.is_file()
    before = np.asarray(Image.open(odd_image).convert("RGB"), np.int16)
    after = np.asarray(Image.open(drawn).convert("RGB"), np.int16)
    assert after.shape == before.shape  # drawn on the image itself, in its pixels
    changed = np.abs(after - before).sum(axis=2) > 0
    near = np.pad(changed, 1)  # changed within one pixel: Pillow rounds the corners of a box in float pixels
    near = np.stack([near[1 + dy:near.shape[0] - 1 + dy, 1 + dx:near.shape[1] - 1 + dx]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).any(axis=0)
    h, w = changed.shape
    top = row["boxes"][0]  # drawn last, on top of the others
    x1, y1, x2, y2 = (round(top[k]) for k in ("x1", "y1", "x2", "y2"))
    outline = ([(x, y) for x in range(x1, x2 + 1) for y in (y1, y2)]
               + [(x, y) for y in range(y1, y2 + 1) for x in (x1, x2)])
    inside = [(x, y) for x, y in outline if 0 <= x < w and 0 <= y < h]
    assert inside and np.mean([near[y, x] for x, y in inside]) > 0.9, "the box's outline is drawn"
    # A folder in batches of two: every image answered with its boxes, every one drawn.
    folder = tmp_path / "in"
    folder.mkdir()
    for k, it in enumerate(bundled["manifest"]["golden"]["images"][:2]):
        shutil.copy(bundled["bundle"] / it["file"], folder / f"g{k}.png")
    shutil.copy(odd_image, folder / "odd.png")
    assert main(["predict", str(bundled["bundle"]), str(folder), "--json", "--batch", "2",
                 "--draw", str(tmp_path / "many")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in folder.iterdir())
    assert all(r["batch_size"] in (1, 2) and "boxes" in r for r in rows)
    drawn_names = sorted(p.name for p in (tmp_path / "many").iterdir())
    assert drawn_names == sorted(f"{p.stem}.drawn.png" for p in folder.iterdir())


def test_watch_logs_the_boxes(bundled: dict[str, Any], odd_image: Path, tmp_path: Path) -> None:
    from edge_tl.cli import main

    folder = tmp_path / "drop"
    folder.mkdir()
    shutil.copy(odd_image, folder / "a.png")
    assert main(["-q", "watch", str(bundled["bundle"]), str(folder), "--once", "--settle", "0",
                 "--log", str(tmp_path / "log.jsonl")]) == 0
    [rec] = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rec["file"] == "a.png" and rec["decision"] in ("ok", "defect") and rec["boxes"]
    assert set(rec["boxes"][0]) == {"class", "score", "x1", "y1", "x2", "y2"}
    assert main(["-q", "watch", str(bundled["bundle"]), str(folder), "--once", "--settle", "0",
                 "--log", str(tmp_path / "log.csv")]) == 0
    import csv

    with open(tmp_path / "log.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert json.loads(row["boxes"]) == rec["boxes"]


def test_the_golden_check_compares_boxes(bundled: dict[str, Any], tmp_path: Path) -> None:
    """A golden box moved by a few pixels (hashes made consistent again) is a refusal naming the image."""
    from edge_tl.errors import ArtifactError
    from edge_tl.runtime import Runtime
    from edge_tl.runtime.bundlefile import write_sums

    b = tmp_path / "b"
    shutil.copytree(bundled["bundle"], b)
    m = json.loads((b / "bundle.json").read_text())
    it = next(i for i in m["golden"]["images"] if i["boxes"])
    it["boxes"][0]["x1"] += 3.0
    it["boxes"][0]["x2"] += 3.0
    (b / "bundle.json").write_text(json.dumps(m))
    write_sums(b, [line.split("  ", 1)[1] for line in (b / "SHA256SUMS").read_text().splitlines()])
    with pytest.raises(ArtifactError, match=r"golden image .*(not reproduced|not expected)"):
        Runtime(b)


def test_a_flipped_byte_in_the_model_is_refused_with_exit_2(bundled: dict[str, Any], odd_image: Path,
                                                            tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(bundled["bundle"], b)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "edge_tl", "predict", str(b), str(odd_image), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert str(b / "model.onnx") in err[0] and "sha256" in err[0]


def test_options_a_detector_has_no_use_for_are_one_line(bundled: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    capsys.readouterr()
    for extra, words in ((["--ok-threshold", "0.5"], "--ok-threshold is a classifier's"),
                         (["--ood-limit", "2"], "no ood_score output"),
                         (["--max-false-reject", "0.05"], "cannot tune --max-false-reject")):
        assert main(["-q", "bundle", str(bundled["run"]), "--target", TARGET, "--out", str(tmp_path / "x"),
                     "--allow-failed", *extra]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and words in errors[0], errors
    assert not (tmp_path / "x").exists()


def test_too_few_validation_images_keep_the_stated_threshold(bundled: dict[str, Any], tmp_path: Path) -> None:
    """Two or three defect images cannot show a 5 % escape rate: the bundle says so and keeps --defect-threshold."""
    from edge_tl.stages.bundle import bundle

    m = bundle(bundled["run"], TARGET, tmp_path / "b", n_golden=1, max_escape=0.05, defect_threshold=0.3,
               allow_failed=True)
    tuning = m["policy"]["tuning"]
    assert tuning["target_met"] is False and tuning["threshold_source"] == "default"
    assert m["policy"]["threshold"] == pytest.approx(0.3) and "cannot show a rate within 0.05" in tuning["reason"]
    assert "box threshold 0.3" in tuning["reason"]


# -- the box policy on made-up detections ------------------------------------------------------------


def _image(score: float | None, label: int = 0) -> Any:
    from edge_tl.runtime.nms import Detections

    if score is None:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return Detections(np.array([[10, 10, 30, 30]], np.float32), np.array([score], np.float32), np.array([label]))


def _truth(defect: bool, label: int = 0) -> dict[str, Any]:
    if not defect:
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    return {"boxes": np.array([[10, 10, 30, 30]], np.float32), "labels": np.array([label])}


def test_escape_tuning_picks_the_highest_threshold_within_the_bound() -> None:
    from edge_tl.runtime.boxes import make_box_policy, tune_box_threshold
    from edge_tl.runtime.policy import rate_upper_bound

    rng = np.random.default_rng(0)
    scores = rng.uniform(0.06, 0.99, 400).astype(np.float32)
    dets = [_image(float(s)) for s in scores] + [_image(None)]  # one defect the model misses entirely
    truths = [_truth(True)] * 401
    policy = make_box_policy(["scratch", "pit"], threshold=0.5)
    tuned, rec = tune_box_threshold(policy, dets, truths, floor=0.05, max_escape=0.05)
    t = tuned.threshold
    assert rec["target_met"] is True and rec["threshold_source"] == "tuned" and rec["threshold"] == t

    def escapes(limit: float) -> int:
        return int((scores < limit).sum()) + 1

    assert rate_upper_bound(escapes(t), 401) <= 0.05  # within the target, provably
    # ... and the highest such: the next threshold up lets the image scoring t escape, one too many.
    assert escapes(float(np.nextafter(np.float32(t), np.float32(1)))) == escapes(t) + 1
    assert rate_upper_bound(escapes(t) + 1, 401) > 0.05
    assert rec["escapes"] == escapes(t) and rec["escape_rate"] == pytest.approx(escapes(t) / 401)
    assert rec["box_recall"] == pytest.approx((401 - escapes(t)) / 401)
    assert rec["escape_upper_bound"] == pytest.approx(rate_upper_bound(escapes(t), 401))
    # A box of an ok class never makes a defect: with "pit" an ok class, its boxes do not count.
    pit = make_box_policy(["scratch", "pit"], ok_classes=["pit"], threshold=0.1)
    assert pit.decide(np.array([1]), np.array([0.9]))[0] == "ok"
    assert pit.decide(np.array([1, 0]), np.array([0.9, 0.2]))[:3] == ("defect", 0, pytest.approx(0.2))


def test_false_reject_tuning_and_its_refusals() -> None:
    from edge_tl.runtime.boxes import make_box_policy, tune_box_threshold
    from edge_tl.runtime.policy import rate_upper_bound

    rng = np.random.default_rng(1)
    good = rng.uniform(0.06, 0.6, 300).astype(np.float32).astype(np.float64)  # scores as the graph gives them
    dets = [_image(float(s)) for s in good] + [_image(0.9)] * 50
    truths = [_truth(False)] * 300 + [_truth(True)] * 50
    policy = make_box_policy(["scratch"], threshold=0.5)
    tuned, rec = tune_box_threshold(policy, dets, truths, floor=0.05, max_false_reject=0.05)
    t = tuned.threshold
    rejects = int((good >= t).sum())
    assert rec["target_met"] is True and rec["false_rejects"] == rejects and rec["escapes"] == 0
    assert rate_upper_bound(rejects, 300) <= 0.05 < rate_upper_bound(rejects + 1, 300)
    assert np.sort(good)[::-1][rejects] == np.nextafter(t, 0)  # the lowest such threshold
    # Too few defect images: the stated threshold stays, and the record says why.
    few, rec = tune_box_threshold(policy, dets[-3:], truths[-3:], floor=0.05, max_escape=0.01)
    assert few.threshold == 0.5 and rec["target_met"] is False and rec["threshold_source"] == "default"
    # More defects with no box at all than the target allows: every box counts, target not met.
    missed, rec = tune_box_threshold(policy, [_image(None)] * 20 + [_image(0.9)] * 80, [_truth(True)] * 100,
                                     floor=0.05, max_escape=0.05)
    assert missed.threshold == 0.05 and rec["target_met"] is False and "no box of a defect class" in rec["reason"]


def test_an_openvino_bundle_gives_the_same_boxes(bundled: dict[str, Any], odd_image: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from edge_tl.cli import main
    from edge_tl.runtime import Runtime
    from edge_tl.runtime.boxes import golden_box_problem

    assert main(["-q", "export", str(bundled["run"]), "--target", "cpu-openvino-fp32"]) == 0
    assert main(["-q", "bundle", str(bundled["run"]), "--target", "cpu-openvino-fp32", "--out", str(tmp_path / "ov"),
                 "--golden", "1", "--allow-failed"]) == 0
    with Runtime(tmp_path / "ov") as ov, Runtime(bundled["bundle"]) as onnx:
        assert ov.manifest["model"]["file"] == "model.xml" and ov.golden_report["passed"]
        a, b = ov.predict(odd_image), onnx.predict(odd_image)
        tol = ov.manifest["golden"]["tolerance"]
        assert a.boxes and golden_box_problem(b.boxes, a.boxes, tol, ov.nms) is None
