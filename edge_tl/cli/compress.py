"""``prune`` (structured channel pruning with recovery)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..settings import PruneSettings
from ._app import app, require_training, state
from .options import settings_command


@app.command()
@settings_command(PruneSettings)
def prune(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory holding finetune/ (writes RUN/prune/)."),
    settings: PruneSettings = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Remove whole channels from the fine-tuned model, fine-tune to recover, save RUN/prune/.

    Before it starts it prints the plan and its estimated time here (timed on a few images). End-to-end
    recovery (the default for a linear fine-tune) takes minutes per epoch on a CPU; --recover head takes
    a feature pass. Needs the train extra (torch, torch-pruning): pip install 'edge-tl[train]'.
    """
    require_training()
    from ..stages.prune import describe

    manifest = settings.run(run, quiet=quiet or state.quiet)
    console().print(f"[green]{describe(manifest)}[/] -> {run / 'prune'}", highlight=False)
