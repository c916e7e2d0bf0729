"""``adapt`` (a new line, camera or product variant from unlabelled images: AdaBN, self-training)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..settings import AdaptSettings
from ._app import app, require_training, state
from .options import settings_command


@app.command()
@settings_command(AdaptSettings)
def adapt(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory holding finetune/ (writes RUN/adapt/; "
                               "export it with --from adapt)."),
    settings: AdaptSettings = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Adapt the fine-tuned (or pruned) classifier to a new line, camera or product variant from unlabelled
    images; save RUN/adapt/.

    AdaBN (Li et al. 2016) re-estimates every BatchNorm layer's statistics on the new images; self-training
    (after FixMatch, Sohn et al. 2020) trains on the model's own confident answers. The source model is not
    changed. Needs the train extra: pip install 'edge-tl[train]'.
    """
    require_training()
    from ..stages.adapt import describe

    manifest = settings.run(run, quiet=quiet or state.quiet)
    console().print(f"[green]{describe(manifest)}[/] -> {run / 'adapt'}", highlight=False, soft_wrap=True)
