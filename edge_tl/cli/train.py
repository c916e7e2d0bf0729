"""``finetune`` (and, from the compression work, ``prune``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ._app import app, state


@app.command()
def finetune(
    data_dir: Path = typer.Argument(..., help="ImageFolder: one sub-folder per class."),
    out: Path = typer.Option(..., "--out", help="Run directory to write (RUN/finetune/)."),
    arch: str = typer.Option("mobilenet_v2", help="Backbone (mobilenet_v2, mobilenet_v3_small, "
                             "mobilenet_v3_large, resnet18, resnet50, efficientnet_b0)."),
    weights: str = typer.Option("imagenet", help="imagenet | none | PATH to a state_dict."),
    mode: str = typer.Option("linear", help="linear (frozen backbone, cached features) | partial | full."),
    epochs: int = typer.Option(None, help="Epochs (default: 30 linear, 8 partial/full)."),
    unfreeze: int = typer.Option(3, help="partial: number of last blocks to train."),
    progressive: bool = typer.Option(False, help="partial: unfreeze one more block per epoch."),
    lr: float = typer.Option(None, help="Learning rate of the head (backbone gets a tenth)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    val_fraction: float = typer.Option(0.2, help="Held-out fraction per class."),
    seed: int = typer.Option(0, help="Seed for the split, the initialisation and augmentation."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    patience: int = typer.Option(5, help="Early stopping: epochs without validation improvement."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fine-tune a pretrained backbone on an image folder."""
    from ..stages.finetune import finetune as run_finetune
    from ..training import TrainConfig

    cfg = TrainConfig(mode=mode, epochs=epochs, unfreeze=unfreeze, progressive=progressive, lr=lr,
                      batch_size=batch_size, seed=seed, device=device, workers=workers, patience=patience,
                      quiet=quiet or state.quiet)
    manifest = run_finetune(data_dir, out, arch=arch, weights=weights, val_fraction=val_fraction, train_cfg=cfg)
    if manifest:
        m, t = manifest["metrics"], manifest["timings"]
        Console(stderr=True).print(
            f"[green]fine-tuned[/] {arch} ({mode}) on {manifest['data']['n_images']} images: "
            f"val top-1 {m['val_top1']:.4f} (best epoch {m['best_epoch']}), {t['train_seconds']:.1f} s "
            f"on {t['device']} -> {out / 'finetune'}")
