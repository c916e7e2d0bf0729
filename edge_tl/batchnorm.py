"""BatchNorm statistics re-estimated from images: pruning's recalibration and AdaBN (``adabn``, with its
source re-anchoring ``anchor_batchnorm``) share this.

Weights never change here: the model runs without gradients, in eval mode except for its BatchNorm
layers, whose running mean/variance become the average over the given images, each batch weighted by
its size (torch's ``momentum=None`` weights batches equally, which over-weights a small last batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
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


log = logging.getLogger("edge_tl")


def input_statistics(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str,
                      batch_size: int, quiet: bool) -> tuple[dict[int, tuple[Any, Any]], int]:
    """Per BatchNorm layer (by ``id``): the mean and (population) variance per channel of its input over
    ``samples``, with the model as it is (eval mode, nothing changes); and the images seen."""
    import torch

    from .progress import progress

    sums: dict[int, list[Any]] = {}

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums.setdefault(id(m), [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [m.register_forward_pre_hook(hook) for m in batchnorms(model)]
    seen = 0
    model.to(device).eval()
    try:
        with torch.no_grad(), progress(quiet) as bar:
            task = bar.add_task("BatchNorm statistics (source images)", total=len(samples), info="")
            for x, _y in image_batches(root, samples, pre, batch_size):
                model(x.to(device))
                seen += len(x)
                bar.advance(task, len(x))
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for key, (n, s, q) in sums.items():
        mean = s / max(n, 1)
        stats[key] = (mean.float().cpu(), (q / max(n, 1) - mean * mean).clamp_min(0).float().cpu())
    return stats, seen


def anchor_batchnorm(model: nn.Module, stats: dict[int, tuple[Any, Any]]) -> int:
    """Give every BatchNorm layer the running statistics ``stats`` (``input_statistics`` of the source
    images) and change its affine pair so that it computes exactly the same function; returns the layers.

    Why: AdaBN assumes the stored statistics are the source domain's. After a ``linear`` or ``partial``
    fine-tune they are ImageNet's (the backbone's BatchNorm was frozen), and the head learned the source
    images normalised by them; replacing them by the target's would normalise the target images to a
    place the source images never were (measured, linear fine-tunes: a contrast shift of the synthetic
    test images, top-1 0.67 -> 0.53 with plain AdaBN, 1.0 re-anchored first; elpv mono -> poly cells,
    0.31 -> 0.29 (every cell called a defect) vs 0.68). A ``partial`` fine-tune's last block has the
    source's statistics already; on elpv it did better without re-anchoring (poly balanced accuracy
    0.639 vs 0.609, one seed), hence ``--no-anchor``.
    With y = γ (x − μ) / σ + β and σ = sqrt(var + eps), the source statistics (μs, σs) give the same y
    with γ' = γ σs / σ and β' = β + γ (μs − μ) / σ. AdaBN then replaces (μs, σs) by the target's and keeps
    γ', β': target activations land where the source's were, layer by layer.
    """
    import torch

    layers = 0
    with torch.no_grad():
        for m in batchnorms(model):
            if id(m) not in stats or m.running_mean is None:
                continue
            mean_s, var_s = stats[id(m)]
            sd = (m.running_var + m.eps).sqrt()
            sd_s = (var_s + m.eps).sqrt()
            if m.affine:
                m.bias.add_(m.weight * (mean_s - m.running_mean) / sd)
                m.weight.mul_(sd_s / sd)
            else:  # no affine pair to absorb the change: the statistics stay as they are
                continue
            m.running_mean.copy_(mean_s)
            m.running_var.copy_(var_s)
            layers += 1
    return layers


def adabn(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str = "cpu", *,
          anchor: tuple[Path, list[Sample]] | None = None, limit: int = 512, seed: int = 0, batch_size: int = 32,
          quiet: bool = True) -> dict[str, Any]:
    """AdaBN (Li et al. 2016, arXiv:1603.04779): every BatchNorm layer's running mean and variance
    become those of ``samples`` (up to ``limit``, a random subset), in place; returns the record.

    The model runs without gradients, in eval mode except for the BatchNorm layers, so each layer is
    normalised by the target statistics of the layers before it, as in the paper. The statistics are
    the average over all images (each batch weighted by its size: torch's ``momentum=None`` weights
    batches equally, which over-weights a small last batch). With ``anchor`` (source images: root,
    samples), the layers are first re-anchored on them (``anchor_batchnorm``). No weight changes
    except that function-preserving re-anchoring. The model is left in eval mode on the CPU.
    """
    import random

    t0 = time.perf_counter()
    bns = batchnorms(model)
    if not bns:
        log.warning("the model has no BatchNorm layer: AdaBN changes nothing")
    record: dict[str, Any] = {"batchnorm_layers": len(bns), "anchor": None}
    if anchor is not None and bns:
        chosen = random.Random(seed).sample(anchor[1], min(limit, len(anchor[1])))
        stats, n = input_statistics(model, anchor[0], chosen, pre, device, batch_size, quiet)
        record["anchor"] = {"images": n, "root": str(anchor[0]), "layers": anchor_batchnorm(model, stats),
                            "what": "the fine-tune's training images (split.json)"}
    # Shuffled: statistics averaged over batches of one kind of image miss the variance between kinds.
    chosen = random.Random(seed).sample(samples, min(limit, len(samples)))
    seen = estimate_statistics(model, root, chosen, pre, device, batch_size, quiet, "AdaBN (unlabelled images)")
    if not seen and bns:
        from .errors import DataError

        raise DataError(f"none of the unlabelled images under {root} can be read any more")
    return record | {"images": seen, "statistics": "average over the images (batches weighted by size)",
                     "preprocessing": "evaluation (no augmentation)", "seconds": time.perf_counter() - t0}
