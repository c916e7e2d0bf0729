"""The ``edge-tl`` command line: thin typer commands over the stages.

Each command module registers itself on the shared ``app``. ``main`` maps outcomes to exit codes:
0 success, 1 a benchmark gate failed, 2 bad input or configuration (one line, no traceback unless
``--verbose``).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

from ..errors import EdgeTLError, GateFailed
from ._app import app, state

# Command modules, imported for their registrations (each owns its commands).
_COMMANDS = ("train", "compress", "ship", "bench", "targets", "deploy", "pipeline")
for _name in _COMMANDS:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logger = logging.getLogger("edge_tl")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and, without ``argv``, exits with) the exit code."""
    _setup_logging()
    code = 0
    try:
        # Standalone mode: typer/click print usage errors themselves and exit 2.
        app(args=argv, prog_name="edge-tl")
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
    except KeyboardInterrupt:
        print("interrupted; finished artifacts are untouched", file=sys.stderr)
        code = 130
    if argv is None:
        sys.exit(code)
    return code
