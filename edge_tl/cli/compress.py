"""``prune`` (structured channel pruning with recovery)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ._app import app, require_training, state


@app.command()
def prune(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory holding finetune/ (writes RUN/prune/)."),
    ratio: float = typer.Option(0.3, help="Share of each layer's channels to remove (0 < ratio < 1); "
                                "kept counts are rounded to multiples of --round-to."),
    round_to: int = typer.Option(16, help="Kept channel counts are multiples of this: 16 (default; x86 "
                                 "VNNI and tensor-core INT8 work in blocks of 16 channels), 8 or 32."),
    recover: str = typer.Option("auto", metavar="auto|full|partial|head",
                                help="How the pruned model recovers: full | partial (train end to "
                                "end on the labels and the unpruned model's logits) | head (retrain the head "
                                "only: fast, keeps most of the loss) | auto (full for a linear fine-tune, "
                                "else the fine-tune's mode)."),
    recover_epochs: int = typer.Option(None, help="Recovery epochs after each pruning step; 0: only "
                                       "recompute BatchNorm statistics (default: 30 for head, else half "
                                       "the end-to-end epochs spread over the steps)."),
    importance: str = typer.Option("l2", metavar="l2|taylor", help="Channel ranking: l2 (weight magnitude) | taylor "
                                   "(loss gradient x weight on training images)."),
    steps: int = typer.Option(None, help="Pruning rounds, each followed by recovery (default: 1 for "
                              "head recovery + l2, else one per 10 % of ratio, up to 5)."),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda", help="auto | cpu | cuda (recovery and calibration)."),
    data: Path = typer.Option(None, "--data", metavar="DIR", help="The run's images moved here (the same class "
                              "folders and file names; checked against the sha256 in RUN/finetune/split.json). "
                              "Default: the folder the run was fine-tuned on."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Remove whole channels from the fine-tuned model, fine-tune to recover, save RUN/prune/.

    Before it starts it prints the plan and its estimated time here (timed on a few images). End-to-end
    recovery (the default for a linear fine-tune) takes minutes per epoch on a CPU; --recover head takes
    a feature pass. Needs the train extra (torch, torch-pruning): pip install 'edge-tl[train]'.
    """
    require_training()
    from ..stages.prune import describe
    from ..stages.prune import prune as run_prune

    manifest = run_prune(run, ratio, recover_epochs=recover_epochs, importance=importance, steps=steps,
                         quiet=quiet or state.quiet, device=device, recover=recover, round_to=round_to,
                         data=data)
    console().print(f"[green]{describe(manifest)}[/] -> {run / 'prune'}", highlight=False)
