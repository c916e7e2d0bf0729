"""``export``: from the torch model to a target's artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..rundir import MODEL_STAGES
from ._app import app, state


@app.command()
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory (from `edge-tl finetune`)."),
    target: str = typer.Option(..., "--target", "-t", metavar="NAME|PATH", help="Target name (`edge-tl targets`) or "
                                "the path of a profile file (.toml)."),
    calibration: str = typer.Option(None, metavar="DIR|LIST",
                                    help="INT8: folder of (unlabelled) images to calibrate on, "
                                    "e.g. from the production camera. Default: the training split."),
    from_: str = typer.Option(None, "--from", metavar="|".join(MODEL_STAGES),
                              help=f"{' | '.join(MODEL_STAGES)} (default: prune when present, else finetune; "
                              "an adapted model only when asked for)."),
    qat: int = typer.Option(0, "--qat", metavar="N", help="INT8: quantisation-aware training for N epochs "
                            "(distilled from the float model) instead of post-training quantisation; for models "
                            "whose INT8 graph misses the gate. 0: off."),
    data: Path = typer.Option(None, "--data", metavar="DIR", help="The run's images moved here (the same class "
                              "folders and file names; checked against the sha256 in RUN/finetune/split.json). "
                              "Default: the folder the run was fine-tuned on."),
    no_ood: bool = typer.Option(False, "--no-ood", help="No ood_score output (out-of-distribution score) in "
                                "the classifier's graph."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Export the run's model for one target and check it against the torch model."""
    from ..stages.export import describe
    from ..stages.export import export as run_export

    m = run_export(run, target, calibration=calibration, source=from_, quiet=quiet or state.quiet,
                   qat_epochs=qat, ood=not no_ood, data=data)
    for line in describe(m, run / "targets" / m["target"]["name"]):
        console().print(line, soft_wrap=True, highlight=False, markup=False)
