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
from ..data import ImageFolder, class_counts, duplicate_summary, scan_image_folder, split_to_json, stratified_split
from ..errors import ConfigError, DataError
from ..manifest import write_json, write_manifest
from ..models import build_model, count_blocks, preprocessing_for
from ..preprocess import RESIZE_MODES, Preprocess, crop_loss, record_bit_depths
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


def _median(values: list[float | None]) -> float | None:
    """The median of the measured values (None where none was)."""
    got = [v for v in values if v is not None]
    return float(np.median(got)) if got else None


def weights_preprocessing(arch: str, source: dict[str, Any], input_size: int | None,
                          resize: str | None = None) -> Preprocess:
    """The preprocessing the resolved weights expect, at ``input_size`` when given (the shorter-side
    resize keeps the weights' resize/crop ratio). Raises ConfigError outside 32..1024 pixels.

    An earlier run's backbone (``--weights run:``, source kind ``run``) comes with its run's contract,
    which the new run keeps whole (size, resize mode, interpolation, normalisation): a backbone trained
    on one contract must not silently get another. An ``input_size`` or ``resize`` (``auto`` and None
    excepted: they take the source's) that differs from it is a ConfigError.
    """
    if source.get("kind") == "run":
        return _source_preprocessing(source, input_size, resize)
    pre = preprocessing_for(arch, source.get("entry"))
    if input_size is None:
        return pre
    if not 32 <= input_size <= 1024:
        raise ConfigError(f"--input-size must be between 32 and 1024 pixels, got {input_size}")
    return dataclasses.replace(pre, crop=input_size, resize=round(input_size * pre.resize / pre.crop))


def _source_preprocessing(source: dict[str, Any], input_size: int | None, resize: str | None) -> Preprocess:
    """The contract of the run a ``--weights run:`` backbone comes from; conflicting options are refused."""
    if resize not in (None, "auto", *RESIZE_MODES):
        raise ConfigError(f"unknown --resize {resize!r}; choose auto, {', '.join(RESIZE_MODES)}")
    pre = Preprocess.from_dict(source["preprocessing"])
    conflicts = []
    if input_size is not None and input_size != pre.crop:
        conflicts.append(f"--input-size {input_size}")
    if resize not in (None, "auto", pre.resize_mode):
        conflicts.append(f"--resize {resize}")
    if conflicts:
        raise ConfigError(
            f"{' and '.join(conflicts)} conflicts with --weights run:{source['path']}: the source run was trained "
            f"at {pre.crop} px with --resize {pre.resize_mode}; its backbone keeps that preprocessing, so leave the "
            "option out (the new run takes the source's) or start from --weights imagenet")
    return pre


def scratch_baseline(transferred: dict[str, Any], scratch: Any, classes: list[str]) -> dict[str, Any]:
    """``metrics["baseline"]``: the same-budget model trained from random initialisation (``scratch``, a
    FitResult) against the transferred one (``transferred``: its validation metrics), per class too.

    Transfer helped when it gained balanced accuracy; ``negative_transfer_classes`` are the classes
    whose validation recall is lower with the transferred backbone than from scratch (classes without
    validation images have gain None and are never listed).
    """
    t_rec, s_rec = transferred["per_class_recall"], scratch.val["per_class_recall"]
    gain = {c: (None if t_rec.get(c) is None or s_rec.get(c) is None else t_rec[c] - s_rec[c]) for c in classes}
    gain_bal = transferred["balanced_accuracy"] - scratch.val["balanced_accuracy"]
    return {"kind": "scratch", "val_top1": scratch.val["top1"],
            "val_balanced_accuracy": scratch.val["balanced_accuracy"], "per_class_recall": s_rec,
            "epochs": scratch.epochs(),
            "transfer_gain_top1": transferred["top1"] - scratch.val["top1"],
            "transfer_gain_balanced_accuracy": gain_bal, "per_class_gain": gain,
            "transfer_helped": bool(gain_bal > 0),
            "negative_transfer_classes": [c for c, g in gain.items() if g is not None and g < 0],
            "train_seconds": scratch.seconds}


def finetune(data_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
             val_fraction: float = 0.2, train_cfg: Any = None, resize: str | None = None,
             input_size: int | None = None, baseline: str = "none") -> dict[str, Any]:
    """Fine-tune ``arch`` on ``data_dir`` and write ``out/finetune/``; returns its manifest.

    ``weights``: ``imagenet``, ``none``, the path of a state_dict, or ``run:PATH``: the backbone of an
    earlier classification run (PATH is its run directory, meaning RUN/finetune, or the RUN/finetune
    folder itself), with a new head for this data's classes; the new run then keeps that run's
    preprocessing contract, and the manifest's ``weights`` records the chain of sources (``parent``).
    ``resize``: how an image becomes the model's square input (``Preprocess.resize_mode``: shorter,
    full, letterbox) or ``auto`` (``choose_resize``); None: shorter, or the source run's with
    ``run:``. Recorded in the preprocessing contract, so export, calibration, bench and the device
    runtime all do the same. ``input_size``: the square input's side in pixels instead of the
    weights' own (224 for the ImageNet models; the ``shorter`` resize keeps the weights' resize/crop
    ratio, 256/224). ``baseline="scratch"``: afterwards train a second model of ``arch`` from random
    initialisation on the same split with the same TrainConfig (mode, epochs, seed, ...) and record
    how much the transfer gained over it, overall and per class, in ``metrics["baseline"]``
    (``scratch_baseline``; the scratch model itself is not kept). In ``linear`` mode that model is a
    random frozen backbone with a trained head: the same training budget, which is the fair
    comparison for what the transferred features bring. Everything that can be wrong with the input
    (data, arch, weights, options) is checked before training starts, and nothing is written until
    training has finished.
    """
    from ..training import TrainConfig, fit, init_distributed

    if baseline not in ("none", "scratch"):
        raise ConfigError(f"unknown --baseline {baseline!r}; choose none or scratch")
    if baseline == "scratch" and weights == "none":
        raise ConfigError("--baseline scratch compares the transferred weights with random initialisation; "
                          "with --weights none there is nothing to compare")
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
    pre = weights_preprocessing(arch, source, input_size, resize)
    if source["kind"] == "run":
        # The source's resize mode, whatever the crop loss says ("auto" only measures it here).
        _, resize_info = choose_resize(folder, train, pre, "auto")
        mode = pre.resize_mode
        resize_info.update(requested=resize or mode, reason="the source run's preprocessing (--weights run:)")
    else:
        mode, resize_info = choose_resize(folder, train, pre, resize or "shorter")
    pre = record_bit_depths(dataclasses.replace(pre, resize_mode=mode),
                            [folder.root / s.path for s in folder.samples], cfg.quiet)
    if resize == "auto":
        log.info("resize: %s (%s)", mode, resize_info["reason"])
    model = build_model(arch, len(folder.classes), state, seed=cfg.seed)
    if cfg.mode == "partial" and not 1 <= cfg.unfreeze <= count_blocks(model, arch):
        raise ConfigError(f"--unfreeze must be between 1 and {count_blocks(model, arch)} for {arch}")
    if cfg.views < 1:
        raise ConfigError("--views must be at least 1")

    started = time.time()
    result = fit(model, arch, folder.root, folder.classes, train, val, pre, cfg)
    metrics_baseline = None
    if baseline == "scratch":  # every rank trains it (fit is collective under torchrun)
        import torch

        if not cfg.quiet:
            log.info("baseline: training %s from random initialisation (%s mode, same split and settings)",
                     arch, cfg.mode)
        torch.manual_seed(cfg.seed)  # the backbone's random init draws from the global generator
        scratch = build_model(arch, len(folder.classes), None, seed=cfg.seed)
        metrics_baseline = scratch_baseline(result.val, fit(scratch, arch, folder.root, folder.classes, train, val,
                                                            pre, cfg), folder.classes)
        del scratch
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
                  "val_per_class": class_counts(val, len(folder.classes)), "skipped": skipped,
                  "duplicates": duplicate_summary(folder.samples)},
            metrics={"val_top1": result.val["top1"], "val_balanced_accuracy": result.val["balanced_accuracy"],
                     "per_class_recall": result.val["per_class_recall"],
                     "confusion": result.val["confusion"], "epochs": result.epochs(),
                     "history": result.history,
                     **({"baseline": metrics_baseline} if metrics_baseline is not None else {})},
            timings={"started": started, "train_seconds": result.seconds,
                     "seconds_per_epoch": result.seconds_per_epoch, "device": result.device,
                     "train_images_per_s": _median([h.get("train_images_per_s") for h in result.history]),
                     "world_size": result.world_size},
        )
        run.eval_npz.unlink(missing_ok=True)  # its reference logits are the replaced model's (rebuilt on demand)
    return manifest

