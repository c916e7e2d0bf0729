"""BatchNorm statistics re-estimated from images: pruning's recalibration and AdaBN share this.

Weights never change here: the model runs without gradients, in eval mode except for its BatchNorm
layers, whose running mean/variance become the average over the given images, each batch weighted by
its size (torch's ``momentum=None`` weights batches equally, which over-weights a small last batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from .data import Sample
    from .preprocess import Preprocess


def batchnorms(model: nn.Module) -> list[Any]:
    """Every BatchNorm layer of ``model`` (1-D, 2-D or 3-D), in module order."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def image_batches(root: Path, samples: list[Sample], pre: Preprocess, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """(NCHW float32, labels) batches of ``samples`` with the evaluation preprocessing; unreadable files
    are dropped (the training intake warns about them)."""
    from torch.utils.data import DataLoader

    from .training import ImageDataset, collate

    loader = DataLoader(ImageDataset(root, samples, pre, train=False), batch_size=batch_size,
                        shuffle=False, num_workers=0, collate_fn=collate)
    for x, y, _i, _bad in loader:
        if len(x):
            yield x, y


def estimate_statistics(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str = "cpu",
                        batch_size: int = 32, quiet: bool = True, desc: str = "BatchNorm statistics") -> int:
    """Replace every BatchNorm layer's running statistics with the average over ``samples`` (in the order
    given: pass them shuffled, since batches of one class miss the variance between classes); returns
    the number of images read. The model is left in eval mode on the CPU, its momenta restored."""
    import torch

    from .progress import progress

    bns = batchnorms(model)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    model.to(device).eval()
    for m in bns:
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        with torch.no_grad(), progress(quiet) as bar:
            task = bar.add_task(desc, total=len(samples), info="")
            for x, _y in image_batches(root, samples, pre, batch_size):
                for m in bns:  # a running average weighted by images: new = old + (batch - old) * b / (seen + b)
                    m.momentum = len(x) / (seen + len(x))
                model(x.to(device))
                seen += len(x)
                bar.advance(task, len(x))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.eval().cpu()
    return seen
