"""The camera runtime never drops an image: bad files, paused writers, wrong clocks, and the CLI's answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.cli import main
from edge_tl.runtime import Runtime
from edge_tl.runtime.watch import Watcher

from .conftest import make_image

TARGET = "cpu-onnxruntime-fp32"


@pytest.fixture(scope="module")
def run_and_bundle(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An exported copy of the tiny run and its bundle, with 'blobs' as the ok class: about 2 good
    validation images, far too few to show the default 1 % false-reject target."""
    from edge_tl.stages.bundle import bundle as make_bundle
    from edge_tl.stages.export import export

    root = tmp_path_factory.mktemp("robust")
    run = root / "run"
    shutil.copytree(finetuned_run, run)
    export(run, TARGET)
    make_bundle(run, TARGET, root / "bundle", n_golden=3, ok_classes=["blobs"], allow_failed=True)
    return run, root / "bundle"


@pytest.fixture(scope="module")
def bundle(run_and_bundle: tuple[Path, Path]) -> Path:
    return run_and_bundle[1]


@pytest.fixture(scope="module")
def rt(bundle: Path) -> Runtime:
    with Runtime(bundle) as runtime:
        yield runtime


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _frame(path: Path, seed: int) -> bytes:
    make_image(seed % 3, 7000 + seed, size=96).save(path)
    return path.read_bytes()


def test_the_bundle_claims_no_rate_its_validation_set_cannot_show(run_and_bundle: tuple[Path, Path]) -> None:
    policy = json.loads((run_and_bundle[1] / "bundle.json").read_text())["policy"]
    tuning = policy["tuning"]
    assert tuning["target_false_reject"] == 0.01 and not tuning["target_met"]
    assert tuning["threshold_source"] == "default" and policy["ok_threshold"] == 0.5
    assert tuning["false_reject_upper_bound"] > 0.5 and "299" in tuning["reason"]


# -- 4. writers that pause ----------------------------------------------------------------------------


def test_an_upload_that_pauses_half_way_is_classified_once_finished(rt: Runtime, tmp_path: Path) -> None:
    """JPEG and PNG uploads stall 3 s half way: not errors, not moved while written; classified once
    complete (--move-to, --settle 0.5)."""
    cam, done = tmp_path / "cam", tmp_path / "done"
    cam.mkdir()
    src = {name: _frame(tmp_path / name, k) for k, name in enumerate(("upload.jpg", "upload.png"))}

    def upload(name: str) -> None:
        data = src[name]
        with open(cam / name, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(3.0)
            f.write(data[len(data) // 2:])

    writers = [threading.Thread(target=upload, args=(name,)) for name in src]
    with Watcher(rt, cam, settle=0.5, move_to=done) as w:
        for t in writers:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(jsonl(cam / "edge-tl-results.jsonl")) < 2:
            w.poll()
            time.sleep(0.05)
        for t in writers:
            t.join()
    rows = jsonl(cam / "edge-tl-results.jsonl")
    assert sorted(r["file"] for r in rows) == sorted(src)
    assert all(r["decision"] != "error" for r in rows), rows
    for name, data in src.items():
        assert (done / name).read_bytes() == data  # moved only once whole


def test_a_stable_unreadable_file_is_one_error_after_error_after(rt: Runtime, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    cam.mkdir()
    data = _frame(tmp_path / "x.jpg", 1)
    (cam / "cut.jpg").write_bytes(data[:300])
    with Watcher(rt, cam, settle=0.2, error_after=1.0) as w:
        start = time.monotonic()
        while not w.tracked and time.monotonic() - start < 10:
            w.poll()
            time.sleep(0.05)
        assert time.monotonic() - start >= 1.0  # a pause is given error_after before it is an error
        for _ in range(3):
            assert w.poll() == 0
    rows = jsonl(cam / "edge-tl-results.jsonl")
    assert [r["decision"] for r in rows] == ["error"] and "cut.jpg" in rows[0]["error"]


# -- 5. clocks ----------------------------------------------------------------------------------------


def test_settling_does_not_depend_on_the_cameras_clock(rt: Runtime, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    cam.mkdir()
    ahead = cam / "ahead.png"
    _frame(ahead, 2)
    t = time.time() + 3600  # camera clock an hour ahead: used to wait an hour
    os.utime(ahead, (t, t))
    behind = cam / "behind.jpg"
    whole = _frame(tmp_path / "behind.jpg", 3)
    behind.write_bytes(whole[: len(whole) // 2])  # still being written, by a camera an hour behind
    t = time.time() - 3600
    os.utime(behind, (t, t))
    with Watcher(rt, cam, settle=0.3) as w:
        assert w.poll() == 0  # first sight: neither has been seen holding still
        time.sleep(0.1)
        with open(behind, "ab") as f:
            f.write(whole[len(whole) // 2:])
        os.utime(behind, (t + 1, t + 1))
        time.sleep(0.25)
        assert w.poll() == 1  # the future one, 0.35 s after first sight; the other just changed
        time.sleep(0.35)
        assert w.poll() == 1
    rows = jsonl(cam / "edge-tl-results.jsonl")
    assert [r["file"] for r in rows] == ["ahead.png", "behind.jpg"]
    assert all(r["decision"] != "error" for r in rows)


# -- 3 + 2 + 1 together: one folder of every bad file, through the CLI -------------------------------


@pytest.fixture(scope="module")
def drop_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    """20 good frames, good frames in other formats and bit depths, and one of every bad file."""
    cam = tmp_path_factory.mktemp("drop") / "cam"
    cam.mkdir()
    good = set()
    for i in range(20):
        name = f"frame_{i:03d}.{'png' if i % 2 else 'jpg'}"
        _frame(cam / name, i)
        good.add(name)
    make_image(1, 1).save(cam / "anim.gif")
    make_image(2, 2).save(cam / "scan.tga")
    Image.fromarray((np.arange(96 * 96).reshape(96, 96) % 4096).astype(np.uint16)).save(cam / "sensor12.png")
    _frame(cam / "future.png", 30)
    t = time.time() + 3600
    os.utime(cam / "future.png", (t, t))
    good |= {"anim.gif", "scan.tga", "sensor12.png", "future.png"}
    Image.new("1", (14000, 13000)).save(cam / "bomb.png")  # DecompressionBombError, not an OSError
    Image.new("L", (8000, 1)).save(cam / "wide.png")  # unbounded memory in a short-side resize
    Image.new("L", (1, 8000)).save(cam / "tall.png")
    (cam / "truncated.jpg").write_bytes((cam / "frame_000.jpg").read_bytes()[:500])
    (cam / "garbage.png").write_bytes(b"no image here" * 30)
    (cam / "empty.jpg").write_bytes(b"")
    np.save(cam / "frame.npy", np.zeros((32, 32, 3), np.uint8))  # a colour frame without its channel order
    (cam / "notes.txt").write_text("not an image")
    bad = {"bomb.png", "wide.png", "tall.png", "truncated.jpg", "garbage.png", "empty.jpg", "frame.npy"}
    return cam, good, bad


def test_watch_survives_every_bad_file_and_a_restart(bundle: Path, drop_folder: tuple[Path, set[str], set[str]],
                                                     tmp_path: Path) -> None:
    src, good, bad = drop_folder
    cam = tmp_path / "cam"
    shutil.copytree(src, cam)
    t = time.time() + 3600
    os.utime(cam / "future.png", (t, t))
    log = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "edge_tl", "watch", str(bundle), str(cam), "--log", str(log), "--once",
           "--settle", "0.2"]
    for attempt in range(2):  # a restart classifies nothing twice
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "notes.txt" in proc.stderr  # left out, and named
        rows = jsonl(log)
        assert Counter(r["file"] for r in rows) == dict.fromkeys(good | bad, 1), attempt
    by_file = {r["file"]: r for r in rows}
    assert all(by_file[f]["decision"] in ("ok", "defect", "review") for f in good)
    assert all(by_file[f]["decision"] == "error" and f in by_file[f]["error"] for f in bad)
    assert "0 image(s) logged" in proc.stderr


def test_any_decoder_exception_in_watch_is_one_error_record(rt: Runtime, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_tl.runtime.core as core

    cam = tmp_path / "cam"
    cam.mkdir()
    raising = {"a.png": RuntimeError("plugin bug"), "b.png": MemoryError(), "c.png": KeyError("tag"),
               "d.png": SystemError("C decoder")}
    for k, name in enumerate([*raising, "good.png"]):
        _frame(cam / name, k)
    real = core.load_image

    def load(path: str | os.PathLike[str]) -> Image.Image:
        if Path(path).name in raising:
            raise raising[Path(path).name]
        return real(path)

    monkeypatch.setattr(core, "load_image", load)
    with Watcher(rt, cam, settle=0) as w:
        assert w.poll() == 5
    rows = {r["file"]: r for r in jsonl(cam / "edge-tl-results.jsonl")}
    assert [rows[n]["decision"] for n in raising] == ["error"] * 4
    assert all(type(e).__name__ in rows[n]["error"] for n, e in raising.items())
    assert rows["good.png"]["decision"] != "error"


def test_predict_names_a_bad_file_in_one_line(bundle: Path, drop_folder: tuple[Path, set[str], set[str]]) -> None:
    cam = drop_folder[0]
    proc = subprocess.run([sys.executable, "-m", "edge_tl", "predict", str(bundle), str(cam / "bomb.png"),
                           str(cam / "anim.gif"), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "bomb.png" in err[0] and "Mpx" in err[0]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [("error" in r) for r in rows] == [True, False]


def test_predict_on_a_folder_reads_every_format_and_names_the_rest(bundle: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for k, suffix in enumerate((".png", ".gif", ".tga", ".jp2", ".webp")):
        make_image(k % 3, k).save(folder / f"x{k}{suffix}")
    (folder / "notes.txt").write_text("x")
    assert main(["predict", str(bundle), str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and "notes.txt" in err


def test_bundle_out_below_a_file_is_one_line(run_and_bundle: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bundle", str(run_and_bundle[0]), "--target", TARGET, "--out", str(blocker / "b"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(blocker / "b") in err and "Not a directory" in err
