"""Flows that span stages: ``bench --export`` exports every chosen target this host can run, then benches.

The API layer (``api``, ``pipeline``, the CLI) calls these; ``bench`` itself only measures and never
imports a stage, and the stages never import this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bench import run as bench_run
from .bench.run import Prepare, host_cannot_run, target_arg
from .errors import EdgeTLError
from .rundir import RunDir
from .targets import Target


def _export_one(run: RunDir, target: Target, quiet: bool, say: Callable[[str], None]) -> str | None:
    """Export ``target`` for ``bench --export``; None when done (or already there), else why not."""
    folder = run.target(target.name)
    if (folder / "manifest.json").is_file():
        say(f"already exported in {folder}, reusing it (delete the folder to export again)")
        return None
    from .stages.export import export  # torch and the converters only when something is exported

    say("exporting…")
    try:
        export(run.root, target_arg(target), quiet=quiet)
    except EdgeTLError as exc:
        say(f"export failed: {exc}")
        return f"export failed: {exc}"
    say("exported")
    return None


def export_first(quiet: bool) -> Prepare:
    """``bench``'s ``prepare`` for ``--export``: a target this host cannot run is skipped with the reason
    (not a failure); one not exported yet is exported first (a failed export is a failed report)."""

    def prepare(run: RunDir, target: Target, say: Callable[[str], None]) -> tuple[str | None, bool]:
        reason = host_cannot_run(target)
        if reason is not None:
            say(f"skipped: {reason}")
            return reason, False
        reason = _export_one(run, target, quiet, say)
        return reason, reason is not None

    return prepare


def bench(run_dir: str | Path, targets: list[str] | None, *, export: bool = False, quiet: bool = True,
          **options: Any) -> list[dict[str, Any]]:
    """``edge_tl.bench.run.bench`` (same options); ``export``: first export every chosen target this host
    can run that is not exported yet (the others are reported as skipped, with the reason)."""
    return bench_run.bench(run_dir, targets, quiet=quiet, prepare=export_first(quiet) if export else None,
                           **options)
