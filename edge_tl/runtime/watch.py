"""Watch a camera's drop folder: classify each new image exactly once, append results to a log.

Guarantees and how they are kept:

* **The log is the only state.** A result line is appended (one ``write`` of whole lines, then
  ``fsync``) before anything else happens to the image. An image is identified by (file name, size,
  mtime in ns), so a camera that reuses a name for a new picture gets the new picture classified.
* **Restart-safe, exactly once.** Killed after classifying but before logging: the image is not in
  the log and is classified again on restart (the first answer was never recorded). Killed in the
  middle of a log write: the partial last line is cut off on restart and the image is classified
  again. Killed after logging: the image is in the log and is not classified again. With
  ``move_to``, an image logged but not yet moved is moved on restart, without a second line.
* **Bounded memory.** Only files that are still in the folder are remembered (the set is pruned on
  every poll and rebuilt on restart by streaming the log, keeping just the names present); nothing
  grows with the number of images ever processed. With ``move_to`` the folder itself stays small,
  which is the mode to use for a line that runs for months.
* **No half-written images, whatever the clocks say.** A file is taken once its size and mtime have
  stayed the same for ``settle`` seconds of this host's monotonic clock: observed, not computed from
  the mtime, so a camera whose clock runs ahead (SMB and FTP keep the source's timestamp) is not held
  back, and one whose clock runs behind is not taken mid-write. A file that changes while it is read
  is read again once it settles.
* **A pause is not an error.** A settled file that does not decode may be an upload that stalled half
  way: it is retried whenever it changes, and logged as an error (``decision: "error"``, once) only
  when it has stayed unchanged and unreadable for ``error_after`` seconds (default 10 x ``settle``).
  Any exception a decoder raises is that file's error record, never the watcher's end.
* **Every file is accounted for.** Images are the files with the suffix of a format Pillow reads (and
  raw ``.npy`` frames); any other file is named once in a warning and counted as ignored.
* One watcher per log: a second one on the same log is refused (an advisory lock on ``LOG.lock``).
* **A folder deleted and re-created is followed** (a camera's drop folder is often cleaned that way, and
  the default log and its lock live inside it). Before each listing and around each append the watcher
  checks that the log and lock it holds are still the files at their paths; when they are not, it takes
  the lock anew at the path (or stops, with an error, if a second watcher took it first: never two on one
  folder's images), begins a new log there with a warning, and re-writes a batch whose lines went to a
  file deleted while they were written. Counts and the exit summary name only lines in the log on disk.

Log formats: JSON lines (``.jsonl``, default) or CSV (``.csv``) with the columns of ``resultlog.FIELDS``. A
detection bundle's lines add ``boxes`` (a list of {class, score, x1, y1, x2, y2} in the image's pixels; in
CSV, a last column holding that list as JSON).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeTLError
from ..preprocess import IMAGE_SUFFIXES
from .core import InputError, Runtime
from .drift import DriftMonitor
from .resultlog import DEFAULT_LOG, Key, ResultLog, log_fields

log = logging.getLogger("edge_tl")

WATCHED_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, None when it is gone: tells a re-created folder from the old one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _key(rec: dict[str, Any]) -> Key | None:
    try:
        return str(rec["file"]), int(rec["size"]), int(rec["mtime_ns"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class _Observed:
    """A file not yet logged: its current (size, mtime) and since when (monotonic) it has had them."""

    key: Key
    since: float
    failed: str | None = None  # why this key did not decode, while it gets error_after to change


class Watcher:
    """Classify the images that appear in ``folder`` with ``runtime``; see the module docstring."""

    def __init__(self, runtime: Runtime, folder: str | os.PathLike[str],
                 log_path: str | os.PathLike[str] | None = None, *,
                 move_to: str | os.PathLike[str] | None = None, settle: float = 0.5, batch: int | None = None,
                 color: str | None = None, error_after: float | None = None,
                 drift: DriftMonitor | None = None) -> None:
        self.runtime = runtime
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"watch folder not found: {self.folder}")
        if settle < 0 or (error_after is not None and error_after < 0):
            raise ConfigError("--settle and --error-after must be 0 or more seconds")
        self.log = ResultLog(Path(log_path) if log_path else self.folder / DEFAULT_LOG, fields=log_fields(runtime))
        self.move_to = Path(move_to) if move_to else None
        self.settle = settle
        # A writer that pauses longer than this mid-file gets its file logged as an error (then, if it
        # resumes, the finished file is a new key and is classified too).
        self.error_after = max(settle, 10.0 * settle if error_after is None else error_after)
        self.batch = batch or runtime.batch_size
        self.color = color
        # Only a bundle whose policy uses the ood output can notice a changed world.
        self.drift = (drift or DriftMonitor()) if runtime.ood else None
        self.ignored: set[str] = set()  # non-image files now in the folder (each named once)
        self._seen: set[Key] = set()
        self._observed: dict[str, _Observed] = {}
        self._listing_failed = False
        self._folder_id = _identity(self.folder)
        self.log.lock()
        self._generation = self.log.generation
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # -- state -------------------------------------------------------------------------------------

    @property
    def counts(self) -> Counter[str]:
        """Results by decision that this watcher logged and that are in the log on disk now."""
        return self.log.counts

    def _follow(self) -> None:
        """Notice the folder (or just the log) deleted and re-created since the last poll, and follow it.

        The lock is taken again at the path before anything in a new folder is listed (or this watcher
        stops, when a second one took it first), and the log now at the path is read as on a restart
        (a folder restored from a copy keeps its images and log: they are not classified again).
        """
        try:
            # A log kept outside the folder whose own folder went is made again; the watched folder is
            # waited for (its listing fails meanwhile): it is the camera's, not ours to create.
            self.log.ensure(create=self.folder.is_dir())
        except EdgeTLError as exc:
            raise EdgeTLError(f"{self.folder} was re-created and {exc}; this watcher stops") from None
        now = _identity(self.folder)
        if now is not None and now != self._folder_id:
            if self._folder_id is not None:
                log.warning("watch: %s was deleted and re-created; watching the new folder", self.folder)
            self._folder_id = now
        if self.log.generation != self._generation:
            self._recover()
            self._generation = self.log.generation  # only once read: a listing that failed is retried

    def _listing(self) -> dict[str, Key]:
        """Candidate images directly in the folder: name -> key. Other files are named once, ignored."""
        out: dict[str, Key] = {}
        others: set[str] = set()
        skip = {self.log.path.name, self.log.path.name + ".lock"}
        with os.scandir(self.folder) as it:
            for entry in it:
                name = entry.name
                if name.startswith(".") or name in skip:
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:  # removed (or made unreadable) between listing and stat
                    continue
                if not name.lower().endswith(WATCHED_SUFFIXES):
                    others.add(name)
                    continue
                out[name] = (name, st.st_size, st.st_mtime_ns)
        new = sorted(others - self.ignored)
        if new:
            log.warning("watch: ignoring %d file(s) that are not images Pillow reads: %s", len(new),
                        ", ".join(new[:10]) + (" …" if len(new) > 10 else ""))
        self.ignored = others  # only what is still there: memory follows the folder
        return out

    def _recover(self) -> None:
        dropped = self.log.repair()
        if dropped:
            log.warning("%s: dropped a partial last line (%d bytes) left by an interrupted write; its image "
                        "is classified again", self.log.path, dropped)
        current = set(self._listing().values())
        unmoved: dict[Key, str | None] = {}
        for rec in self.log.records():
            key = _key(rec)
            if key is not None and key in current:
                self._seen.add(key)
                unmoved[key] = rec.get("moved_to") or None
        if self.move_to is not None:
            for key, dest in unmoved.items():  # logged before a kill, never moved: finish the move
                self._move(key, Path(dest) if dest else self._destination(key[0], set()))

    @property
    def tracked(self) -> int:
        """How many already-logged files are remembered (only those still in the folder)."""
        return len(self._seen)

    @property
    def pending(self) -> list[str]:
        """Images seen but not yet logged: still settling, or unreadable and given time to change."""
        return sorted(self._observed)

    def _wait(self, ob: _Observed) -> float:
        return self.error_after if ob.failed is not None else self.settle

    def next_due(self) -> float:
        """Seconds until the next pending file is due (0 when one is due now, inf when none is pending)."""
        now = time.monotonic()
        return max(0.0, min((ob.since + self._wait(ob) - now for ob in self._observed.values()),
                            default=float("inf")))

    # -- work --------------------------------------------------------------------------------------

    def ready(self) -> list[Key]:
        """Files not yet logged whose size and mtime have held still long enough, oldest first."""
        try:
            self._follow()
            listing = self._listing()
            if not self.log.holds():
                return []  # the folder was replaced while it was listed: taken again on the next poll
        except OSError as exc:  # a network share that dropped: retried next poll, the process lives on
            if not self._listing_failed:
                log.error("watch: cannot list %s (%s); retrying", self.folder, exc.strerror or exc)
            self._listing_failed = True
            return []
        self._listing_failed = False
        self._seen &= set(listing.values())  # forget files that left the folder: memory follows the folder
        now = time.monotonic()
        todo = []
        observed: dict[str, _Observed] = {}
        for name, key in listing.items():
            if key in self._seen:
                continue
            ob = self._observed.get(name)
            if ob is None or ob.key != key:  # new, or changed since the last poll: the clock restarts
                ob = _Observed(key, now)
            observed[name] = ob
            if now - ob.since >= self._wait(ob):
                todo.append(key)
        self._observed = observed
        return sorted(todo, key=lambda k: (k[2], k[0]))

    def poll(self, stop: threading.Event | None = None) -> int:
        """Classify and log everything ready now (until ``stop`` is set); returns images logged."""
        keys = self.ready()
        done = 0
        for i in range(0, len(keys), self.batch):
            if stop is not None and stop.is_set():
                break
            done += self._process(keys[i:i + self.batch])
        return done

    def _destination(self, name: str, taken: set[Path]) -> Path:
        assert self.move_to is not None
        dest = self.move_to / name
        n = 1
        while dest.exists() or dest in taken:
            dest = self.move_to / f"{Path(name).stem}.{n}{Path(name).suffix}"
            n += 1
        return dest

    def _move(self, key: Key, dest: Path) -> None:
        src = self.folder / key[0]
        try:
            st = src.stat()
        except FileNotFoundError:
            return
        if (st.st_size, st.st_mtime_ns) != key[1:]:
            return  # a new picture under the same name: it is not the one logged; classify it next poll
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest = self._destination(key[0], set())
            shutil.move(src, dest)
        except OSError as exc:  # logged already: the move is retried on restart; the line goes on
            log.error("watch: cannot move %s to %s (%s); it stays in the folder", src, dest,
                      exc.strerror or exc)

    def _changed(self, key: Key) -> bool:
        """True when the file is gone or no longer has the size and mtime of ``key``."""
        try:
            st = (self.folder / key[0]).stat()
        except OSError:
            return True
        return (key[0], st.st_size, st.st_mtime_ns) != key

    def _process(self, keys: list[Key]) -> int:
        start = time.perf_counter()
        inputs, sizes, good, records = [], [], [], []
        for key in keys:
            path = self.folder / key[0]
            try:
                x, wh = self.runtime.prepare_sized(path, color=self.color)
                inputs.append(x)
                sizes.append(wh)
            except InputError as exc:
                if self._changed(key):
                    continue  # removed, or still being written: observed again, read once it settles
                ob = self._observed.get(key[0])
                if ob is not None and ob.failed is None and self.error_after > self.settle:
                    ob.failed = str(exc)  # maybe an upload paused half way: wait error_after for it to change
                    continue
                records.append((key, {"label": None, "score": None, "decision": "error", "error": str(exc)}))
                continue
            if self._changed(key):
                inputs.pop()  # it changed while it was read: this answer could be of half a file
                sizes.pop()
                continue
            good.append(key)
        preds = (self.runtime.predict_inputs(np.stack(inputs), [str(self.folder / k[0]) for k in good], sizes=sizes)
                 if inputs else [])
        for key, p in zip(good, preds, strict=True):
            records.append((key, {"label": p.label, "score": round(p.score, 6), "decision": p.decision,
                                  "reason": p.reason,
                                  "ood_score": None if p.ood_score is None else round(p.ood_score, 4),
                                  "error": None, **({"boxes": p.box_dicts()} if p.boxes is not None else {})}))
        if self.drift is not None and preds:
            message = self.drift.update([p.reason == "out_of_distribution" for p in preds])
            if message:
                log.warning("watch %s: %s", self.folder, message)
        if not records:
            return 0
        ms = (time.perf_counter() - start) * 1000.0 / len(records)
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        taken: set[Path] = set()
        lines = []
        for key, fields in sorted(records, key=lambda r: (r[0][2], r[0][0])):
            dest = None
            if self.move_to is not None:
                dest = self._destination(key[0], taken)
                taken.add(dest)
            lines.append({"time": stamp, "path": str(self.folder / key[0]), "file": key[0], "size": key[1],
                          "mtime_ns": key[2], **fields, "ms_per_image": round(ms, 3), "batch_size": len(records),
                          "moved_to": str(dest) if dest else None})
        self.log.append(lines)  # durable before the images are moved or remembered
        for rec in lines:
            key = (rec["file"], rec["size"], rec["mtime_ns"])
            self._seen.add(key)
            self._observed.pop(key[0], None)
            if rec["moved_to"]:
                self._move(key, Path(rec["moved_to"]))
        return len(lines)

    def run(self, poll_s: float = 1.0, once: bool = False, stop: threading.Event | None = None) -> int:
        """Poll until ``stop`` is set; returns images logged.

        ``once``: process what is in the folder now and return, waiting (a bounded time) for files that
        are still settling or being given ``error_after`` to change; what is still changing then is left
        for the next run and named.
        """
        try:
            return self._run(poll_s, once, stop or threading.Event())
        finally:
            self.log.refresh()  # a log deleted after its last line: those results are not counted

    def _run(self, poll_s: float, once: bool, stop: threading.Event) -> int:
        total = 0
        deadline = time.monotonic() + self.settle + self.error_after + 2 * max(poll_s, 1.0)
        while True:
            total += self.poll(stop)
            if not once:
                if stop.wait(poll_s):
                    return total
                continue
            if stop.is_set() or not self._observed:
                return total
            if time.monotonic() > deadline:
                log.warning("watch: %d file(s) still changing, left for the next run: %s", len(self._observed),
                            ", ".join(self.pending[:10]))
                return total
            if stop.wait(min(poll_s, max(0.01, self.next_due()))):
                return total

    def close(self) -> None:
        """Close the log and release the lock."""
        self.log.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

