"""``edge-tl watch``: each image exactly once across restarts and kills, repaired logs, bounded memory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_tl.cli import main
from edge_tl.errors import EdgeTLError
from edge_tl.runtime import Runtime
from edge_tl.runtime.watch import Watcher

from .conftest import make_image


@pytest.fixture(scope="module")
def bundle(fp32_bundle: Path) -> Path:
    return fp32_bundle




def drop(folder: Path, names: range | list[int], age: float = 5.0) -> list[Path]:
    """Camera frames written into ``folder``, their mtime ``age`` seconds in the past (settled)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in names:
        p = folder / f"frame_{i:04d}.png"
        make_image(i % 3, 9000 + i, size=40).save(p)
        t = time.time() - age
        os.utime(p, (t, t))
        out.append(p)
    return out


def jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def watch_once(bundle: Path, folder: Path, *extra: str) -> int:
    return main(["watch", str(bundle), str(folder), "--once", "--settle", "0", *extra])


def test_once_twice_then_new_images_each_logged_exactly_once(bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cam = tmp_path / "cam"
    drop(cam, range(5))
    assert watch_once(bundle, cam) == 0
    assert "5 image(s) logged" in capsys.readouterr().err
    assert watch_once(bundle, cam) == 0  # a restart with nothing new logs nothing
    assert "0 image(s) logged" in capsys.readouterr().err
    drop(cam, range(5, 8))
    assert watch_once(bundle, cam) == 0
    rows = jsonl(cam / "edge-tl-results.jsonl")
    assert Counter(r["file"] for r in rows) == {f"frame_{i:04d}.png": 1 for i in range(8)}
    assert all({"path", "label", "score", "decision", "ms_per_image", "batch_size"} <= set(r) for r in rows)
    assert all(r["decision"] in ("ok", "defect", "review") and r["error"] is None for r in rows)


def test_a_partial_log_line_from_a_killed_write_is_repaired(bundle: Path, tmp_path: Path) -> None:
    cam, log = tmp_path / "cam", tmp_path / "out" / "results.jsonl"
    drop(cam, range(3))
    assert watch_once(bundle, cam, "--log", str(log)) == 0
    # A kill in the middle of the next append: half a record for frame 3, no newline.
    drop(cam, range(3, 5))
    record = json.dumps({"time": "x", "path": str(cam / "frame_0003.png"), "file": "frame_0003.png"})
    with open(log, "a") as f:
        f.write(record[: len(record) // 2])
    assert watch_once(bundle, cam, "--log", str(log)) == 0
    rows = jsonl(log)  # every line is whole JSON again
    assert Counter(r["file"] for r in rows) == {f"frame_{i:04d}.png": 1 for i in range(5)}


def test_killed_watcher_restarts_without_losing_or_repeating_an_image(bundle: Path, tmp_path: Path) -> None:
    """SIGKILL a running `edge-tl watch` mid-stream, restart it: every image is logged exactly once."""
    cam, log = tmp_path / "cam", tmp_path / "results.jsonl"
    drop(cam, range(40))
    cmd = [sys.executable, "-m", "edge_tl", "watch", str(bundle), str(cam), "--log", str(log),
           "--poll", "0.05", "--settle", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (log.exists() and log.stat().st_size > 0):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # somewhere in classify / append / next batch
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged_before = len(log.read_text().splitlines()) if log.exists() else 0
    assert logged_before > 0  # it was killed while working, not before starting
    assert watch_once(bundle, cam, "--log", str(log)) == 0
    rows = jsonl(log)
    assert Counter(r["file"] for r in rows) == {f"frame_{i:04d}.png": 1 for i in range(40)}


def test_graceful_stop_on_sigterm(bundle: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    drop(cam, range(3))
    proc = subprocess.Popen([sys.executable, "-m", "edge_tl", "watch", str(bundle), str(cam), "--poll", "0.1",
                             "--settle", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = cam / "edge-tl-results.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(log.read_text().splitlines() if log.exists() else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "3 image(s) logged" in err


def test_move_mode_finishes_a_move_interrupted_after_logging(bundle: Path, tmp_path: Path) -> None:
    cam, done = tmp_path / "cam", tmp_path / "done"
    drop(cam, range(4))
    log = tmp_path / "r.jsonl"
    assert watch_once(bundle, cam, "--log", str(log), "--move-to", str(done)) == 0
    assert sorted(p.name for p in done.iterdir()) == [f"frame_{i:04d}.png" for i in range(4)]
    assert not list(cam.glob("*.png"))
    rows = jsonl(log)
    assert all(Path(r["moved_to"]).parent == done for r in rows)
    # The kill window between "logged" and "moved": the image is back in the drop folder with its mtime.
    os.replace(done / "frame_0002.png", cam / "frame_0002.png")
    drop(cam, [4])
    assert watch_once(bundle, cam, "--log", str(log), "--move-to", str(done)) == 0
    assert Counter(r["file"] for r in jsonl(log)) == {f"frame_{i:04d}.png": 1 for i in range(5)}
    assert (done / "frame_0002.png").exists() and not list(cam.glob("*.png"))
    # A camera that reuses a name for a new picture: a new image, classified, moved beside the old one.
    drop(cam, [0], age=2.0)
    assert watch_once(bundle, cam, "--log", str(log), "--move-to", str(done)) == 0
    assert len(jsonl(log)) == 6 and (done / "frame_0000.1.png").exists()


def test_memory_follows_the_folder_not_the_history(rt: Runtime, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    frames = drop(cam, range(6))
    with Watcher(rt, cam, settle=0) as w:
        assert w.poll() == 6 and w.tracked == 6
        for p in frames[:4]:
            p.unlink()
        assert w.poll() == 0 and w.tracked == 2  # forgotten once they leave the folder
    with Watcher(rt, cam, settle=0) as w:  # a restart remembers only what is still there
        assert w.tracked == 2 and w.poll() == 0


def test_fresh_files_wait_until_settled_and_bad_files_are_logged_once(rt: Runtime, tmp_path: Path) -> None:
    """Settling is observed (size and mtime unchanged for ``settle`` s of this host's clock), so a file
    first seen now waits, however old its mtime; a settled file that does not decode is one error."""
    cam = tmp_path / "cam"
    cam.mkdir()
    fresh = cam / "frame_0001.png"
    make_image(0, 1).save(fresh)
    (cam / "frame_0002.png").write_bytes(b"\x89PNG truncated")
    old = time.time() - 10
    os.utime(cam / "frame_0002.png", (old, old))
    with Watcher(rt, cam, settle=0.3, error_after=0.3) as w:
        assert w.poll() == 0  # first sight: nothing has been seen holding still yet
        time.sleep(0.15)
        make_image(0, 2).save(fresh)  # the camera is still writing it: its clock starts again
        time.sleep(0.2)
        assert w.poll() == 1  # only the (broken) file that held still
        time.sleep(0.35)
        assert w.poll() == 1
        assert w.poll() == 0
    rows = jsonl(cam / "edge-tl-results.jsonl")
    assert [r["decision"] for r in rows] == ["error", rows[1]["decision"]]
    assert rows[0]["file"] == "frame_0002.png" and rows[1]["decision"] != "error"
    assert "cannot read image" in rows[0]["error"]


def test_csv_log_survives_restarts(bundle: Path, tmp_path: Path) -> None:
    cam, log = tmp_path / "cam", tmp_path / "results.csv"
    drop(cam, range(3))
    assert watch_once(bundle, cam, "--log", str(log)) == 0
    drop(cam, range(3, 5))
    assert watch_once(bundle, cam, "--log", str(log)) == 0
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert log.read_text().count("time,path,file") == 1
    assert Counter(r["file"] for r in rows) == {f"frame_{i:04d}.png": 1 for i in range(5)}


def test_a_second_watcher_on_the_same_log_is_refused(rt: Runtime, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    cam.mkdir()
    with Watcher(rt, cam), pytest.raises(EdgeTLError, match="another `edge-tl watch`"):
        Watcher(rt, cam)
    with Watcher(rt, cam):  # released when the first one closed
        pass
