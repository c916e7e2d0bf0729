"""One progress style for every long task; ``quiet`` turns it off.

On a terminal: a rich progress bar on stderr. Anywhere else (a log file, CI, ``| tee``, ``nohup``) a
bar cannot redraw, and rich would print it only when the task ends; there each task prints plain,
unwrapped lines as it goes instead, flushed at once::

    train (partial): 120/640 (19%) 0:01:10 elapsed, ~0:05:03 left  epoch 2/8 val top-1 0.912

A line is printed when a task starts, every ``STEP_PERCENT`` of its total, at least every
``EVERY_SECONDS`` while it advances, when its info text changes (say, a new validation score) and
when it ends. stdout stays clean for JSON output in both modes.

Callers use only ``progress(quiet)`` and the rich ``Progress`` methods ``add_task``, ``advance``,
``update`` (and ``remove_task``), so they need not know which mode they got.

Other libraries' output goes the same way, through ``library_output(quiet)``, the one place the CLI and
the Python API tame it (see there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

STEP_PERCENT = 10
EVERY_SECONDS = 10.0


def _stderr_is_terminal() -> bool:
    """Whether progress can redraw in place (``EDGE_TL_PROGRESS=lines|bar`` overrides the test)."""
    forced = os.environ.get("EDGE_TL_PROGRESS", "").lower()
    if forced in ("lines", "bar"):
        return forced == "bar"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def console(stderr: bool = True) -> Console:
    """A rich console on stderr (or stdout) that never wraps lines when it is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Console(stderr=stderr, soft_wrap=not tty)


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress(Progress):
    """``rich.progress.Progress`` that prints plain lines per step instead of redrawing a bar."""

    def __init__(self, *columns: Any, step_percent: float = STEP_PERCENT, every_seconds: float = EVERY_SECONDS,
                 **kwargs: Any) -> None:
        super().__init__(*columns, **(kwargs | {"disable": True}))  # task bookkeeping, no live display
        self._step = step_percent
        self._every = every_seconds
        self._said: dict[TaskID, tuple[float, float, str]] = {}  # task -> (percent, monotonic time, info)
        self._ended: set[TaskID] = set()

    def _line(self, task_id: TaskID, final: bool = False) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return
        done, total = task.completed, task.total
        info = str(task.fields.get("info", "") or "")
        elapsed = task.elapsed or 0.0
        if total:
            pct = 100.0 * done / total
            count = f"{done:g}/{total:g} ({pct:.0f}%)"
        else:
            pct, count = 0.0, f"{done:g}"
        when = f"{_clock(elapsed)} elapsed"
        if total and 0 < done < total and elapsed > 0:
            when += f", ~{_clock(elapsed * (total - done) / done)} left"
        if final:
            when = f"done in {_clock(elapsed)}" if total is None or done >= total else f"stopped, {when}"
        text = f"{task.description}: {count} {when}" + (f"  {info}" if info else "")
        print(text, file=sys.stderr, flush=True)
        self._said[task_id] = (pct, time.monotonic(), info)

    def _maybe_line(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or task_id in self._ended:
            return
        if task.total is not None and task.completed >= task.total:
            self._ended.add(task_id)
            self._line(task_id, final=True)
            return
        pct = 100.0 * task.completed / task.total if task.total else 0.0
        last_pct, last_time, last_info = self._said.get(task_id, (0.0, time.monotonic(), ""))
        info = str(task.fields.get("info", "") or "")
        if (pct // self._step > last_pct // self._step or time.monotonic() - last_time >= self._every
                or (info and info != last_info)):
            self._line(task_id)

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._line(task_id)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def remove_task(self, task_id: TaskID) -> None:
        self._finish(task_id)
        super().remove_task(task_id)

    def _finish(self, task_id: TaskID) -> None:
        if task_id not in self._ended and task_id in self._tasks:
            self._ended.add(task_id)
            self._line(task_id, final=True)

    def stop(self) -> None:
        for task_id in list(self._tasks):
            self._finish(task_id)
        super().stop()


def progress(quiet: bool = False) -> Progress:
    """A progress display on stderr (stdout stays clean for JSON output): a bar on a terminal, plain
    lines per step elsewhere (see the module docstring), nothing when ``quiet``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    if quiet:
        return Progress(*columns, disable=True)
    if not _stderr_is_terminal():
        return LineProgress(*columns)
    return Progress(*columns, console=Console(stderr=True), transient=False)


# Other libraries' output, as a run printed it to a log file: NNCF draws its progress bars ("Statistics
# collection", "Applying Bias correction") on rich's global console, on stdout; off a terminal rich
# prints each bar once, when it ends, as wide as the console (5,894 characters under the CLI's
# COLUMNS=2000). torch logs "No CUDA runtime is found" on every CPU-only host when NNCF loads its
# extensions. ONNX Runtime prints its own warnings, in ANSI colours, from the sessions NNCF and its
# quantiser open with default options (ours set their own severity).
LIBRARY_LINE_WIDTH = 100  # NNCF's bar, off a terminal: one line this wide when a step ends
ORT_ERROR = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
# Notices that say nothing to our users: (logger, message prefix) -> DEBUG.
DEBUG_NOTICES = {"torch.utils.cpp_extension": ("No CUDA runtime is found",)}


class _ToDebug(logging.Filter):
    """Demotes a logger's known notices to DEBUG: shown only where that logger is enabled for DEBUG."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _demote_notices() -> None:
    for name, prefixes in DEBUG_NOTICES.items():
        logger = logging.getLogger(name)  # the same object torch gets when it logs
        if not any(isinstance(f, _ToDebug) for f in logger.filters):
            logger.addFilter(_ToDebug(prefixes))


def _onnxruntime_errors_only() -> None:
    """ONNX Runtime's default logger at ERROR, for the sessions other libraries open. A process-wide
    setting without a getter, so it is not put back: its warnings never help our users."""
    try:
        import onnxruntime
    except ImportError:
        return
    onnxruntime.set_default_logger_severity(ORT_ERROR)


class OneLine(logging.Formatter):
    """``warning: …`` / ``info: …``: how our logger's records print, on the CLI and from the API."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def api_warnings() -> Iterator[None]:
    """While an API stage runs in a program that configured no logging: our warnings on stderr as the
    CLI prints them (``warning: …``, one line each) instead of logging's bare last-resort lines; infos
    stay silent. A program that set up logging (any handler on ``edge_tl`` or the root) keeps its own."""
    logger = logging.getLogger("edge_tl")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def library_output(quiet: bool = False) -> Iterator[None]:
    """Other libraries' output while a stage runs, for the CLI and the Python API alike: rich's global
    console (NNCF's bars) on stderr, silent when ``quiet``, and off a terminal one plain line per bar of
    ``LIBRARY_LINE_WIDTH`` characters at most; torch's "No CUDA runtime is found" at DEBUG; ONNX
    Runtime's own warnings off. Our own warnings (logger "edge_tl") are untouched."""
    import rich

    _demote_notices()
    _onnxruntime_errors_only()
    console = rich.get_console()
    saved = dict(console.__dict__)
    width = {} if _stderr_is_terminal() else {"width": LIBRARY_LINE_WIDTH}
    rich.reconfigure(stderr=True, quiet=quiet, **width)  # the same object: NNCF's bars find it
    try:
        yield
    finally:
        console.__dict__ = saved
