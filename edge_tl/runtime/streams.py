"""Camera streams for ``predict`` and ``watch``: a video file, an RTSP/HTTP URL or a V4L2 device.

Frames come from OpenCV's ``cv2.VideoCapture`` (``pip install 'edge-tl[stream]'``, the headless
OpenCV wheel; no torch), in OpenCV's BGR order, and are classified with the same preprocessing as
image files. A source is a stream when it is

* a URL: ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``;
* a V4L2 device: ``/dev/video0`` or a bare index such as ``0``;
* a file with a video suffix (``.mp4 .avi .mkv .mov .webm .m4v .mjpeg .mjpg .ts .mpg .mpeg .wmv .flv
  .h264 .h265 .hevc``).

``fps`` limits the frames classified per second. For a video file it is counted on the file's own
clock (a 30 fps file at ``fps=5`` gives every 6th frame, as fast as the host can classify them);
for a live source on the wall clock (frames in between are grabbed and dropped undecoded, so the
ones classified are fresh, not a backlog).

Each frame is named ``SOURCE#INDEX@SECONDSs`` (``line3.mp4#000012@0.400s``): the frame's index in
the stream (every frame counts, classified or not) and its time, the file's timestamp or, for a
live source, seconds since the stream was opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeTLError, MissingExtraError

log = logging.getLogger("edge_tl")

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg", ".ts", ".mpg", ".mpeg",
                  ".wmv", ".flv", ".h264", ".h265", ".hevc")
_DEVICE = re.compile(r"^(/dev/video\d+|\d+)$")
# A live source that fails this many reads in a row is reopened; after this many reopenings, lost.
_FAILED_READS = 25
_REOPENS = 3
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 5_000


def is_stream(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a camera stream or a video file (see the module docstring)."""
    text = str(source)
    if text.lower().startswith(URL_SCHEMES):
        return True
    if Path(text).is_dir():  # a drop folder that happens to be called "0" or "clips.mp4"
        return False
    return bool(_DEVICE.match(text)) or Path(text).suffix.lower() in VIDEO_SUFFIXES


def is_live(source: str | os.PathLike[str]) -> bool:
    """A URL or a device (frames arrive in real time), as opposed to a video file."""
    text = str(source)
    return text.lower().startswith(URL_SCHEMES) or bool(_DEVICE.match(text))


def _cv2() -> Any:
    # FFmpeg's and OpenCV's own warnings ("moov atom not found", "can't open camera by index") would
    # follow our one-line error; a user who wants them sets these variables.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError as exc:
        raise MissingExtraError("opencv (cv2)", "stream") from exc
    return cv2


def _redact(source: str) -> str:
    """The source as logs show it: a URL's password is replaced by ***."""
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", source)


@dataclass(frozen=True)
class Frame:
    """One frame of a stream: ``image`` is HxWx3 uint8 in BGR order (OpenCV's)."""

    index: int  # in the stream, from 0; every frame read counts, classified or not
    time_s: float  # the file's timestamp, or seconds since a live stream was opened
    image: np.ndarray
    source: str

    @property
    def name(self) -> str:
        """``SOURCE#INDEX@SECONDSs``: what logs and ``predict`` call this frame."""
        return f"{self.source}#{self.index:06d}@{self.time_s:.3f}s"


class Stream:
    """Frames of a video file, URL or V4L2 device, at most ``fps`` per second, at most ``max_frames``.

    Raises ConfigError for a bad option, MissingExtraError without OpenCV, and EdgeTLError (one
    line, naming the source) for a source that cannot be opened or yields no frame.
    """

    def __init__(self, source: str | os.PathLike[str], *, fps: float | None = None,
                 max_frames: int | None = None) -> None:
        if fps is not None and not fps > 0:
            raise ConfigError(f"--fps must be more than 0, got {fps}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {max_frames}")
        self.source = str(source)
        self.shown = _redact(self.source)
        self.live = is_live(self.source)
        self.fps = fps
        self.max_frames = max_frames
        if not self.live and not Path(self.source).is_file():
            raise EdgeTLError(f"no such video file: {self.source}")
        self._cv2 = _cv2()
        self._cap = self._open()
        native = float(self._cap.get(self._cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = native if 0 < native < 1000 else None
        self.opened_at = time.monotonic()
        self.read = 0  # frames read from the source (classified or dropped)
        self.taken = 0  # frames handed out

    def _open(self) -> Any:
        cv2 = self._cv2
        target: int | str = int(self.source) if self.source.isdigit() else self.source
        if self.live and not _DEVICE.match(self.source):  # a URL: bounded waits, not FFmpeg's 30 s+
            cap = cv2.VideoCapture(target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
        else:
            cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            what = ("camera device" if _DEVICE.match(self.source) else "stream URL" if self.live
                    else "video file (OpenCV has no decoder for it, or it is not a video)")
            raise EdgeTLError(f"cannot open {what} {self.shown}")
        return cap

    def _time(self, index: int) -> float:
        if self.live:
            return time.monotonic() - self.opened_at
        if self.native_fps:
            return index / self.native_fps
        return float(self._cap.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0

    def _grab(self) -> bool:
        """Advance one frame (for a live source: reopen after repeated failures); False at the end."""
        failures, reopens = 0, 0
        while True:
            if self._cap.grab():
                return True
            if not self.live:
                return False
            failures += 1
            if failures < _FAILED_READS:
                time.sleep(0.02)
                continue
            if reopens >= _REOPENS:
                raise EdgeTLError(f"lost the stream {self.shown}: no frame after {reopens} reconnections")
            reopens += 1
            log.warning("stream %s: no frame; reconnecting (%d of %d)", self.shown, reopens, _REOPENS)
            self._cap.release()
            time.sleep(min(5.0, 0.5 * 2 ** reopens))
            with contextlib.suppress(EdgeTLError):
                self._cap = self._open()
            failures = 0

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Yield the frames to classify until the stream ends, ``max_frames`` or ``stop``."""
        period = 1.0 / self.fps if self.fps else 0.0
        due = 0.0 if not self.live else time.monotonic()
        while self.max_frames is None or self.taken < self.max_frames:
            if stop is not None and stop.is_set():
                return
            if not self._grab():
                break
            index = self.read
            self.read += 1
            t = self._time(index)
            if period:
                clock = time.monotonic() if self.live else t
                if clock + 1e-6 < due:
                    continue  # dropped undecoded
                due = max(due + period, clock) if self.live else due + period
            ok, image = self._cap.retrieve()
            if not ok or image is None:
                if self.live:
                    continue
                raise EdgeTLError(f"{self.shown}: frame {index} cannot be decoded")
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            elif image.shape[2] == 4:
                image = image[:, :, :3]
            self.taken += 1
            yield Frame(index, t, np.ascontiguousarray(image, dtype=np.uint8), self.shown)
        if self.taken == 0 and self.read == 0:
            raise EdgeTLError(f"no frame could be read from {self.shown}")

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def classify_frames(runtime: Any, stream: Stream, *, batch: int = 1,
                    stop: threading.Event | None = None) -> Iterator[tuple[Frame, Any]]:
    """(frame, Prediction) for each frame, ``batch`` frames per inference call (1 for live sources:
    a frame is answered as soon as it arrives)."""
    pending: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, Any]]:
        start = time.perf_counter()
        prepared = [runtime.prepare_sized(f.image, color="BGR") for f in pending]
        preds = runtime.predict_inputs(np.stack([x for x, _ in prepared]), [f.name for f in pending], started=start,
                                       sizes=[size for _, size in prepared])
        yield from zip(list(pending), preds, strict=True)
        pending.clear()

    for frame in stream.frames(stop):
        pending.append(frame)
        if len(pending) >= max(1, batch):
            yield from flush()
    if pending:
        yield from flush()


def frame_record(frame: Frame, pred: Any) -> dict[str, Any]:
    """One log line for a classified frame (the fields of ``edge_tl.runtime.resultlog.FIELDS``; a detection
    bundle's answer adds ``boxes``)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return {"time": stamp, **pred.to_dict(), "path": frame.source, "file": frame.name, "frame": frame.index,
            "stream_time_s": round(frame.time_s, 3), "error": None}


def watch_stream(runtime: Any, source: str | Stream, log_path: str | os.PathLike[str], *,
                 fps: float | None = None, max_frames: int | None = None, stop: threading.Event | None = None,
                 batch: int | None = None, drift: Any = None) -> Counter[str]:
    """Classify a stream's frames and append one line per frame to ``log_path`` (JSONL or CSV, the
    columns of a folder watch plus ``frame`` and ``stream_time_s``); returns the decisions' counts.

    Runs until the stream ends (a video file), ``max_frames`` frames, or ``stop`` is set. Each line
    is written (and fsynced) before the next frame is read. One watcher per log (a lock), as for
    folders; the counts are of the lines in the log on disk at the end (a log deleted meanwhile is begun
    anew at its path, with a warning). ``source`` may be a ``Stream`` opened already (it is closed at the
    end); ``fps`` and ``max_frames`` then come from it. ``drift``: the ``runtime.watch.DriftMonitor`` that
    warns when the share of out-of-distribution frames crosses its limit (default one; only for a bundle
    using ood).
    """
    from .drift import DriftMonitor
    from .resultlog import ResultLog, log_fields

    monitor = (drift or DriftMonitor()) if getattr(runtime, "ood", False) else None
    result_log = ResultLog(Path(log_path), fields=log_fields(runtime))
    result_log.lock()
    try:
        opened = source if isinstance(source, Stream) else Stream(source, fps=fps, max_frames=max_frames)
        with opened as stream:
            size = batch or (1 if stream.live else runtime.batch_size)
            for frame, pred in classify_frames(runtime, stream, batch=size, stop=stop):
                # A log deleted meanwhile is begun anew at its path (with a warning), never written unseen.
                result_log.append([frame_record(frame, pred)])
                message = monitor.update([pred.reason == "out_of_distribution"]) if monitor else None
                if message:
                    log.warning("watch %s: %s", stream.name, message)
        result_log.refresh()  # a log deleted after its last line: those lines are not counted
        return Counter(result_log.counts)
    finally:
        result_log.close()
