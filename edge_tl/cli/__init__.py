"""The ``edge-tl`` command line: thin typer commands over the stages.

Each command module registers itself on the shared ``app``. ``main`` maps outcomes to exit codes:
0 success, 1 a benchmark gate failed, 2 bad input or configuration (one line, no traceback unless
``--verbose``).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import sys
import traceback
from collections.abc import Iterator

from ..errors import EdgeTLError, GateFailed
from ..progress import OneLine, library_output
from ._app import GLOBAL_FLAGS, app, state

# Command modules, imported for their registrations (each owns its commands).
_COMMANDS = ("train", "compress", "ship", "bench", "targets", "deploy", "pipeline", "transfer", "adapt")
for _name in _COMMANDS:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logger = logging.getLogger("edge_tl")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _wants_quiet(args: list[str]) -> bool:
    """--quiet/-q anywhere before "--" (the global flag or a command's own)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--quiet" or (arg.startswith("-") and not arg.startswith("--") and len(arg) > 1
                                and set(arg[1:]) <= {"q", "v"} and "q" in arg):
            return True
    return False


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error on a file: the path, the system's reason, and what usually helps."""
    # Only where the system's words leave the cause open ("File too large" of what?); each hint is
    # skipped when the reason already says it (check_writable's messages do).
    hints = {errno.EFBIG: ("ulimit", "over the file-size limit (ulimit -f)"),
             errno.ENOTDIR: ("is a file", "a part of the path is a file, not a folder")}
    reason = exc.strerror or str(exc) or type(exc).__name__
    said, hint = hints.get(exc.errno or -1, ("", ""))
    if hint and said not in reason:
        reason = f"{reason}: {hint}"
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {reason}" if paths else reason


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move --verbose/-v/--quiet/-q given after the subcommand in front of it, so they work anywhere.

    Only whole tokens before ``--`` move, never the value of an option that takes one (``--target -v``
    stays a target named "-v"); a command with its own -q/--quiet still sees the global one through
    ``state.quiet``.
    """
    import typer

    head: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        head.append(args[i])
        i += 1
    if i >= len(args) or args[i] == "--":
        return args
    group = typer.main.get_command(app)
    command = getattr(group, "commands", {}).get(args[i])
    if command is None:
        return args
    takes_value = {opt for p in command.params if p.param_type_name == "option" and not p.is_flag
                   for opt in (*p.opts, *p.secondary_opts)}
    moved: list[str] = []
    rest: list[str] = [args[i]]
    j = i + 1
    while j < len(args):
        arg = args[j]
        if arg == "--":
            rest += args[j:]
            break
        if arg in takes_value and j + 1 < len(args):
            rest += [arg, args[j + 1]]
            j += 2
            continue
        short = arg.startswith("-") and not arg.startswith("--") and len(arg) > 1 and set(arg[1:]) <= {"q", "v"}
        if arg in GLOBAL_FLAGS or short:
            moved.append(arg)
        else:
            rest.append(arg)
        j += 1
    return head + moved + rest


# Output that is not a terminal (a log file, CI, `| tee`) is not wrapped at 80 columns: help is plain
# text with one line per option, and rich consoles are this wide.
WIDE = 2000


@contextlib.contextmanager
def _output_mode() -> Iterator[None]:
    """Plain, unwrapped help and rich output when neither stdout nor stderr is a terminal."""
    import os

    def tty(stream: object) -> bool:
        try:
            return bool(stream.isatty())  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            return False

    saved = app.rich_markup_mode, app.info.context_settings, os.environ.get("COLUMNS")
    if not tty(sys.stdout):
        app.rich_markup_mode = None
        app.info.context_settings = {"terminal_width": WIDE, "max_content_width": WIDE}
        if not tty(sys.stderr) and saved[2] is None:
            os.environ["COLUMNS"] = str(WIDE)
    try:
        yield
    finally:
        app.rich_markup_mode, app.info.context_settings = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("COLUMNS", None)


def _line_buffered() -> None:
    """stdout and stderr flushed at each line when they are not a terminal: a pipe or a file otherwise
    gets stdout in 8 KB blocks, so a stage's summary (stdout) landed after later stages' lines (stderr)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if not stream.isatty():
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # a stream without reconfigure (replaced, closed)
            pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and, without ``argv``, exits with) the exit code."""
    _setup_logging()
    _line_buffered()
    code = 0
    args = hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    state.verbose = state.quiet = False
    try:
        # Standalone mode: typer/click print usage errors themselves and exit 2.
        with library_output(_wants_quiet(args)), _output_mode():
            app(args=args, prog_name="edge-tl")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except GateFailed as exc:
        print(f"gate failed: {exc}", file=sys.stderr)
        code = 1
    except EdgeTLError as exc:
        if state.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except OSError as exc:
        # Disk full, a file-size limit, --out below a file, a read-only or unwritable folder: the
        # path and the reason, not a traceback through the writer that found out.
        if state.verbose:
            traceback.print_exc()
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted; finished artifacts are untouched", file=sys.stderr)
        code = 130
    if argv is None:
        sys.exit(code)
    return code
