"""Decode once: a training set that fits in memory is decoded a single time into uint8 tensors, and each
epoch's augmentation runs as tensor ops on the training device.

The per-epoch loader (``training.ImageDataset``) decodes and augments every image again on the CPU
every epoch: on a GPU that starves the chip (issue 25: ~420 images/s on an H200 for mobilenet_v2), and
the product's data sets are small (hundreds to a few thousand images). Here:

- a training image is kept as the frame its augmentation crops from: for ``shorter`` the image with its
  short side at ``pre.resize`` (torchvision's RandomResizedCrop crops the whole image; the crop's area
  share and aspect do not depend on the resolution), for ``full`` / ``letterbox`` the square the model
  sees (``pre.resize_and_crop``, as the loader does);
- a validation image is kept as its evaluation crop, so validation logits equal the loader's;
- each epoch draws a random-resized crop (Szegedy et al. 2015, torchvision's ``get_params`` rule: area
  share in ``aug_scale``, log-uniform aspect 3/4-4/3, ten tries, else the centre) and a horizontal flip
  per image, and resamples it with ``torchvision.ops.roi_align`` (bilinear, averaging several points per
  output pixel when it shrinks, as an antialiased resize does).

Frames are stored padded to the largest one; ``sizes`` holds each one's own height and width.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Sample
from .preprocess import Preprocess, load_image

DEFAULT_CACHE_MB = 2048  # decoded uint8 frames kept in memory at the most; larger sets use the loader
RATIO = (3 / 4, 4 / 3)


@dataclass
class DecodedSet:
    """``images`` (N, 3, H, W) uint8, padded; ``sizes`` (N, 2) each frame's own (height, width);
    ``labels`` (N,); ``kept``: the positions in the sample list of the N images that decoded; ``bad``:
    "path: reason" of the ones that did not."""

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    kept: list[int]
    bad: list[str]

    @property
    def nbytes(self) -> int:
        return self.images.numel()


def frame(img: Any, pre: Preprocess, train: bool) -> np.ndarray:
    """The HxWx3 uint8 frame kept for ``img`` (see the module docstring)."""
    if not train or pre.resize_mode != "shorter":
        return np.asarray(pre.resize_and_crop(img), dtype=np.uint8)
    return np.asarray(pre.resize_short_side(img), dtype=np.uint8)


def estimated_mb(root: Path, samples: list[Sample], pre: Preprocess, train: bool, probe: int = 16) -> float:
    """Memory the decoded frames of ``samples`` would take (MB), from the headers of up to ``probe`` files:
    crop² per image for an evaluation or full/letterbox frame, the largest short-side-resized frame
    for ``shorter`` training frames (they are padded to it)."""
    from PIL import Image

    if not samples:
        return 0.0
    side = pre.crop * pre.crop
    if train and pre.resize_mode == "shorter":
        areas = []
        for s in samples[:: max(1, len(samples) // probe)][:probe]:
            try:
                with Image.open(root / s.path) as im:
                    w, h = im.size
            except Exception:  # noqa: BLE001 - unreadable files are found and named when decoding
                continue
            areas.append(pre.resize * int(pre.resize * max(w, h) / min(w, h)))
        side = max(areas, default=pre.resize * pre.resize) * 1.25  # other files may be longer: a margin
    return 3 * side * len(samples) / 2**20


def decode(root: Path, samples: list[Sample], pre: Preprocess, train: bool, workers: int = 4) -> DecodedSet:
    """Decode every image of ``samples`` once (``workers`` threads; Pillow releases the GIL)."""

    def one(s: Sample) -> np.ndarray | str:
        try:
            return frame(load_image(root / s.path), pre, train)
        except Exception as exc:  # noqa: BLE001 - one bad file is skipped and named, as the loader does
            return f"{s.path}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        frames = list(pool.map(one, samples))
    kept = [i for i, f in enumerate(frames) if not isinstance(f, str)]
    bad = [f for f in frames if isinstance(f, str)]
    arrays = [frames[i] for i in kept]
    h = max((a.shape[0] for a in arrays), default=pre.crop)
    w = max((a.shape[1] for a in arrays), default=pre.crop)
    images = torch.zeros((len(arrays), 3, h, w), dtype=torch.uint8)
    for j, a in enumerate(arrays):
        ah, aw = a.shape[:2]
        images[j, :, :ah, :aw] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        # Edge pixels repeated into the padding: roi_align's bilinear taps at a frame's last row or
        # column then read the frame, not zeros.
        images[j, :, :ah, aw:] = images[j, :, :ah, aw - 1:aw]
        images[j, :, ah:, :] = images[j, :, ah - 1:ah, :]
    sizes = torch.tensor([a.shape[:2] for a in arrays], dtype=torch.float32).reshape(-1, 2)
    labels = torch.tensor([samples[i].label for i in kept], dtype=torch.long)
    return DecodedSet(images, sizes, labels, kept, bad)


def crop_boxes(sizes: torch.Tensor, scale: tuple[float, float], gen: torch.Generator,
               tries: int = 10) -> torch.Tensor:
    """(N, 4) random-resized-crop boxes x1, y1, x2, y2 in pixels, one per frame of ``sizes`` (N, 2):
    torchvision's ``RandomResizedCrop.get_params`` rule, vectorised (the first of ``tries`` draws that
    fits, else the centre crop of the frame clamped to the aspect range)."""
    n = len(sizes)
    h, w = sizes[:, 0:1], sizes[:, 1:2]
    area = h * w
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n, tries).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=gen)
    aspect = torch.exp(log_r)
    cw = torch.round(torch.sqrt(target * aspect))
    ch = torch.round(torch.sqrt(target / aspect))
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0)[:, None]
    cw, ch = cw.gather(1, pick)[:, 0], ch.gather(1, pick)[:, 0]
    # The fallback: the whole frame, cut to the aspect range, centred.
    in_ratio = w[:, 0] / h[:, 0]
    fw = torch.where(in_ratio < RATIO[0], w[:, 0], torch.where(in_ratio > RATIO[1], torch.round(h[:, 0] * RATIO[1]),
                                                                  w[:, 0]))
    fh = torch.where(in_ratio < RATIO[0], torch.round(w[:, 0] / RATIO[0]), h[:, 0])
    use = first >= 0
    cw, ch = torch.where(use, cw, fw), torch.where(use, ch, fh)
    x1 = torch.where(use, torch.floor(torch.rand(n, generator=gen) * (w[:, 0] - cw + 1)), (w[:, 0] - cw) // 2)
    y1 = torch.where(use, torch.floor(torch.rand(n, generator=gen) * (h[:, 0] - ch + 1)), (h[:, 0] - ch) // 2)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)


def normalise(frames: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW -> float32, scaled and normalised as ``Preprocess.normalize`` does."""
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=frames.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=frames.device).view(1, -1, 1, 1)
    return (frames.float() * np.float32(pre.scale) - mean) / std


def augmented_batch(data: DecodedSet, index: torch.Tensor, pre: Preprocess, scale: tuple[float, float],
                    gen: torch.Generator, device: str) -> torch.Tensor:
    """The training batch of frames ``index``: a random-resized crop to ``pre.crop`` and a coin-flip
    horizontal flip each, normalised; float32 (B, 3, crop, crop) on ``device``. The draws come from
    ``gen`` (a CPU generator), so a seed gives the same batches on every device."""
    from torchvision.ops import roi_align

    boxes = crop_boxes(data.sizes[index], scale, gen)
    flip = torch.rand(len(index), generator=gen) < 0.5
    frames = data.images[index].to(device, non_blocking=True).float()
    rois = torch.cat([torch.arange(len(index), dtype=torch.float32)[:, None], boxes], 1).to(device)
    out = roi_align(frames, rois, output_size=(pre.crop, pre.crop), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    out = torch.where(flip.to(device)[:, None, None, None], out.flip(-1), out)
    return normalise(out, pre)


__all__ = ["DEFAULT_CACHE_MB", "DecodedSet", "augmented_batch", "crop_boxes", "decode", "estimated_mb", "frame",
           "normalise"]
