"""``edge-tl watch`` on a drop folder that is deleted and re-created (issue 24, item 2): every result lands
in a log a person can open, the summary counts only those, and the lock keeps one watcher per folder."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_tl.errors import EdgeTLError
from edge_tl.runtime import Runtime
from edge_tl.runtime.resultlog import DEFAULT_LOG, ResultLog
from edge_tl.runtime.watch import Watcher

from .test_watch import drop, jsonl


def names(rows: list[dict]) -> list[str]:
    return sorted(r["file"] for r in rows)


def recreate(cam: Path, frames: range) -> None:
    """What a cleaning script does: remove the folder with its log, make it again, new images arrive."""
    shutil.rmtree(cam)
    drop(cam, frames)


def test_results_after_the_folder_is_recreated_land_in_a_new_log_and_the_lock_holds(
        rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cam = tmp_path / "cam"
    drop(cam, range(3))
    with Watcher(rt, cam, settle=0) as w:
        assert w.poll() == 3
        recreate(cam, range(3, 6))
        with caplog.at_level(logging.WARNING, logger="edge_tl"):
            assert w.poll() == 3
        assert names(jsonl(cam / DEFAULT_LOG)) == [f"frame_{i:04d}.png" for i in range(3, 6)]
        assert "re-created" in caplog.text and str(cam / DEFAULT_LOG) in caplog.text
        # Counted: only what is in the log on disk; the 3 earlier results went with the deleted folder.
        assert sum(w.counts.values()) == 3 and w.log.dropped == 3
        with pytest.raises(EdgeTLError, match="another `edge-tl watch`"):
            Watcher(rt, cam, settle=0)  # the lock was taken again in the new folder
    with Watcher(rt, cam, settle=0) as again:  # restart on the new log: nothing classified twice
        assert again.poll() == 0


def test_a_second_watch_that_took_the_new_folder_first_stops_the_first(rt: Runtime, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    drop(cam, range(2))
    with Watcher(rt, cam, settle=0) as first:
        assert first.poll() == 2
        recreate(cam, range(2, 5))
        with Watcher(rt, cam, settle=0) as second:  # started in the gap, before the first polled again
            with pytest.raises(EdgeTLError, match=r"re-created.*this watcher stops"):
                first.poll()
            assert second.poll() == 3
    assert names(jsonl(cam / DEFAULT_LOG)) == [f"frame_{i:04d}.png" for i in range(2, 5)]  # each once


def test_lines_written_while_the_folder_is_deleted_are_written_again(tmp_path: Path) -> None:
    """The folder is removed between the check and the write: the lines went to an unlinked file, so they
    are written again into a new log at the path and counted once."""
    cam = tmp_path / "cam"
    cam.mkdir()

    class CleanedDuringWrite(ResultLog):
        cleaned = False

        def _write(self, data: bytes) -> None:
            if not self.cleaned and b"b.png" in data:
                self.cleaned = True
                shutil.rmtree(cam)
                cam.mkdir()
            super()._write(data)

    log = CleanedDuringWrite(cam / "r.jsonl")
    log.lock()
    log.append([{"file": "a.png", "decision": "ok"}])
    log.append([{"file": "b.png", "decision": "defect"}])
    assert [r["file"] for r in jsonl(cam / "r.jsonl")] == ["b.png"]
    assert dict(log.counts) == {"defect": 1} and log.dropped == 1
    assert log.holds()  # the lock is the file at the path again
    log.close()


def test_cli_summary_counts_only_what_is_in_the_log(fp32_bundle: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    drop(cam, range(2))
    log = cam / DEFAULT_LOG
    proc = subprocess.Popen([sys.executable, "-m", "edge_tl", "watch", str(fp32_bundle), str(cam), "--poll", "0.05",
                             "--settle", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def lines() -> int:
        try:
            return len(log.read_text().splitlines())
        except FileNotFoundError:
            return 0

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and lines() < 2:
            time.sleep(0.05)
        assert lines() == 2
        recreate(cam, range(2, 5))
        while time.monotonic() < deadline and lines() < 3:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert names(jsonl(log)) == [f"frame_{i:04d}.png" for i in range(2, 5)]
    assert f"watch: 3 image(s) logged to {log}" in err
    assert "2 result(s) logged earlier went to a log since deleted" in err
    assert "re-created" in err
