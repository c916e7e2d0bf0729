"""``export``: from the torch model to a target's artifact."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ._app import app, state


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    target: str = typer.Option(..., "--target", "-t", help="Target name (`edge-tl targets`) or profile path."),
    calibration: str = typer.Option(None, help="INT8: folder of (unlabelled) images to calibrate on, "
                                    "e.g. from the production camera. Default: the training split."),
    from_: str = typer.Option(None, "--from", help="finetune | prune (default: prune when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Export the run's model for one target and check it against the torch model."""
    from ..stages.export import export as run_export

    m = run_export(run, target, calibration=calibration, source=from_, quiet=quiet or state.quiet)
    v = m.get("validation")
    check = (f"agreement {v['agreement']:.4f}, max |Δlogit| {v['max_abs_logit_diff']:.2e} on {v['n']} images"
             if v else "not validated on this host")
    Console(stderr=True).print(f"[green]exported[/] {m['target']['name']} from {m['source_stage']}: {check} "
                               f"-> {run / 'targets' / m['target']['name']}")
