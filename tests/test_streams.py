"""Camera streams (issue 12, point 9) and per-image times (point 8): a 30-frame video written here is
classified frame by frame through ``predict`` and ``watch``, at a frame-rate limit too; a missing
OpenCV or an unreadable stream is one line and exit 2; the runtime stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main
from edge_tl.runtime import Runtime
from edge_tl.runtime.streams import Stream, is_live, is_stream

from . import test_watch
from .conftest import make_image

cv2 = pytest.importorskip("cv2", reason="the stream extra (opencv-python-headless) is not installed")

N_FRAMES = 30
KINDS = [(i // 10) % 3 for i in range(N_FRAMES)]  # 10 frames of each synthetic class, in a row


# The bundle fixture of the watch tests (a tiny ONNX Runtime fp32 bundle), shared.
bundle = test_watch.bundle


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 30 fps (MJPG in AVI), 10 of each synthetic class."""
    path = tmp_path_factory.mktemp("video") / "line 3.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 96))
    assert writer.isOpened()
    for i, kind in enumerate(KINDS):
        rgb = np.asarray(make_image(kind, 7000 + i, size=96))
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


def _decoded_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_sources_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for s in ("rtsp://10.0.0.7/stream1", "RTSP://cam/1", "http://cam/mjpg", "/dev/video0", "0", "12"):
        assert is_stream(s) and is_live(s), s
    for s in ("line3.mp4", "a/b.AVI", "x.mkv"):
        assert is_stream(s) and not is_live(s), s
    for s in ("part.png", "frames/", "/dev/null", "x.npy", "video0"):
        assert not is_stream(s), s
    (tmp_path / "0").mkdir()
    (tmp_path / "clips.mp4").mkdir()
    assert not is_stream(tmp_path / "0") and not is_stream(tmp_path / "clips.mp4")  # folders stay folders


def test_predict_classifies_a_video_frame_by_frame(bundle: Path, video: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(bundle), str(video), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert [r["stream_time_s"] for r in rows] == pytest.approx([i / 30 for i in range(N_FRAMES)], abs=1e-3)
    assert all(r["path"] == str(video) for r in rows)
    # The same answers as each decoded frame classified on its own (BGR, as OpenCV gives it) ...
    with Runtime(bundle) as rt:
        alone = [rt.predict(f, color="BGR") for f in _decoded_frames(video)]
    assert len(alone) == N_FRAMES
    assert [r["label"] for r in rows] == [p.label for p in alone]
    assert [r["score"] for r in rows] == pytest.approx([p.score for p in alone], abs=1e-4)
    # ... and the model sees the classes in the frames (10 of each, in a row).
    names = ("horizontal", "vertical", "blobs")  # conftest.write_folder's class of each synthetic kind
    right = sum(r["label"] == names[k] for r, k in zip(rows, KINDS, strict=True))
    assert right >= 0.8 * N_FRAMES, [r["label"] for r in rows]
    # Per-image times: a file is classified in the bundle's batches; each frame's share is stated.
    assert all(r["batch_size"] >= 1 and r["ms_per_image"] * r["batch_size"] == pytest.approx(r["batch_ms"], rel=1e-2,
                                                                                             abs=2e-3)
               for r in rows)


def test_predict_limits_the_frame_rate_and_counts(bundle: Path, video: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(bundle), str(video), "--fps", "5", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["frame"] for r in rows] == [0, 6, 12, 18, 24]  # 5 per second of the video's own clock
    assert "5 frame(s)" in err and "(30 read)" in err
    assert main(["predict", str(bundle), str(video), "--max-frames", "7", "--batch", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7 and out[3].endswith(f"{video}#000003@0.100s") and " ms/image  " in out[3]


def test_watch_logs_every_frame_of_a_video(bundle: Path, video: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(bundle), str(video), "--json"]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    log = tmp_path / "line3.jsonl"
    assert main(["watch", str(bundle), str(video), "--log", str(log)]) == 0
    err = capsys.readouterr().err
    assert f"watch: {N_FRAMES} frame(s) logged to {log}" in err
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert [r["label"] for r in rows] == [p["label"] for p in predicted]
    assert all(r["file"] == f"{video}#{r['frame']:06d}@{r['stream_time_s']:.3f}s" for r in rows)
    assert all(r["decision"] in ("ok", "defect", "review") and r["error"] is None and r["ms_per_image"] > 0
               and r["time"] for r in rows)
    # CSV too, at a frame-rate limit.
    csv_log = tmp_path / "line3.csv"
    assert main(["watch", str(bundle), str(video), "--log", str(csv_log), "--fps", "10"]) == 0
    import csv

    with open(csv_log, newline="") as f:
        records = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in records] == list(range(0, N_FRAMES, 3))
    assert [r["label"] for r in records] == [predicted[i]["label"] for i in range(0, N_FRAMES, 3)]


def test_an_unreadable_stream_is_one_line_and_exit_2(bundle: Path, tmp_path: Path) -> None:
    fake = tmp_path / "broken.mp4"
    fake.write_bytes(b"this is not a video")
    cases = [(["predict", str(bundle), str(fake)], f"error: cannot open video file (OpenCV has no decoder for it, "
              f"or it is not a video) {fake}"),
             (["watch", str(bundle), str(tmp_path / "missing.avi"), "--log", str(tmp_path / "l.jsonl")],
              f"error: no such video file: {tmp_path / 'missing.avi'}"),
             (["predict", str(bundle), "rtsp://user:secret@127.0.0.1:9/cam"],
              "error: cannot open stream URL rtsp://user:***@127.0.0.1:9/cam"),
             (["predict", str(bundle), "/dev/video63"], "error: cannot open camera device /dev/video63"),
             (["predict", str(bundle), str(fake), "--fps", "0"], "error: --fps must be more than 0, got 0.0")]
    for args, line in cases:
        proc = subprocess.run([sys.executable, "-m", "edge_tl", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr == line + "\n", args  # one line: no traceback, no FFmpeg chatter, no password


def test_without_opencv_the_error_names_the_extra(bundle: Path, video: Path, tmp_path: Path) -> None:
    code = """
import sys
sys.modules["cv2"] = None
from edge_tl.cli import main
sys.exit(main(sys.argv[1:]))
"""
    for args in (["predict", str(bundle), str(video)], ["watch", str(bundle), str(video), "--log",
                                                         str(tmp_path / "l.jsonl")]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr == ("error: opencv (cv2) is not installed; install it with: "
                               "pip install 'edge-tl[stream]'\n")


def test_streams_run_without_torch(bundle: Path, video: Path) -> None:
    code = f"""
import json, sys
for name in ("torch", "torchvision", "openvino", "onnx", "edge_tl.training", "edge_tl.models"):
    sys.modules[name] = None
from edge_tl.cli import main
rc = main(["predict", {str(bundle)!r}, {str(video)!r}, "--json", "--max-frames", "3"])
print(json.dumps({{"rc": rc, "torch": sys.modules["torch"] is not None}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1]) == {"rc": 0, "torch": False}


def test_stream_api_reads_frames_and_stops(video: Path) -> None:
    with Stream(video, max_frames=4) as s:
        frames = list(s.frames())
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (96, 96, 3)
    import threading

    stop = threading.Event()
    stop.set()
    with Stream(video) as s:
        assert list(s.frames(stop)) == []


def test_predict_states_each_images_share_of_its_batch(bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        make_image(i % 3, 300 + i).save(folder / f"p{i}.png")
    assert main(["predict", str(bundle), str(folder), "--json", "--batch", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["batch_size"] for r in rows] == [4, 4, 4, 4, 2, 2]
    assert set(rows[0]) - {"reason"} == {"path", "label", "score", "decision", "ms_per_image", "batch_size",
                                         "batch_ms", "ood_score"}
    first, second = rows[:4], rows[4:]
    assert len({r["batch_ms"] for r in first}) == 1 and len({r["batch_ms"] for r in second}) == 1
    for r in rows:
        assert r["ms_per_image"] == pytest.approx(r["batch_ms"] / r["batch_size"], abs=1e-3)
    assert main(["predict", str(bundle), str(folder), "--batch", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(" ms/image (batch of " in line for line in lines)


def test_a_csv_log_begun_by_an_older_version_keeps_its_columns(tmp_path: Path) -> None:
    """Rows appended after an upgrade line up with the header already in the file."""
    import csv

    from edge_tl.runtime.resultlog import FIELDS, ResultLog

    old = ["time", "path", "file", "size", "mtime_ns", "label", "score", "decision", "ms", "error", "moved_to"]
    path = tmp_path / "results.csv"
    path.write_text(",".join(old) + "\nt0,/d/a.png,a.png,10,1,ok,0.9,ok,3.5,,\n")
    log = ResultLog(path)
    log.append([{"time": "t1", "path": "/d/b.png", "file": "b.png", "size": 11, "mtime_ns": 2, "label": "ok",
                 "score": 0.8, "decision": "ok", "ms_per_image": 4.0, "batch_size": 2, "error": None}])
    log.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["a.png", "b.png"] and rows[1]["decision"] == "ok" and rows[1]["size"] == "11"
    fresh = ResultLog(tmp_path / "new.csv")
    fresh.append([{"file": "c.png"}])
    fresh.close()
    assert (tmp_path / "new.csv").read_text().splitlines()[0] == ",".join(FIELDS)


def test_predict_takes_images_folders_and_videos_in_one_call_in_order(bundle: Path, video: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    empty, folder = tmp_path / "empty", tmp_path / "imgs"
    empty.mkdir()
    folder.mkdir()
    make_image(0, 1).save(folder / "a.png")
    single = tmp_path / "b.png"
    make_image(1, 2).save(single)
    args = ["predict", str(bundle), str(empty), str(folder), str(video), str(single), "--max-frames", "2", "--json"]
    assert main(args) == 0  # an empty folder among others is not an error
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["path"], r.get("frame")) for r in rows] == [(str(folder / "a.png"), None), (str(video), 0),
                                                           (str(video), 1), (str(single), None)]
    assert main(["predict", str(bundle), str(empty)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: no images found in {empty}")
    assert main(["predict", str(bundle), str(folder), "--fps", "2"]) == 2
    assert "apply to video files and streams" in capsys.readouterr().err
