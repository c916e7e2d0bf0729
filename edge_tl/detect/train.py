"""``finetune --task detect``: a detection folder + an ImageNet backbone -> ``RUN/finetune/``.

Trains the detector of :mod:`.model` through the product's one batch loop (``training.optimise``) and one
epoch loop (``training.run_epochs``), with its AdamW groups (``training.param_groups``) and its cosine
schedule; early stopping keeps the epoch with the best validation mAP@0.5 (ties: the better mAP@0.5:0.95).

Modes, as for classifiers:

- ``linear``: the whole backbone frozen (BatchNorm statistics included); its two taps are computed once
  per image and cached view, the head trains on them.
- ``partial``: the blocks after the stride-16 tap (``unfreeze`` blocks: by default all those, e.g. 5 of
  mobilenet_v2's 19) and the head train; the frozen prefix runs once per image and cached view.
- ``full``: everything trains, end to end, on freshly augmented images every epoch.

Cached views (``views``): view 0 is the plain image, each other one a random crop and flip drawn once
(:func:`augment`), its boxes moved with it; each epoch draws one view per image. The frozen part runs on
the fastest engine here (``features.PrefixEngine``: ONNX Runtime on a CPU). Images are decoded once, at
the input size (the preprocessing's resize: ``full`` squeezes the frame, ``letterbox`` pads it), and the
boxes moved into input pixels; figures are computed in the original image's pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..errors import ConfigError, DataError
from ..progress import progress
from ..runtime.nms import (
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    Detections,
    graph_detections,
    to_image_pixels,
    to_input_pixels,
)
from .data import Annotated, DetectionSet, class_counts, read_detection_set, split_images
from .evaluate import detection_metrics
from .model import DetectorSpec, box_statistics, build_detector, detection_loss, prefix_and_tail, stride_taps

log = logging.getLogger("edge_tl")

MODES = ("linear", "partial", "full")
RESIZE = ("full", "letterbox")  # the centre crop ("shorter") would cut boxes off; detection keeps the frame
DEFAULT_EPOCHS = {"linear": 30, "partial": 30, "full": 20}
DEFAULT_LR = {"linear": 3e-3, "partial": 1e-3, "full": 5e-4}
DEFAULT_VIEWS = 3
PATIENCE = 6
WEIGHT_DECAY = 1e-4
BACKBONE_LR_SCALE = 0.1  # unfrozen pretrained blocks move this much more gently than the new head
CROP_SCALE = (0.6, 1.0)  # side of the random square crop, as a share of the input's side
MIN_VISIBLE_PX = 2.0  # a box cut by the crop stays when at least this much of it (input pixels) is left
EVAL_BATCH = 16


@dataclass
class Frames:
    """Images decoded once at the input size: ``images`` (N, S, S, 3) uint8; ``boxes`` / ``labels`` per
    image in input pixels; ``items`` the annotations they came from (original pixels)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    items: list[Annotated]


def decode_frames(root: Path, items: list[Annotated], pre: Any, quiet: bool = True, what: str = "decode") -> Frames:
    """Decode ``items`` (paths under ``root``) through ``pre``'s resize into one uint8 array and move their
    boxes into input pixels. DataError naming the file when one no longer decodes."""
    from ..preprocess import load_image

    s = pre.crop
    images = np.zeros((len(items), s, s, 3), np.uint8)
    boxes = []
    with progress(quiet) as bar:
        task = bar.add_task(what, total=len(items), info="")
        for i, a in enumerate(items):
            try:
                img = load_image(root / a.path)
            except Exception as exc:
                raise DataError(f"{a.path} no longer decodes ({type(exc).__name__}: {exc}); was the folder "
                                "changed while training?") from exc
            images[i] = np.asarray(pre.resize_and_crop(img), np.uint8)
            boxes.append(to_input_pixels(a.boxes, (a.width, a.height), s, pre.resize_mode))
            bar.advance(task)
    return Frames(images, boxes, [a.labels for a in items], items)


def augment(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            scale: tuple[float, float] = CROP_SCALE, interpolation: str = "bilinear",
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box-aware augmentation of an (S, S, 3) uint8 frame and its boxes (N, 4) in its pixels.

    A random square crop of side ``scale`` × S (uniform) is scaled back to S × S (scale jitter: zoom in
    up to 1/scale[0]), then the frame is flipped left-right with probability 0.5. The crop is placed, when
    it can be, so that every box's centre stays inside it. Boxes are moved with the frame and clipped to
    it; a box keeps its place when at least ``MIN_VISIBLE_PX`` of it is left in both directions (a defect
    cut by the border is still that defect), the others leave (their visible part is a sliver).
    Returns (frame, boxes (M, 4) float32, labels (M,))."""
    from ..preprocess import _INTERP

    s = image.shape[0]
    side = rng.uniform(*scale) * s
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    lo_x = lo_y = 0.0
    hi_x = hi_y = s - side
    if len(boxes):
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        kx = (max(0.0, cx.max() - side), min(s - side, cx.min()))
        ky = (max(0.0, cy.max() - side), min(s - side, cy.min()))
        if kx[0] <= kx[1] and ky[0] <= ky[1]:
            (lo_x, hi_x), (lo_y, hi_y) = kx, ky
    x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    img = Image.fromarray(image).resize((s, s), _INTERP[interpolation], box=(x0, y0, x0 + side, y0 + side))
    f = s / side
    b = (boxes - np.array([x0, y0, x0, y0], np.float32)) * f
    b = b.clip(0, s)
    keep = ((b[:, 2] - b[:, 0]) >= MIN_VISIBLE_PX) & ((b[:, 3] - b[:, 1]) >= MIN_VISIBLE_PX)
    b, labels = b[keep], np.asarray(labels)[keep]
    out = np.asarray(img, np.uint8)
    if rng.random() < 0.5:
        out = out[:, ::-1]
        b = np.stack([s - b[:, 2], b[:, 1], s - b[:, 0], b[:, 3]], 1) if len(b) else b
    return np.ascontiguousarray(out), b.astype(np.float32).reshape(-1, 4), labels


def normalise(images: np.ndarray, pre: Any) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, scaled and normalised as ``pre`` (Preprocess.normalize)."""
    x = images.astype(np.float32) * np.float32(pre.scale)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def pad_targets(boxes: list[np.ndarray], labels: list[np.ndarray], width: int = 1) -> torch.Tensor:
    """(B, M, 5): x1 y1 x2 y2 label per box, padded with label -1 (what :func:`.model.detection_loss` takes);
    M is the most boxes of an image, at least ``width``."""
    m = max([len(b) for b in boxes] + [width])
    out = np.zeros((len(boxes), m, 5), np.float32)
    out[:, :, 4] = -1
    for i, (b, y) in enumerate(zip(boxes, labels, strict=True)):
        out[i, :len(b), :4], out[i, :len(b), 4] = b, y
    return torch.from_numpy(out)


def detections_from(boxes: np.ndarray, scores: np.ndarray, items: list[Annotated], input_size: int,
                    resize_mode: str, **nms_args: Any) -> list[Detections]:
    """The graph's outputs (B, K, 4) / (B, K, C) for ``items`` -> NMS'd detections in each original image's
    pixels (``graph_detections`` and :func:`image_detections`)."""
    return image_detections(graph_detections([boxes, scores], False, **nms_args), items, input_size, resize_mode)


def image_detections(dets: list[Detections], items: list[Annotated], input_size: int,
                     resize_mode: str) -> list[Detections]:
    """Detections in input pixels (``runtime.nms.graph_detections``), one per item -> in each original image's
    pixels (``to_image_pixels``), in place; returns them."""
    for d, a in zip(dets, items, strict=True):
        d.boxes = to_image_pixels(d.boxes, (a.width, a.height), input_size, resize_mode)
    return dets


def truths_of(items: list[Annotated]) -> list[dict[str, np.ndarray]]:
    return [{"boxes": a.boxes, "labels": a.labels} for a in items]


@torch.no_grad()
def predict_frames(det: nn.Module, frames: Frames, pre: Any, device: str = "cpu",
                   batch: int = EVAL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """The detector's graph outputs on decoded frames: boxes (N, K, 4), scores (N, K, C), float32."""
    det.eval()
    bs, ss = [], []
    for i in range(0, len(frames.images), batch):
        b, s = det(normalise(frames.images[i:i + batch], pre).to(device))
        bs.append(b.float().cpu().numpy())
        ss.append(s.float().cpu().numpy())
    k, c = det.spec.locations, det.spec.num_classes
    return (np.concatenate(bs) if bs else np.zeros((0, k, 4), np.float32),
            np.concatenate(ss) if ss else np.zeros((0, k, c), np.float32))


def _check_options(mode: str, resize: str, views: int, epochs: int | None, batch_size: int, input_size: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown --mode {mode!r}; choose {', '.join(MODES)}")
    if resize not in RESIZE:
        raise ConfigError(f"--resize {resize!r} does not go with --task detect (a centre crop cuts boxes off); "
                          f"choose {' or '.join(RESIZE)}")
    if views < 1:
        raise ConfigError(f"--views must be at least 1, got {views}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if not 64 <= input_size <= 1024 or input_size % 32:
        raise ConfigError(f"--input-size for detection must be a multiple of 32 between 64 and 1024, got {input_size}")


def fit_detector(data_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
                 mode: str = "partial", epochs: int | None = None, input_size: int = 320, batch_size: int = 16,
                 lr: float | None = None, seed: int = 0, device: str = "auto", format: str = "auto",  # noqa: A002
                 quiet: bool = True, val_fraction: float = 0.2, unfreeze: int | None = None,
                 views: int = DEFAULT_VIEWS, patience: int | None = PATIENCE, resize: str = "full",
                 engine: str = "auto", classes: list[str] | None = None) -> dict[str, Any]:
    """Train a detector on the detection folder ``data_dir`` (Pascal VOC, COCO or YOLO: ``format``) and write
    ``out/finetune/`` (``model.pt``, ``split.json``, ``manifest.json``); return the manifest.

    ``mode`` (module docstring); ``unfreeze``: blocks trained in ``partial`` (default: those after the
    stride-16 tap); ``epochs``: default 30 (linear, partial), 20 (full); early stopping after ``patience``
    epochs without a better validation mAP@0.5 (None: never). ``input_size``: the square input in pixels
    (a multiple of 32). ``lr``: the head's AdamW rate (default 3e-3 linear, 1e-3 partial, 5e-4 full; trained
    backbone blocks get a tenth). ``views``: cached views per training image (linear, partial). ``seed``
    fixes the split, the head's initialisation, the views and the batch order. ``resize``: ``full`` or
    ``letterbox``. Raises ConfigError / DataError (one line) before any work for bad options or data;
    nothing is written until training has finished.
    """
    from ..manifest import check_writable
    from ..stages.finetune import weights_preprocessing
    from ..training import resolve_device
    from ..weights import resolve_weights

    _check_options(mode, resize, views, epochs, batch_size, input_size)
    check_writable(out)
    started = time.time()
    ds = read_detection_set(data_dir, format, classes)
    digests = image_digests(ds.root, [a.path for a in ds.images])  # as read: an edit during training counts
    train_items, val_items = split_images(ds.images, val_fraction, seed)
    if not any(len(a.labels) for a in train_items):
        raise DataError(f"the training split of {data_dir} holds no box (seed {seed}); add annotated images")
    state, source = resolve_weights(arch, weights)
    pre = dataclasses.replace(weights_preprocessing(arch, source, input_size), resize_mode=resize)
    device = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)

    train = decode_frames(ds.root, train_items, pre, quiet, "decode (train)")
    val = decode_frames(ds.root, val_items, pre, quiet, "decode (val)")
    sizes = np.concatenate([b[:, 2:] - b[:, :2] for b in train.boxes])
    stats = box_statistics(sizes, input_size)
    from ..models import build_backbone, runnable_blocks

    cut16, cut32, channels = stride_taps(runnable_blocks(build_backbone(arch, state), arch), input_size)
    spec = DetectorSpec(arch, len(ds.classes), input_size, cut16, cut32, channels, stats["boundary"],
                        box_stats=stats)
    det = build_detector(spec, state, seed)
    cut = _frozen_blocks(mode, unfreeze, spec)
    planned = epochs or DEFAULT_EPOCHS[mode]
    lr = lr if lr is not None else DEFAULT_LR[mode]

    fit = _Fit(det, pre, device, cut, batch_size, lr, seed, quiet, planned, patience, views, engine)
    history, best, cache_seconds = fit.run(train, val)
    train_seconds = time.time() - started

    det.to("cpu").eval()
    t0 = time.perf_counter()
    vb, vs = predict_frames(det, val, pre)
    val_dets = detections_from(vb, vs, val_items, input_size, resize)
    eval_seconds = time.perf_counter() - t0
    metrics = detection_metrics(val_dets, truths_of(val_items), ds.classes)
    speeds = [h["train_images_per_s"] for h in history if h.get("train_images_per_s")]
    return _write_run(
        Path(out), det, ds, train_items, val_items, seed, val_fraction, digests,
        task="detect", arch=arch, classes=ds.classes, weights=source, mode=mode,
        preprocessing=pre.to_dict(), detect=spec.to_dict(),
        head={"method": "FCOS-style anchor-free (Tian et al., 2019): focal loss, GIoU, centre-ness",
              "convolutions": "depthwise-separable (MobileNet / SSDLite, Sandler et al., 2018)",
              "taps": {"stride_16": f"backbone blocks [0, {cut16})", "stride_32": f"blocks [{cut16}, {cut32})",
                       "channels": list(channels)},
              "width": spec.width, "tower_depth": 2, "locations": spec.locations, "centre_radius": spec.radius},
        outputs={"boxes": "(B, K, 4) x1 y1 x2 y2 in input pixels, clipped to the input",
                 "scores": "(B, K, C) sqrt(sigmoid(class) * sigmoid(centre-ness))",
                 "decoding": "inside the graph", "nms": "outside the graph: edge_tl.runtime.nms.nms (numpy)"},
        postprocess={"score_threshold": SCORE_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
                     "max_detections": MAX_DETECTIONS, "per_class": True},
        data={"root": str(ds.root.resolve()), "format": ds.format, "n_images": len(ds.images), "n_boxes": ds.n_boxes,
              "class_counts": {"train": class_counts(train_items, ds.classes),
                               "val": class_counts(val_items, ds.classes)},
              "issues": ds.issues, "clipped_boxes": ds.clipped},
        metrics={"map50": metrics["map50"], "map50_95": metrics["map50_95"],
                 "per_class_ap50": metrics["per_class_ap50"], "val_images": metrics["images"],
                 "val_boxes": metrics["boxes"], "source": metrics["source"],
                 "epochs": {"best": best, "run": len([h for h in history if h["epoch"] > 0]), "planned": planned},
                 "history": history},
        train_config={"mode": mode, "epochs": epochs, "unfreeze": spec.cut32 - cut, "frozen_blocks": cut,
                      "input_size": input_size, "batch_size": batch_size, "lr": lr,
                      "backbone_lr_scale": BACKBONE_LR_SCALE, "weight_decay": WEIGHT_DECAY, "seed": seed,
                      "views": views if cut else None, "patience": patience, "val_fraction": val_fraction,
                      "augmentation": {"crop_side": list(CROP_SCALE), "hflip": 0.5, "min_visible_px": MIN_VISIBLE_PX},
                      "device": device, "engine": fit.engine_name},
        timings={"started": started, "train_seconds": train_seconds, "cache_seconds": cache_seconds,
                 "seconds_per_epoch": (train_seconds - cache_seconds) / max(1, len(history)),
                 "train_images_per_s": float(np.median(speeds)) if speeds else None,
                 "val_images_per_s": len(val_items) / eval_seconds if eval_seconds > 0 else None,
                 "val_images_per_s_note": "torch fp32, batch 16, NMS included, on this machine",
                 "device": device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()})


def _frozen_blocks(mode: str, unfreeze: int | None, spec: DetectorSpec) -> int:
    """How many leading backbone blocks stay frozen (and are cached) for ``mode``."""
    if mode == "linear":
        return spec.cut32
    if mode == "full":
        return 0
    n = spec.cut32 - spec.cut16 if unfreeze is None else unfreeze
    if not 1 <= n < spec.cut32:
        raise ConfigError(f"--unfreeze must be between 1 and {spec.cut32 - 1} for {spec.arch}, got {n}")
    return spec.cut32 - n


class _Raw(nn.Module):
    """``det.raw`` as a module (what ``optimise`` calls in end-to-end training)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> Any:
        return self.det.raw(x)


class _Fit:
    """One detector fit: the cached (frozen prefix) or end-to-end path around ``optimise`` / ``run_epochs``."""

    def __init__(self, det: Any, pre: Any, device: str, cut: int, batch_size: int, lr: float, seed: int,
                 quiet: bool, epochs: int, patience: int | None, views: int, engine: str) -> None:
        self.det, self.pre, self.device, self.cut = det, pre, device, cut
        self.batch_size, self.lr, self.seed, self.quiet = batch_size, lr, seed, quiet
        self.epochs, self.patience, self.views, self.engine = epochs, patience, views, engine
        self.engine_name = "torch"
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def _views(self, frames: Frames, n: int) -> list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
        """``n`` views of ``frames``: the plain one, then augmented ones drawn from the fit's generator."""
        out = [(frames.images, frames.boxes, frames.labels)]
        for _ in range(n - 1):
            imgs, bxs, lbs = np.empty_like(frames.images), [], []
            for i in range(len(frames.images)):
                imgs[i], b, y = augment(frames.images[i], frames.boxes[i], frames.labels[i], self.rng,
                                        interpolation=self.pre.interpolation)
                bxs.append(b)
                lbs.append(y)
            out.append((imgs, bxs, lbs))
        return out

    def _cache(self, engine: Any, images: np.ndarray, dtype: torch.dtype, what: str) -> torch.Tensor:
        rows = []
        with progress(self.quiet) as bar:
            task = bar.add_task(what, total=len(images), info="")
            for i in range(0, len(images), 32):
                rows.append(engine(normalise(images[i:i + 32], self.pre)).to(dtype))
                bar.advance(task, len(images[i:i + 32]))
        return torch.cat(rows)

    def run(self, train: Frames, val: Frames) -> tuple[list[dict[str, Any]], int, float]:
        """Train; returns (history, best epoch (1-based), seconds spent caching)."""
        from ..training import Verdict, _schedule, optimise, param_groups, run_epochs

        det, device = self.det, self.device
        for p in det.parameters():
            p.requires_grad_(False)
        frozen = [det.blocks[i] for i in range(self.cut)]
        trained = [det.blocks[i] for i in range(self.cut, det.spec.cut32)] + [det.head]
        for m in trained:
            for p in m.parameters():
                p.requires_grad_(True)
        t0 = time.perf_counter()
        val_targets = pad_targets(val.boxes, val.labels)
        if self.cut:
            from ..features import PrefixEngine

            prefix, tail = prefix_and_tail(det, self.cut)
            engine = PrefixEngine(prefix, (3, det.spec.input_size, det.spec.input_size), device, self.engine)
            self.engine_name = engine.name
            views = self._views(train, self.views)
            cache = torch.stack([self._cache(engine, v[0], torch.float16 if self.views > 1 else torch.float32,
                                             f"cache (train, view {k + 1}/{len(views)}, {engine.name})")
                                 for k, v in enumerate(views)])
            # One width for every view: a batch mixes views, and a crop can drop boxes from one view only.
            width = max(len(b) for v in views for b in v[1]) if views else 1
            view_targets = [pad_targets(v[1], v[2], width) for v in views]
            val_in = self._cache(engine, val.images, torch.float32, f"cache (val, {engine.name})")
            net: nn.Module = tail
        else:
            net = _Raw(det)
            val_in = None
        cache_seconds = time.perf_counter() - t0
        det.to(device)
        params = [p for m in trained for p in m.parameters()]
        opt = torch.optim.AdamW(param_groups(params, det.head.parameters(), self.lr, BACKBONE_LR_SCALE),
                                weight_decay=WEIGHT_DECAY)
        n = len(train.images)
        steps = math.ceil(n / self.batch_size)
        sched = _schedule(opt, self.epochs * steps)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
            order = torch.randperm(n, generator=self.gen)
            if self.cut:
                pick = torch.randint(0, len(cache), (n,), generator=self.gen)
            for s in range(0, n, self.batch_size):
                b = order[s:s + self.batch_size]
                if self.cut:
                    v = pick[s:s + self.batch_size]
                    m = max(int((view_targets[int(k)][int(i), :, 4] >= 0).sum()) for k, i in zip(v, b, strict=True))
                    t = torch.stack([view_targets[int(k)][int(i), :max(m, 1)] for k, i in zip(v, b, strict=True)])
                    yield cache[v, b].float().to(device), t.to(device), None
                else:
                    aug = [augment(train.images[int(i)], train.boxes[int(i)], train.labels[int(i)], self.rng,
                                   interpolation=self.pre.interpolation) for i in b]
                    x = normalise(np.stack([a[0] for a in aug]), self.pre)
                    yield x.to(device), pad_targets([a[1] for a in aug], [a[2] for a in aug]).to(device), None

        def loss_of(out: Any, yb: torch.Tensor, _xb: torch.Tensor, _extra: Any) -> torch.Tensor:
            return detection_loss(det, out, yb)

        def one_epoch(_epoch: int) -> tuple[float, int]:
            net.train()
            for m in frozen:
                m.eval()  # frozen BatchNorm statistics stay ImageNet's
            return optimise(net, batches(), opt, sched, loss_of)

        def judge(_epoch: int, _seen: int) -> Verdict:
            net.eval()
            bs, ss, losses = [], [], []
            with torch.no_grad():
                for i in range(0, len(val.images), EVAL_BATCH):
                    x = (val_in[i:i + EVAL_BATCH] if val_in is not None
                         else normalise(val.images[i:i + EVAL_BATCH], self.pre)).to(device)
                    raw = net(x)
                    losses.append(float(detection_loss(det, raw, val_targets[i:i + EVAL_BATCH].to(device))) * len(x))
                    b, s = det.decode(*raw)
                    bs.append(b.float().cpu().numpy())
                    ss.append(s.float().cpu().numpy())
            dets = detections_from(np.concatenate(bs), np.concatenate(ss), val.items, det.spec.input_size,
                                   self.pre.resize_mode)
            m = detection_metrics(dets, truths_of(val.items), [str(k) for k in range(det.spec.num_classes)])
            map50, map5095 = m["map50"] or 0.0, m["map50_95"] or 0.0
            return Verdict(map50, {"val_map50": map50, "val_map50_95": map5095,
                                   "val_loss": sum(losses) / max(1, len(val.images))}, map5095)

        with progress(self.quiet) as bar:
            task = bar.add_task(f"train detector ({'cached ' if self.cut else ''}{self.epochs} epochs)",
                                total=self.epochs, info="")
            history, best = run_epochs(
                self.epochs, one_epoch, judge=judge, keep="best", saved=det, patience=self.patience,
                after=lambda epoch, entry: bar.update(task, advance=1, info=f"epoch {epoch} val mAP@0.5 "
                                                                            f"{entry['val_map50']:.3f}"))
        det.to("cpu")
        return history, best.epoch, cache_seconds


def image_digests(root: Path, paths: list[str], workers: int = 4) -> dict[str, str]:
    """sha256 of each image's bytes (relative path -> hex digest): ``split.json``'s ``sha256``, which export and
    bench check the validation images against (``data.verify_hashes``)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..manifest import sha256_file

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(lambda p: sha256_file(root / p), paths), strict=True))


def _write_run(out: Path, det: nn.Module, ds: DetectionSet, train: list[Annotated], val: list[Annotated], seed: int,
               val_fraction: float, digests: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Write ``out/finetune/`` (model.pt, split.json, manifest.json with ``fields``) in one staged step;
    ``digests``: the sha256 of every image (:func:`image_digests`)."""
    from ..checkpoint import MODEL_FILE, save_state
    from ..manifest import staged_folder, write_json, write_manifest
    from ..rundir import RunDir

    def rows(items: list[Annotated]) -> list[dict[str, Any]]:
        return [{"path": a.path, "size": [a.width, a.height], "boxes": np.round(a.boxes, 3).tolist(),
                 "labels": a.labels.tolist()} for a in items]

    split = {"root": str(ds.root.resolve()), "task": "detect", "format": ds.format, "classes": ds.classes,
             "seed": seed, "val_fraction": val_fraction, "train": rows(train), "val": rows(val),
             "skipped": ds.issues, "sha256": digests}
    run = RunDir(out)
    with staged_folder(run.finetune) as tmp:
        save_state(det, tmp / MODEL_FILE)
        write_json(tmp / "split.json", split)
        manifest = write_manifest(tmp, "finetune", files=[MODEL_FILE, "split.json"], **fields)
        run.eval_npz.unlink(missing_ok=True)  # the reference outputs of a replaced model
    return manifest
