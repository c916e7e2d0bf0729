"""``adapt`` (a new line, camera or product variant from unlabelled images: AdaBN, self-training)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ._app import app, require_training, state


@app.command()
def adapt(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory holding finetune/ (writes RUN/adapt/; "
                               "export it with --from adapt)."),
    unlabeled: Path = typer.Option(..., "--unlabeled", metavar="DIR", help="Unlabelled images of the new line, "
                                   "camera or variant (every image below DIR; sub-folder names are ignored)."),
    method: str = typer.Option("adabn", metavar="adabn|self-train|both",
                               help="adabn (re-estimate BatchNorm statistics on DIR: seconds) | self-train "
                               "(confident, augmentation-consistent, class-balanced pseudo-labels) | both "
                               "(AdaBN, then self-training)."),
    target_val: Path = typer.Option(None, "--target-val", metavar="DIR", help="Labelled images of the new domain "
                                    "(one folder per class, the run's classes): only to report source-only vs "
                                    "adapted accuracy, never to train or choose anything."),
    from_: str = typer.Option(None, "--from", metavar="finetune|prune",
                              help="finetune | prune (default: prune when present)."),
    threshold: float = typer.Option(0.8, help="self-train: softmax confidence a pseudo-label needs."),
    class_factor: float = typer.Option(2.0, help="self-train: at most this times the smallest class's count of "
                                       "pseudo-labels per class."),
    epochs: int = typer.Option(None, help="self-train: epochs per round (default: 5 on cached features or "
                               "activations, 2 end to end)."),
    rounds: int = typer.Option(5, help="self-train: most rounds; it stops earlier when fewer than --tolerance "
                               "of the pseudo-labels change."),
    tolerance: float = typer.Option(0.02, help="self-train: stop when fewer than this share of the pseudo-labels "
                                    "change between rounds."),
    distill: float = typer.Option(0.5, help="self-train: weight of the KL term to the starting model's logits "
                                  "(limits drift); 0: off."),
    views: int = typer.Option(3, help="self-train: views per image (the plain one and augmented ones)."),
    bn_images: int = typer.Option(512, help="AdaBN: unlabelled images whose statistics are averaged."),
    anchor: bool = typer.Option(True, "--anchor/--no-anchor", help="AdaBN: first re-anchor the BatchNorm "
                                "statistics on the fine-tune's training images without changing the model (right "
                                "for a frozen backbone, whose statistics are ImageNet's); --no-anchor: plain AdaBN."),
    data: Path = typer.Option(None, "--data", metavar="DIR", help="AdaBN anchor: the fine-tune's images moved "
                              "here (the same class folders and file names; checked against the sha256 in "
                              "RUN/finetune/split.json). Default: the folder the run was fine-tuned on."),
    seed: int = typer.Option(0, help="Seed for augmentation, image order and training."),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda", help="auto | cpu | cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Adapt the fine-tuned (or pruned) classifier to a new line, camera or product variant from unlabelled
    images; save RUN/adapt/.

    AdaBN (Li et al. 2016) re-estimates every BatchNorm layer's statistics on the new images; self-training
    (after FixMatch, Sohn et al. 2020) trains on the model's own confident answers. The source model is not
    changed. Needs the train extra: pip install 'edge-tl[train]'.
    """
    require_training()
    from ..stages.adapt import AdaptSettings, describe
    from ..stages.adapt import adapt as run_adapt

    settings = AdaptSettings(method=method, bn_images=bn_images, anchor=anchor, threshold=threshold,
                             class_factor=class_factor, epochs=epochs, rounds=rounds, tolerance=tolerance,
                             distill=distill, views=views, seed=seed)
    manifest = run_adapt(run, unlabeled, method, target_val, from_, settings=settings, device=device,
                         quiet=quiet or state.quiet, data=data)
    console().print(f"[green]{describe(manifest)}[/] -> {run / 'adapt'}", highlight=False, soft_wrap=True)
