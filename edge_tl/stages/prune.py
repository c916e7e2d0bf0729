"""``edge-tl prune``: remove whole channels from the fine-tuned model, recover, write ``RUN/prune/``.

Channels are removed with torch-pruning's dependency graph, so every layer coupled to a pruned
channel (BatchNorm, depthwise conv, the next conv's inputs, residual partners, the head's inputs)
shrinks with it; the head's outputs (the classes) are never touched. Kept channel counts are
multiples of 16 by default (``--round-to``), so the pruned convs fill whole SIMD / tensor-core blocks.

Pruning runs in ``steps`` rounds; after each one the BatchNorm statistics are recomputed on the
training images (pruning changed what every layer after the first sees) and the model recovers with
the same fitting code the fine-tune used (``edge_tl.training.fit``). ``recover`` picks how:

* ``full`` / ``partial`` (end to end, everything or the last ``unfreeze`` blocks): the pruned model
  trains with augmentation on the labels *and* on the unpruned model's logits for the same batch
  (knowledge distillation), so it learns the full model's answers, which is what the agreement gate
  measures. ``auto`` picks ``full`` for a ``linear`` fine-tune: a frozen backbone cannot recover from
  losing channels, because only the head could move (measured on NEU at ratio 0.3: head-only
  recovery -4.4 points of top-1), so recovery unfreezes it. A ``partial`` / ``full`` fine-tune
  recovers in its own mode.
* ``head``: the backbone's weights are only sliced, never trained; the head is retrained on freshly
  computed features (seconds, not minutes, but it keeps most of the accuracy loss).

The saved model is a plain state_dict; the manifest's ``structure`` (every layer's width) lets
``checkpoint.load_model`` rebuild the architecture without pickled code.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import MODEL_FILE, describe_structure, load_model, save_state
from ..data import Sample, locate_split
from ..errors import ArtifactError, ConfigError, DataError, require
from ..manifest import check_writable, host_info, host_text, read_json, staged_folder, write_manifest
from ..models import head_of
from ..preprocess import Preprocess
from ..rundir import RunDir

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("edge_tl")

# Kept channel counts are rounded to this multiple. 16, not 8: the INT8 kernels of x86 (AVX-512 VNNI:
# 16 int32 lanes) and of tensor cores work in blocks of 16 channels, and a width of 104 or 136 is
# padded to the next block. Measured (OpenVINO INT8, NEU mobilenet_v2 at ratio 0.3, batch 1, timed
# in alternating blocks, two runs): multiples of 16 1.968/1.903 ms vs multiples of 8 2.230/2.130 ms,
# with 2.7 % fewer MACs. Every multiple of 16 is a multiple of 8 (fp16 tensor cores, ARM NEON).
DEFAULT_ROUND_TO = 16
ROUND_CHOICES = (8, 16, 32)
IMPORTANCES = ("l2", "taylor")
BN_CALIBRATION_IMAGES = 512  # stable statistics (x every pixel); a pass over more only costs time
TAYLOR_IMAGES = 64  # images whose loss gradient ranks channels for Taylor importance


RECOVER_MODES = ("auto", "full", "partial", "head")
# End-to-end recovery trains every layer at one rate: the pruned backbone, not a new head, is what has
# to move. Measured on NEU (mobilenet_v2, ratio 0.3, one round, 4 epochs, distilled): lr 5e-4 with
# the backbone at a tenth -> val top-1 0.942 after 2 epochs; 5e-4 everywhere -> 0.994 after 3;
# 1e-3 everywhere -> 1.000 (the unpruned model's 1.000) after 4.
RECOVER_LR = 1e-3


def resolve_recover_mode(recover: str, finetune_mode: str) -> str:
    """``auto`` -> ``full``: pruning cuts channels in every layer, and only end-to-end training wins them back
    (a partial fine-tune trained one block, the rest stayed ImageNet's); others as given."""
    if recover not in RECOVER_MODES:
        raise ConfigError(f"--recover must be one of {', '.join(RECOVER_MODES)}, got {recover!r}")
    if recover != "auto":
        return recover
    return "full"


def default_steps(ratio: float, importance: str) -> int:
    """Pruning rounds when ``--steps`` is not given.

    L2 importance: one round. With ``head`` recovery the backbone weights L2 ranks channels by do not
    move between rounds, so further rounds would choose (almost) the same channels; with end-to-end
    recovery each round costs the recovery epochs again (minutes per epoch on a CPU), and one round
    with distillation already recovers the full model's accuracy on NEU at ratio 0.3 (see
    RECOVER_LR). Taylor importance depends on activations and the head, so it prunes iteratively: one
    round per 10 % of channels removed (1 to 5).
    """
    if importance == "l2":
        return 1
    return max(1, min(5, round(ratio / 0.1)))


def default_recover_epochs(recover: str, finetune_mode: str, finetune_epochs: int, steps: int) -> int:
    """Recovery epochs per round when ``--recover-epochs`` is not given.

    ``head``: the linear default epoch count. Epochs on cached features take milliseconds; the cost
    of a recovery round is the feature pass, which does not depend on the epoch count.
    End to end: half the mode's end-to-end default (or the fine-tune's own epochs when it trained in that
    mode) spread over the rounds, at least 1 per round: recovery starts from a trained model.
    """
    from ..training import DEFAULT_EPOCHS

    if recover == "head":
        return DEFAULT_EPOCHS["linear"]
    base = finetune_epochs if finetune_mode == recover else DEFAULT_EPOCHS[recover]
    return max(1, math.ceil(base / (2 * steps)))


def prune(run_dir: str | Path, ratio: float, recover_epochs: int | None = None, importance: str = "l2",
          steps: int | None = None, quiet: bool = True, device: str = "auto",
          recover: str = "auto", round_to: int = DEFAULT_ROUND_TO,
          data: str | Path | None = None) -> dict[str, Any]:
    """Prune RUN/finetune's model and write RUN/prune/; returns its manifest (see ``prune_run``)."""
    return prune_run(run_dir, ratio, recover_epochs, importance, steps, quiet, device, recover, round_to,
                     data)[1]


def prune_run(run_dir: str | Path, ratio: float, recover_epochs: int | None = None, importance: str = "l2",
              steps: int | None = None, quiet: bool = True, device: str = "auto",
              recover: str = "auto", round_to: int = DEFAULT_ROUND_TO,
              data: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``ratio`` of the channels of every prunable layer of RUN/finetune and write RUN/prune/.

    ``ratio`` is per layer (0 < ratio < 1); each layer keeps ``(1 - ratio)`` of its output channels
    rounded to the nearest multiple of ``round_to`` (8, 16 or 32; at least that many; a layer that would
    keep all its channels is left whole). ``importance``: ``l2`` (group L2 norm of the weights) or
    ``taylor`` (first-order Taylor
    expansion of the loss on training images). ``steps`` and ``recover_epochs`` (per round; 0 skips
    training, BatchNorm statistics are still recomputed) default per ``default_steps`` and
    ``default_recover_epochs``. ``data``: the folder the run's images were moved to (the same relative
    paths; checked against split.json's sha256, see ``data.locate_split``); default: split.json's folder.
    Before any work, the images are checked (DataError: one line naming the folder) and the plan with its
    estimated time is logged (``plan_prune``). Returns the pruned model (eval mode, CPU) and the manifest
    written to RUN/prune/manifest.json.
    """
    torch = require("torch", "train")
    tp = require("torch_pruning", "train")
    from ..training import DISTILL_TEMPERATURE, DISTILL_WEIGHT, TrainConfig, fit, predict_logits, resolve_device

    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    if importance not in IMPORTANCES:
        raise ConfigError(f"--importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if round_to not in ROUND_CHOICES:
        raise ConfigError(f"--round-to must be one of {', '.join(map(str, ROUND_CHOICES))}, got {round_to}")
    if recover_epochs is not None and recover_epochs < 0:
        raise ConfigError(f"--recover-epochs must be 0 or more, got {recover_epochs}")

    run = RunDir(Path(run_dir))
    check_writable(run.prune)  # before minutes of recovery training, not after
    ft = run.require_finetune()
    model, ft_manifest = load_model(ft)
    if ft_manifest.get("structure"):
        raise ArtifactError(f"{ft} holds an already pruned model; prune the fine-tuned one")
    if ft_manifest.get("task") == "detect":
        raise ConfigError(f"{ft} is a detection model: prune does not take detection runs yet (it prunes "
                          "classifiers); shrink a detector with a smaller --arch or --input-size")
    if ft_manifest.get("task") == "anomaly":
        raise ConfigError(f"{ft} is an anomaly model: prune works on classifiers (shrink an anomaly model "
                          "with --bank-size, --dim or --input-size instead)")
    arch, classes = ft_manifest["arch"], ft_manifest["classes"]
    pre = Preprocess.from_dict(ft_manifest["preprocessing"])
    split = read_json(ft / "split.json")
    images = locate_split(split, data, origin=str(ft / "split.json"))
    root, train, val = images.root, images.train, images.val
    base_cfg = _train_config(ft_manifest.get("train_config") or {}, TrainConfig)
    mode = base_cfg.mode
    recover = resolve_recover_mode(recover, mode)
    steps = steps if steps is not None else default_steps(ratio, importance)
    if recover_epochs is None:
        recover_epochs = default_recover_epochs(recover, mode, base_cfg.resolved_epochs(), steps)
    dev = resolve_device(device)
    fit_mode = "linear" if recover == "head" else recover
    lr = None if recover == "head" else RECOVER_LR
    cfg = TrainConfig(**{**asdict(base_cfg), "mode": fit_mode, "epochs": max(recover_epochs, 1), "lr": lr,
                         "backbone_lr_scale": 1.0, "device": device, "quiet": quiet})

    started = time.perf_counter()
    example = torch.zeros(1, 3, pre.crop, pre.crop)
    model.eval()
    macs_before, params_before = (int(v) for v in tp.utils.count_ops_and_params(model, example))
    original = copy.deepcopy(model)  # timed against the pruned model at the end, interleaved
    channels_before = _conv_widths(model)
    head = head_of(model, arch)
    n_classes = head.out_features

    # Tracing needs an autograd graph; the fine-tune may have left the backbone frozen.
    for p in model.parameters():
        p.requires_grad_(True)
    layer_ratios, untouched = _layer_ratios(model, head, ratio, round_to)
    if not layer_ratios:
        raise ConfigError(f"--ratio {ratio} removes no channel from any layer once kept counts are "
                          f"rounded to multiples of {round_to}; use a larger ratio")
    imp = tp.importance.MagnitudeImportance(p=2) if importance == "l2" else tp.importance.TaylorImportance()
    pruner = tp.pruner.BasePruner(
        model, example, importance=imp, pruning_ratio=ratio, pruning_ratio_dict=layer_ratios,
        iterative_steps=steps, ignored_layers=[head, *untouched], round_to=round_to)

    history: list[dict[str, Any]] = []
    result = None
    plan: dict[str, Any] = {}
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        if importance == "taylor":
            _taylor_gradients(model, root, train, pre, dev, base_cfg.seed + step)
        model.eval()
        pruner.step()
        model.zero_grad(set_to_none=True)
        if head.out_features != n_classes or head_of(model, arch) is not head:
            raise ArtifactError("pruning changed the classification head's outputs (a bug)")
        if step == 1:  # timed on the pruned model: the unpruned one would overstate every epoch
            plan = plan_prune(model, original, root, train, val, pre, dev, recover=recover, steps=steps,
                              epochs=recover_epochs, importance=importance, ratio=ratio,
                              batch_size=base_cfg.batch_size)
            log.info("%s", describe_plan(plan))
        bn_images = recalibrate_batchnorm(model, root, train, pre, dev, seed=base_cfg.seed,
                                          batch_size=base_cfg.batch_size, quiet=quiet)
        macs, params = (int(v) for v in tp.utils.count_ops_and_params(model, example))
        entry: dict[str, Any] = {"step": step, "macs": macs, "params": params, "bn_images": bn_images}
        if recover_epochs > 0:
            try:
                result = fit(model, arch, root, classes, train, val, pre, cfg,
                             teacher=None if recover == "head" else original)
            except DataError as exc:  # images gone mid-run: say how to re-point the run at them
                raise DataError(f"{exc}; if they moved, run again with --data NEW_FOLDER") from exc
            entry |= {"val_top1": result.val["top1"], "epochs": result.epochs(),
                      "epochs_run": len(result.history), "fit_seconds": result.seconds}
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if not quiet:
            log.info("prune step %d/%d: %.1f M MACs%s", step, steps, macs / 1e6,
                     f", val top-1 {entry['val_top1']:.4f}" if "val_top1" in entry else "")

    model.eval().cpu()
    if result is not None:
        val_after = result.val
    else:
        from ..metrics import classification_metrics

        model.to(dev)
        logits, labels, _bad = predict_logits(model, root, val, pre, dev, quiet=quiet, desc="validate")
        model.cpu().eval()
        val_after = classification_metrics(logits, labels, classes)
    macs_after, params_after = history[-1]["macs"], history[-1]["params"]  # recovery keeps the shapes
    latency_before, latency_after = _torch_latency_ms(original, model, example)
    del original
    channels_after = _conv_widths(model)
    val_before = ft_manifest.get("metrics", {}).get("val_top1")
    if latency_after["p50"] >= 0.95 * latency_before["p50"]:
        log.warning("pruning did not cut single-thread torch CPU latency here (p50 %.2f -> %.2f ms); "
                    "bench the exported targets to see what it does on the device",
                    latency_before["p50"], latency_after["p50"])

    with staged_folder(run.prune) as tmp:
        save_state(model, tmp / MODEL_FILE)
        manifest = write_manifest(
            tmp, "prune", parent=ft / MODEL_FILE, files=[MODEL_FILE],
            arch=arch, classes=classes, preprocessing=ft_manifest["preprocessing"],
            structure=describe_structure(model), weights=ft_manifest.get("weights"),
            mode=mode, ratio=ratio, importance=importance, steps=steps, round_to=round_to,
            macs={"before": macs_before, "after": macs_after, "ratio": macs_after / macs_before},
            params={"before": params_before, "after": params_after, "ratio": params_after / params_before},
            metrics={"val_top1_before": val_before, "val_top1": val_after["top1"],
                     "val_top1_drop": None if val_before is None else (val_before - val_after["top1"]) * 100,
                     "per_class_recall": val_after["per_class_recall"], "confusion": val_after["confusion"]},
            latency_ms={"backend": "torch-eager-fp32", "batch": 1, "device": "cpu", "threads": 1, "host": host_info(),
                        "before": latency_before, "after": latency_after,
                        "speedup": latency_before["p50"] / latency_after["p50"],
                        "note": "indicative, measured on the pruning host; the bench measures targets"},
            channels={name: [channels_before[name], channels_after[name]] for name in channels_before},
            untouched_layers=sorted(_names(model, untouched)),
            recovery={"mode": recover, "finetune_mode": mode,
                      "distillation": None if recover == "head" else {
                          "teacher": "the unpruned fine-tuned model", "temperature": DISTILL_TEMPERATURE,
                          "weight": DISTILL_WEIGHT},
                      "epochs_per_step": recover_epochs, "train_config": asdict(cfg),
                      "batchnorm": "recomputed on training images after every step",
                      "history": history, "plan": plan},
            data=images.record(split["root"]),
            timings={"seconds": time.perf_counter() - started, "device": dev},
        )
        # The folder must rebuild from the manifest alone; check before it replaces anything.
        rebuilt, _ = load_model(tmp)
        with torch.inference_mode():
            x = torch.randn(2, 3, pre.crop, pre.crop, generator=torch.Generator().manual_seed(0))
            if not torch.allclose(rebuilt(x), model(x), atol=1e-5, rtol=1e-4):
                raise ArtifactError("the saved pruned model does not rebuild identically (a bug); "
                                    "nothing was written")
    return model, manifest


# ---------------------------------------------------------------- the plan and its estimated time

PLAN_PROBE_IMAGES = 4  # training images decoded and run through a copy of the model to time one step
# Past this estimate the plan names the cheaper options: end-to-end recovery costs minutes per epoch on a
# CPU (NEU at ratio 0.3 on 2 cores: about an hour), head recovery a feature pass.
LONG_PLAN_SECONDS = 300.0


def plan_prune(model: nn.Module, teacher: nn.Module, root: Path, train: list[Sample], val: list[Sample],
               pre: Preprocess, device: str, *, recover: str, steps: int, epochs: int, importance: str,
               ratio: float, batch_size: int) -> dict[str, Any]:
    """What the prune will do and how long it should take here, from a timed probe (``_probe_seconds``)
    of this model on this host's images: decode, forward pass and, for end-to-end recovery or Taylor
    importance, a training step (with the teacher's pass).

    Recovery epochs are the most it runs (early stopping may end sooner), so the estimate is an upper
    bound for the training part. ``head_seconds``: the same prune with ``--recover head``."""
    end_to_end = recover != "head" and epochs > 0
    per = _probe_seconds(model, teacher, root, train, pre, device, batch=min(PLAN_PROBE_IMAGES, batch_size),
                         train_step=end_to_end or importance == "taylor", distill=end_to_end)
    n_tr, n_va = len(train), len(val)
    look = per["decode_eval"] + per["forward"]  # one image through the evaluation path
    bn = min(BN_CALIBRATION_IMAGES, n_tr) * look
    taylor = min(TAYLOR_IMAGES, n_tr) * (per["decode_eval"] + per["train_step"]) if importance == "taylor" else 0.0
    head_step = bn + taylor + (n_tr + n_va) * look  # the feature pass; epochs on cached features are free
    if epochs == 0:
        seconds = steps * (bn + taylor) + n_va * look
    elif recover == "head":
        seconds = steps * head_step
    else:
        seconds = steps * (bn + taylor + epochs * (n_tr * (per["decode_train"] + per["train_step"]) + n_va * look))
    return {"ratio": ratio, "recover": recover, "steps": steps, "epochs_per_step": epochs,
            "importance": importance, "train_images": n_tr, "val_images": n_va, "device": device,
            "measured_seconds_per_image": per, "estimated_seconds": seconds,
            "head_seconds": steps * head_step}


def _probe_seconds(model: nn.Module, teacher: nn.Module, root: Path, train: list[Sample], pre: Preprocess,
                   device: str, *, batch: int, train_step: bool, distill: bool) -> dict[str, float]:
    """Seconds per image on ``batch`` training images: decoding with the evaluation preprocessing and (with
    ``train_step``) with the training augmentation, a forward pass (eval, no grad) and (with
    ``train_step``) a training step: forward and backward of a copy of ``model``, plus ``teacher``'s
    forward pass when ``distill``. Steps not measured are 0. Timed once each, the forward pass first:
    one batch is what a plan may cost on a busy 2-core host (seconds), and it overstates, never hides."""
    import torch

    from ..training import ImageDataset

    chosen = _subset(train, batch, 0)

    def decode(augment: bool) -> tuple[list[Any], float]:
        ds = ImageDataset(root, chosen, pre, train=augment)
        t0 = time.perf_counter()
        xs = [ds[i][0] for i in range(len(ds))]
        return [x for x in xs if x is not None], time.perf_counter() - t0

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    xs, t_eval = decode(False)
    if not xs:
        raise DataError(f"none of {len(chosen)} training images under {root} decode any more")
    x = torch.stack(xs).to(device)
    probe = copy.deepcopy(model).to(device)
    per = {"decode_eval": t_eval / len(chosen), "decode_train": 0.0, "forward": 0.0, "train_step": 0.0}

    def forward() -> None:
        with torch.no_grad():
            probe.eval()(x)

    def step() -> None:
        out = probe.train()(x)
        if distill:
            with torch.no_grad():
                teacher(x)
        out.float().logsumexp(1).mean().backward()

    per["forward"] = timed(forward) / len(xs)
    if train_step:
        per["decode_train"] = decode(True)[1] / len(chosen)
        for p in probe.parameters():
            p.requires_grad_(True)
        teacher.to(device).eval()
        try:
            per["train_step"] = timed(step) / len(xs)
        finally:
            teacher.cpu()
    return per


def _about(seconds: float) -> str:
    """A rough duration for a person: "about 40 s", "about 12 min", "about 1.5 h"."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def describe_plan(plan: dict[str, Any]) -> str:
    """One line: what the prune does, on how many images, and its estimated time; past
    ``LONG_PLAN_SECONDS`` it names ``--recover head`` (with its own estimate) and ``--recover-epochs``."""
    how = {"head": "head only (backbone sliced, head retrained on its features)",
           "full": "full (end to end, distilled from the unpruned model)",
           "partial": "partial (last blocks end to end, distilled from the unpruned model)"}[plan["recover"]]
    epochs = plan["epochs_per_step"]
    recovery = ("no recovery training (BatchNorm statistics only)" if epochs == 0
                else f"recovery {how}, up to {epochs} epoch(s) per step")
    per = plan["measured_seconds_per_image"]
    measured = f"evaluation {per['forward'] + per['decode_eval']:.3f} s"
    if per["train_step"]:
        measured = f"training step {per['train_step'] + per['decode_train']:.3f} s, {measured}"
    line = (f"prune plan: ratio {plan['ratio']:g} ({plan['importance']}) in {plan['steps']} step(s), {recovery}, on "
            f"{plan['train_images']} training + {plan['val_images']} validation images ({plan['device']}): "
            f"estimated {_about(plan['estimated_seconds'])} (measured here per image: {measured})")
    if plan["estimated_seconds"] > LONG_PLAN_SECONDS and plan["recover"] != "head":
        line += (f". Faster: --recover head ({_about(plan['head_seconds'])}, keeps more of the accuracy loss) "
                 "or fewer --recover-epochs")
    return line


# ---------------------------------------------------------------- pieces


def _train_config(saved: dict[str, Any], cls: type) -> Any:
    """The fine-tune's TrainConfig, tolerant of keys this version does not know."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in saved.items() if k in known}
    if "aug_scale" in kwargs:
        kwargs["aug_scale"] = tuple(kwargs["aug_scale"])
    return cls(**kwargs)


def _layer_ratios(model: nn.Module, head: nn.Module, ratio: float, round_to: int = DEFAULT_ROUND_TO,
                  ) -> tuple[dict[nn.Module, float], list[nn.Module]]:
    """Per-layer ratios that make torch-pruning keep ``(1 - ratio)`` of each layer's output channels
    rounded to the *nearest* multiple of ``round_to``, at least ``round_to`` (its own ``round_to`` rounds
    down, which halves 32-channel layers at ratio 0.3 with multiples of 8),
    and the layers to leave whole (their own width is nearer to the target than any smaller multiple).

    Layers coupled by the dependency graph (a conv, its depthwise partner, residual partners) have the
    same width, so they get the same ratio, and leaving one whole leaves its whole group whole.
    """
    import torch.nn as nn

    ratios: dict[nn.Module, float] = {}
    untouched: list[nn.Module] = []
    head_ids = {id(m) for m in head.modules()}
    for m in model.modules():
        if id(m) in head_ids or not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        channels = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        target = channels * (1 - ratio)
        keep = max(round_to, round_to * math.floor(target / round_to + 0.5))
        # The layer's own width is a choice too: at a tiny ratio a 24-channel layer stays 24, not 16.
        if keep >= channels or channels - target <= abs(keep - target):
            untouched.append(m)
        else:
            # +0.5: torch-pruning keeps int(channels * (1 - r)); land on ``keep`` despite float error.
            ratios[m] = 1 - (keep + 0.5) / channels
    return ratios, untouched


def _names(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    ids = {id(m) for m in modules}
    return [name for name, m in model.named_modules() if id(m) in ids]


def _conv_widths(model: nn.Module) -> dict[str, int]:
    import torch.nn as nn

    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """Up to ``n`` samples in a random order. Always shuffled: image folders list samples class by
    class, and BatchNorm statistics averaged over one-class batches miss the between-class variance
    (measured: NEU pruned model, every training image in folder order -> 25 of 360 wrong, vs 1)."""
    return random.Random(seed).sample(samples, min(n, len(samples)))


def recalibrate_batchnorm(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess,
                          device: str = "cpu", *, limit: int = BN_CALIBRATION_IMAGES, seed: int = 0,
                          batch_size: int = 32, quiet: bool = True) -> int:
    """Recompute every BatchNorm's running mean/variance from ``samples``; returns the images used.

    Up to ``limit`` images in a random order (``_subset``), averaged by ``batchnorm.estimate_statistics``
    (weights do not change). The model is left in eval mode on the CPU.
    """
    from ..batchnorm import batchnorms, estimate_statistics

    seen = estimate_statistics(model, root, _subset(samples, limit, seed), pre, device, batch_size, quiet)
    if not seen and batchnorms(model):
        raise DataError(f"none of the training images under {root} can be read any more: moved or deleted? "
                        "If they moved, run again with --data NEW_FOLDER")
    return seen


def _taylor_gradients(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str,
                      seed: int) -> None:
    """Leave d(loss)/d(weight) in every parameter's ``.grad`` for TaylorImportance (eval mode: the
    BatchNorm statistics do not move)."""
    import torch

    from ..batchnorm import image_batches

    model.to(device).eval()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    crit = torch.nn.CrossEntropyLoss()
    chosen = _subset(samples, TAYLOR_IMAGES, seed)
    for x, y in image_batches(root, chosen, pre, 32):
        loss = crit(model(x.to(device)), y.to(device)) * len(x) / len(chosen)
        loss.backward()
    model.cpu()


def _torch_latency_ms(before: nn.Module, after: nn.Module, example: Any, pairs: int = 20,
                     max_seconds: float = 10.0) -> tuple[dict[str, float], dict[str, float]]:
    """Batch-1, single-thread eager CPU latency of two models, timed in alternation so that load
    from other processes hits both alike. A quick indication for the manifest, not the bench's measurement."""
    import torch

    from ..bench.latency import percentiles

    models = (before.eval().cpu(), after.eval().cpu())
    # One thread: with other processes on the cores, multi-threaded timings swing by orders of magnitude.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    samples: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + max_seconds
    try:
        with torch.inference_mode():
            for m in models:
                for _ in range(3):
                    m(example)
            for _ in range(pairs):
                for m, out in zip(models, samples, strict=True):
                    t0 = time.perf_counter_ns()
                    m(example)
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                if time.perf_counter() > deadline and len(samples[0]) >= 5:
                    break
    finally:
        torch.set_num_threads(threads)
    return percentiles(samples[0]), percentiles(samples[1])


def describe(manifest: dict[str, Any]) -> str:
    """One line for the CLI: MACs/params and validation top-1 before -> after, and the latency change."""
    m, p, met, lat = manifest["macs"], manifest["params"], manifest["metrics"], manifest["latency_ms"]
    before = "?" if met["val_top1_before"] is None else f"{met['val_top1_before']:.4f}"
    faster = lat["speedup"]
    verdict = f"{faster:.2f}x faster" if faster >= 1.05 else f"NOT faster ({faster:.2f}x)"
    return (f"pruned {manifest['arch']} by {manifest['ratio']:g} ({manifest['importance']}, "
            f"{manifest['steps']} step(s)): MACs {m['before'] / 1e6:.1f}M -> {m['after'] / 1e6:.1f}M, "
            f"params {p['before'] / 1e6:.2f}M -> {p['after'] / 1e6:.2f}M, val top-1 {before} -> "
            f"{met['val_top1']:.4f}, torch CPU 1-thread p50 {lat['before']['p50']:.1f} -> "
            f"{lat['after']['p50']:.1f} ms ({verdict}; {host_text(lat.get('host'))})")


__all__ = ["default_recover_epochs", "default_steps", "describe", "describe_plan", "plan_prune", "prune",
           "prune_run", "recalibrate_batchnorm"]
