"""The result log of ``watch`` and streams: append-only JSON lines or CSV, every append durable (``fsync``)
before it returns, followed to a re-created folder, and one writer per log (``LOG.lock``)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EdgeTLError

log = logging.getLogger("edge_tl")


# ``ms_per_image``: the image's share of its batch's time (batch time / ``batch_size``). ``frame`` and
# ``stream_time_s`` are set for camera streams (``runtime.streams``), ``size``/``mtime_ns`` for files.
FIELDS = ["time", "path", "file", "size", "mtime_ns", "frame", "stream_time_s", "label", "score", "decision",
          "reason", "ood_score", "ms_per_image", "batch_size", "error", "moved_to"]
# A detection bundle's log: its boxes too (in CSV, the list as JSON in one cell).
DETECT_FIELDS = [*FIELDS, "boxes"]
DEFAULT_LOG = "edge-tl-results.jsonl"

Key = tuple[str, int, int]  # (file name, size, mtime_ns)

# A log deleted while each of this many appends was written is given up on (a cleaner in a loop).
_APPEND_TRIES = 3


def log_fields(runtime: Any) -> list[str]:
    """The columns of a result log of ``runtime``'s answers: ``DETECT_FIELDS`` for a detection bundle."""
    return DETECT_FIELDS if getattr(runtime, "task", None) == "detect" else FIELDS


class ResultLog:
    """An append-only result log (JSONL or CSV) whose every append is durable before it returns.

    ``fields``: the columns of a new CSV log (default ``FIELDS``)."""

    def __init__(self, path: Path, fields: list[str] | None = None) -> None:
        self.path = path
        self.fields = list(fields or FIELDS)
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".csv", ".log", ".ndjson"):
            raise ConfigError(f"--log must end in .jsonl or .csv, got {path.name}")
        self.csv = suffix == ".csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._columns = self.fields
        # Lines this process appended to the file now at ``path``, by decision; ``dropped``: lines it
        # appended to earlier files at the path that were since deleted or replaced.
        self.counts: Counter[str] = Counter()
        self.dropped = 0
        self.generation = 0  # how many times the lock or the log was taken anew at the path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def lock(self) -> None:
        """Hold ``LOG.lock`` (one watcher per log); EdgeTLError when another watcher holds it."""
        if self._lock_fd is None:
            self._lock_fd = take_lock(self.path)

    def holds(self) -> bool:
        """Whether the lock held (if any) is still the lock file at its path."""
        return self._lock_fd is None or _same_file(self._lock_fd, self.lock_path)

    def refresh(self) -> bool:
        """True (and a warning) when the open log is no longer the file at ``path``: it is closed, and its
        lines move from ``counts`` to ``dropped``; the next append begins a new log at the path."""
        if self._fd is None or _same_file(self._fd, self.path):
            return False
        lost = sum(self.counts.values())
        os.close(self._fd)
        self._fd = None
        self.dropped += lost
        self.counts.clear()
        log.warning("result log %s was deleted or replaced (its folder cleaned or re-created?): results go on "
                    "in a new log at that path%s", self.path,
                    f"; {lost} result(s) logged before by this watcher are not in it" if lost else "")
        return True

    def ensure(self, create: bool = True) -> bool:
        """Follow a log or lock file deleted or replaced under this writer; True when one was taken anew.

        A log whose file is no longer the one at ``path`` is closed (``refresh``). A lock no longer at its
        path is taken again there: EdgeTLError when another watcher holds the new one. ``create``: make
        the log's folder if it is gone (a batch classified before its folder was deleted still gets a log
        a person can open); without it, a missing folder is waited for.
        """
        changed = self.refresh()
        if not self.holds():
            if not create and not self.path.parent.is_dir():
                return changed  # gone: listing it fails too; taken again once it is back
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = take_lock(self.path)  # a second watcher that started in the new folder first wins
            assert self._lock_fd is not None
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = fd
            changed = True
            log.warning("lock %s was deleted (its folder cleaned or re-created?); taken again", self.lock_path)
        if changed:
            self.generation += 1
        return changed

    def repair(self) -> int:
        """Cut a partial last line (a write interrupted by a kill); returns the bytes dropped."""
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return 0
            # Walk back to the last newline in blocks (the partial line is short).
            pos, keep = size, 0
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                block = f.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    keep = pos + nl + 1
                    break
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep

    def records(self) -> Iterator[dict[str, Any]]:
        """Stream the complete records already in the log."""
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            if self.csv:
                yield from csv.DictReader(f)
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d is not valid JSON; ignored", self.path, n)

    def _open(self) -> int:
        if self._fd is None:
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if self.csv and os.fstat(self._fd).st_size == 0:
                self._columns = self.fields  # a new file (perhaps replacing an older version's): today's columns
                self._write(self._csv_lines([{f: f for f in self.fields}]))
            elif self.csv:  # a log begun by another version keeps its own columns, in its order
                with open(self.path, newline="", encoding="utf-8") as f:
                    header = next(csv.reader(f), None)
                self._columns = header or self.fields
            if new:  # make the new directory entry durable too
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        return self._fd

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:  # a failed write(2) names no file: name the log (disk full, size limit)
            if exc.filename is not None or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(self.path)) from exc

    def _csv_lines(self, records: list[dict[str, Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, lineterminator="\n", extrasaction="ignore")
        for r in records:
            writer.writerow({k: _cell(r.get(k)) for k in self._columns})
        return buf.getvalue().encode()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append whole lines in one write, then fsync; returns once they are in the file at ``path``.

        Lines written to a file that was deleted or replaced meanwhile (its folder cleaned) are written
        again into a new log at the path: no result is counted that a person cannot open.
        """
        if not records:
            return
        for _ in range(_APPEND_TRIES):
            try:
                self.ensure()
            except EdgeTLError as exc:
                raise EdgeTLError(f"{exc}; {len(records)} result(s) of this watcher were not logged") from None
            self._open()
            if self.csv:
                data = self._csv_lines(records)
            else:
                data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
            self._write(data)
            if self._fd is not None and _same_file(self._fd, self.path):
                self.counts.update(str(r.get("decision")) for r in records)
                return
        raise EdgeTLError(f"{self.path} was deleted or replaced during each of {_APPEND_TRIES} writes; "
                          f"{len(records)} result(s) were not logged")

    def close(self) -> None:
        """Close the log and release its lock."""
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None, JSON for a list or dict (a detection's boxes), else the value."""
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not deleted, moved away or replaced)."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return False
    try:
        now = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def take_lock(log_path: Path) -> int:
    """Hold ``LOG.lock`` (advisory, released when the process ends): one watcher per log."""
    import fcntl

    lock_path = log_path.with_name(log_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EdgeTLError(f"another `edge-tl watch` is writing {log_path} (lock {lock_path} is held)") from None
    return fd
