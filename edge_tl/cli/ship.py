"""``export``: from the torch model to a target's artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..settings import ExportSettings
from ._app import app, state
from .options import settings_command


@app.command()
@settings_command(ExportSettings)
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory (from `edge-tl finetune`)."),
    settings: ExportSettings = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Export the run's model for each target and check it against the torch model."""
    from ..stages.export import describe

    for target in settings.targets:
        m = settings.run(run, target, quiet=quiet or state.quiet)
        for line in describe(m, run / "targets" / m["target"]["name"]):
            console().print(line, soft_wrap=True, highlight=False, markup=False)
