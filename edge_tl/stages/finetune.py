"""``edge-tl finetune``: ImageFolder + pretrained backbone -> ``RUN/finetune/``."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..checkpoint import MODEL_FILE, save_state
from ..data import class_counts, scan_image_folder, split_to_json, stratified_split
from ..errors import ConfigError, DataError
from ..manifest import write_json, write_manifest
from ..models import build_model, count_blocks, preprocessing_for
from ..rundir import RunDir
from ..weights import resolve_weights

log = logging.getLogger("edge_tl")


def finetune(data_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
             val_fraction: float = 0.2, train_cfg: Any = None) -> dict[str, Any]:
    """Fine-tune ``arch`` on ``data_dir`` and write ``out/finetune/``; returns its manifest.

    Everything that can be wrong with the input (data, arch, weights, options) is checked before
    training starts, and nothing is written until training has finished.
    """
    from ..training import TrainConfig, fit, init_distributed

    cfg: TrainConfig = train_cfg or TrainConfig()
    if cfg.mode not in ("linear", "partial", "full"):
        raise ConfigError(f"unknown --mode {cfg.mode!r}; choose linear, partial or full")
    if cfg.resolved_epochs() < 1:
        raise ConfigError("--epochs must be at least 1")
    folder = scan_image_folder(data_dir)
    train, val = stratified_split(folder.samples, val_fraction, cfg.seed)
    if not val:
        raise DataError(f"{data_dir}: too few images for a validation split (every class needs ≥ 2)")
    state, source = resolve_weights(arch, weights)
    pre = preprocessing_for(arch, source.get("entry"))
    model = build_model(arch, len(folder.classes), state)
    if cfg.mode == "partial" and not 1 <= cfg.unfreeze <= count_blocks(model, arch):
        raise ConfigError(f"--unfreeze must be between 1 and {count_blocks(model, arch)} for {arch}")

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
            data={"root": str(folder.root.resolve()), "n_images": len(folder.samples),
                  "train_per_class": class_counts(train, len(folder.classes)),
                  "val_per_class": class_counts(val, len(folder.classes)), "skipped": skipped},
            metrics={"val_top1": result.val["top1"], "per_class_recall": result.val["per_class_recall"],
                     "confusion": result.val["confusion"], "best_epoch": result.best_epoch,
                     "history": result.history},
            timings={"started": started, "train_seconds": result.seconds,
                     "seconds_per_epoch": result.seconds_per_epoch, "device": result.device,
                     "world_size": result.world_size},
        )
    return manifest
