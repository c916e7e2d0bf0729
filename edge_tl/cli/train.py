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
    lr: float = typer.Option(None, help="Learning rate of the head."),
    backbone_lr_scale: float = typer.Option(0.1, help="partial/full: the unfrozen backbone blocks learn at this "
                                            "multiple of --lr."),
    batch_size: int = typer.Option(32, help="Batch size."),
    val_fraction: float = typer.Option(0.2, help="Held-out fraction per class."),
    seed: int = typer.Option(0, help="Seed for the split, the initialisation and augmentation."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    patience: int = typer.Option(5, help="Early stopping: epochs without validation improvement."),
    views: int = typer.Option(2, help="partial on a CPU: cached views per training image (1 plain + augmented); "
                              "the frozen layers run once per view."),
    balance: str = typer.Option("none", help="Imbalanced classes: none | weights (loss weighted per class) | "
                                "sampler (classes drawn equally often); early stopping then uses balanced accuracy."),
    resize: str = typer.Option("shorter", help="How an image becomes the square input: shorter (resize + centre "
                               "crop, ImageNet's recipe) | full (whole frame, squeezed) | letterbox (whole frame, "
                               "padded) | auto (letterbox when the crop would drop a median > 45 %)."),
    engine: str = typer.Option("auto", help="What runs the frozen layers once: auto (ONNX Runtime on a CPU) | "
                               "onnxruntime | torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fine-tune a pretrained backbone on an image folder."""
    from ..stages.finetune import finetune as run_finetune
    from ..training import TrainConfig

    cfg = TrainConfig(mode=mode, epochs=epochs, unfreeze=unfreeze, progressive=progressive, lr=lr,
                      batch_size=batch_size, seed=seed, device=device, workers=workers, patience=patience,
                      quiet=quiet or state.quiet, views=views, backbone_lr_scale=backbone_lr_scale,
                      balance=balance, engine=engine)
    manifest = run_finetune(data_dir, out, arch=arch, weights=weights, val_fraction=val_fraction, train_cfg=cfg,
                            resize=resize)
    if manifest:
        Console(stderr=True).print(finetune_summary(manifest, out), soft_wrap=True)


def finetune_summary(manifest: dict, out: Path) -> str:
    """Two lines: validation top-1, balanced accuracy and time; per-class recall."""
    m, t = manifest["metrics"], manifest["timings"]
    recalls = ", ".join(f"{c} {'not evaluated' if r is None else f'{r:.3f}'}" for c, r in m["per_class_recall"].items())
    return (f"[green]fine-tuned[/] {manifest['arch']} ({manifest['mode']}) on {manifest['data']['n_images']} images: "
            f"val top-1 {m['val_top1']:.4f}, balanced accuracy {m['val_balanced_accuracy']:.4f} "
            f"(best epoch {m['best_epoch']}), {t['train_seconds']:.1f} s on {t['device']} -> {out / 'finetune'}\n"
            f"per-class recall (validation): {recalls}")
