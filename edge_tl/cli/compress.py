"""``prune`` (structured channel pruning with recovery)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ._app import app, state


@app.command()
def prune(
    run: Path = typer.Argument(..., help="Run directory holding finetune/ (writes RUN/prune/)."),
    ratio: float = typer.Option(0.3, help="Share of each layer's channels to remove (0 < ratio < 1); "
                                "kept counts are rounded to multiples of 8."),
    recover_epochs: int = typer.Option(None, help="Recovery epochs after each pruning step; 0: only "
                                       "recompute BatchNorm statistics (default: the fine-tune's epochs "
                                       "for linear, fewer for partial/full)."),
    importance: str = typer.Option("l2", help="Channel ranking: l2 (weight magnitude) | taylor "
                                   "(loss gradient x weight on training images)."),
    steps: int = typer.Option(None, help="Pruning rounds, each followed by recovery (default: 1 for "
                              "linear + l2, else one per 10 % of ratio, up to 5)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (recovery and calibration)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Remove whole channels from the fine-tuned model, fine-tune to recover, save RUN/prune/."""
    from ..stages.prune import describe
    from ..stages.prune import prune as run_prune

    manifest = run_prune(run, ratio, recover_epochs=recover_epochs, importance=importance, steps=steps,
                         quiet=quiet or state.quiet, device=device)
    Console(stderr=True).print(f"[green]{describe(manifest)}[/] -> {run / 'prune'}", highlight=False)
