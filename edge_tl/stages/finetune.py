"""``edge-tl finetune``: ImageFolder + pretrained backbone -> ``RUN/finetune/``."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..checkpoint import MODEL_FILE, save_state
from ..data import ImageFolder, class_counts, scan_image_folder, split_to_json, stratified_split
from ..errors import ConfigError, DataError
from ..manifest import write_json, write_manifest
from ..models import build_model, count_blocks, preprocessing_for
from ..preprocess import RESIZE_MODES, Preprocess, crop_loss
from ..rundir import RunDir
from ..weights import resolve_weights

log = logging.getLogger("edge_tl")

# Past this share of each image lost to the centre crop (a square loses 23 % at 256/224; a 4:3 frame
# 43 %), ``--resize auto`` letterboxes instead.
AUTO_LETTERBOX_LOSS = 0.45


def choose_resize(folder: ImageFolder, samples: list, pre: Preprocess, resize: str) -> tuple[str, dict[str, Any]]:
    """The resize mode to train with, and why: ``auto`` keeps torchvision's ``shorter`` recipe unless the
    centre crop would throw away a median of more than ``AUTO_LETTERBOX_LOSS`` of each image (elongated
    parts), then ``letterbox`` (the whole part, its shape kept)."""
    if resize not in ("auto", *RESIZE_MODES):
        raise ConfigError(f"unknown --resize {resize!r}; choose auto, {', '.join(RESIZE_MODES)}")
    losses = []
    for s in samples[:: max(1, len(samples) // 500)]:  # headers only, a few hundred suffice
        try:
            with Image.open(folder.root / s.path) as im:
                losses.append(crop_loss(*im.size, pre.resize, pre.crop))
        except Exception:  # noqa: BLE001 - the scan already recorded unreadable files
            continue
    median = float(np.median(losses)) if losses else 0.0
    info = {"median_centre_crop_loss": median, "max_centre_crop_loss": float(max(losses, default=0.0)),
            "requested": resize}
    mode = resize
    if resize == "auto":
        mode = "letterbox" if median > AUTO_LETTERBOX_LOSS else "shorter"
        info["reason"] = (f"the centre crop would drop a median {median:.0%} of each image "
                          f"({'over' if mode == 'letterbox' else 'within'} {AUTO_LETTERBOX_LOSS:.0%})")
    elif resize == "shorter" and median > AUTO_LETTERBOX_LOSS:
        log.warning("--resize shorter drops a median %.0f%% of each image (elongated parts); "
                    "--resize letterbox or full keeps the whole part", median * 100)
    return mode, info


def weights_preprocessing(arch: str, source: dict[str, Any], input_size: int | None) -> Preprocess:
    """The preprocessing the resolved weights expect, at ``input_size`` when given (the shorter-side
    resize keeps the weights' resize/crop ratio). Raises ConfigError outside 32..1024 pixels."""
    pre = preprocessing_for(arch, source.get("entry"))
    if input_size is None:
        return pre
    if not 32 <= input_size <= 1024:
        raise ConfigError(f"--input-size must be between 32 and 1024 pixels, got {input_size}")
    return dataclasses.replace(pre, crop=input_size, resize=round(input_size * pre.resize / pre.crop))


def finetune(data_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
             val_fraction: float = 0.2, train_cfg: Any = None, resize: str = "shorter",
             input_size: int | None = None) -> dict[str, Any]:
    """Fine-tune ``arch`` on ``data_dir`` and write ``out/finetune/``; returns its manifest.

    ``resize``: how an image becomes the model's square input (``Preprocess.resize_mode``: shorter,
    full, letterbox) or ``auto`` (``choose_resize``); recorded in the preprocessing contract, so
    export, calibration, bench and the device runtime all do the same. ``input_size``: the square
    input's side in pixels instead of the weights' own (224 for the ImageNet models; the ``shorter``
    resize keeps the weights' resize/crop ratio, 256/224). Everything that can be wrong
    with the input (data, arch, weights, options) is checked before training starts, and nothing is
    written until training has finished.
    """
    from ..training import TrainConfig, fit, init_distributed

    cfg: TrainConfig = train_cfg or TrainConfig()
    if cfg.mode not in ("linear", "partial", "full"):
        raise ConfigError(f"unknown --mode {cfg.mode!r}; choose linear, partial or full")
    if cfg.resolved_epochs(cached=True) < 1:
        raise ConfigError("--epochs must be at least 1")
    from ..manifest import check_writable  # --out is checked before the scan and training, not after

    check_writable(out)
    folder = scan_image_folder(data_dir)
    train, val = stratified_split(folder.samples, val_fraction, cfg.seed)
    if not val:
        raise DataError(f"{data_dir}: too few images for a validation split (every class needs ≥ 2)")
    state, source = resolve_weights(arch, weights)
    pre = weights_preprocessing(arch, source, input_size)
    mode, resize_info = choose_resize(folder, train, pre, resize)
    pre = dataclasses.replace(pre, resize_mode=mode)
    if resize == "auto":
        log.info("resize: %s (%s)", mode, resize_info["reason"])
    model = build_model(arch, len(folder.classes), state, seed=cfg.seed)
    if cfg.mode == "partial" and not 1 <= cfg.unfreeze <= count_blocks(model, arch):
        raise ConfigError(f"--unfreeze must be between 1 and {count_blocks(model, arch)} for {arch}")
    if cfg.views < 1:
        raise ConfigError("--views must be at least 1")

    started = time.time()
    result = fit(model, arch, folder.root, folder.classes, train, val, pre, cfg)
    if not init_distributed(cfg.device).main:
        return {}
    run = RunDir(Path(out))
    skipped = folder.skipped + result.skipped_during_training
    from ..manifest import staged_folder

    with staged_folder(run.finetune) as tmp:
        save_state(model, tmp / MODEL_FILE)
        write_json(tmp / "split.json", split_to_json(folder, train, val, cfg.seed, val_fraction))
        manifest = write_manifest(
            tmp, "finetune", files=[MODEL_FILE, "split.json"],
            arch=arch, classes=folder.classes, preprocessing=pre.to_dict(), structure=None,
            weights=source, mode=cfg.mode, train_config=asdict(cfg),
            resize=resize_info,
            data={"root": str(folder.root.resolve()), "n_images": len(folder.samples),
                  "train_per_class": class_counts(train, len(folder.classes)),
                  "val_per_class": class_counts(val, len(folder.classes)), "skipped": skipped},
            metrics={"val_top1": result.val["top1"], "val_balanced_accuracy": result.val["balanced_accuracy"],
                     "per_class_recall": result.val["per_class_recall"],
                     "confusion": result.val["confusion"], "best_epoch": result.best_epoch,
                     "history": result.history},
            timings={"started": started, "train_seconds": result.seconds,
                     "seconds_per_epoch": result.seconds_per_epoch, "device": result.device,
                     "world_size": result.world_size},
        )
    return manifest
