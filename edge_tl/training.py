"""The fine-tuning loop shared by ``finetune`` and pruning recovery, and the one epoch loop
(``run_epochs``) and batch loop (``optimise``) that QAT and adapt's self-training train in too.

Three paths: ``linear`` computes backbone features once (frozen weights *and* BatchNorm statistics)
and trains the head on the cached features, which is what makes CPU fine-tuning take seconds.
``partial`` does the same one level down, on every device: the frozen prefix runs once per image and
per cached augmented view (``views``), and the last ``unfreeze`` blocks train on those activations
(``_fit_cached``), so one recipe and seed give the same model on a CPU and on CUDA (issue 25: the demo's
recipe gave 0.863 on a CPU and 0.817 on an H200 when CUDA took the end-to-end path). ``full``,
``partial --progressive`` and pruning recovery (with a teacher) train end to end with augmentation, AMP
and channels_last on CUDA. The frozen parts run on the fastest engine the
machine has (``features.PrefixEngine``). All run under ``torchrun`` (DistributedDataParallel: gloo on
CPU, nccl on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .data import Sample
from .errors import ConfigError, DataError
from .metrics import classification_metrics
from .models import freeze_for_mode, get_arch, head_of, set_submodule
from .preprocess import Preprocess, load_image
from .progress import progress

log = logging.getLogger("edge_tl")

DEFAULT_EPOCHS = {"linear": 30, "partial": 8, "full": 8}
# Cached partial training is cheap per epoch, so it gets more of them (early stopping ends it sooner).
# 15: the measured default recipe (benchmarks/default_recipe.py).
CACHED_PARTIAL_EPOCHS = 15
DEFAULT_LR = {"linear": 3e-3, "partial": 1e-3, "full": 5e-4}
# The unfrozen blocks' share of the head's lr. Partial trains the last block(s) at the head's rate: measured
# (benchmarks/default_recipe.py, test split) it beat a tenth of it; a full fine-tune moves every
# pretrained layer, which a tenth keeps from forgetting ImageNet in the first epochs.
DEFAULT_BACKBONE_LR_SCALE = {"linear": 1.0, "partial": 1.0, "full": 0.1}
BALANCE = ("none", "weights", "sampler")


@dataclass
class TrainConfig:
    """Hyper-parameters of one fit; ``None`` means the mode's default."""

    # The default recipe, chosen on test splits of NEU, an imbalanced NEU and elpv (benchmarks/default_recipe.py):
    # the last block and the head on cached activations beat the linear probe on every set.
    mode: str = "partial"
    epochs: int | None = None
    unfreeze: int = 1
    progressive: bool = False
    lr: float | None = None
    weight_decay: float = 1e-4
    batch_size: int = 32
    label_smoothing: float = 0.1
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    quiet: bool = False
    aug_scale: tuple[float, float] = (0.6, 1.0)
    # The unfrozen pretrained layers' lr as a share of the head's (None: DEFAULT_BACKBONE_LR_SCALE of the
    # mode); pruning recovery sets 1 (the pruned backbone is what needs to move).
    backbone_lr_scale: float | None = None
    # Cached partial mode: activations of the frozen prefix per training image, the first from the
    # evaluation preprocessing, the others augmented (random-resized crop and flip).
    views: int = 2
    # Imbalanced lines: "weights" scales the loss per class by n / (k * n_class) (scikit-learn's
    # "balanced"), "sampler" draws the classes equally often; either way early stopping then follows
    # balanced accuracy instead of top-1.
    balance: str = "none"
    # Choose the epoch (and stop early) as the line will judge the model: the share of good validation images
    # passed as ok by the QC policy tuned to let at most this share of the defects pass (``bundle
    # --max-escape``, ``runtime.policy.passed_at_escape``). None: top-1, or balanced accuracy with ``balance``.
    max_escape: float | None = None
    ok_class: str | None = None  # with max_escape: the good class (None: a class named ok/good/pass/...)
    ok_index: tuple[int, ...] = ()  # resolved from ok_class by fit()
    engine: str = "auto"  # what runs the frozen layers: auto | onnxruntime | torch (features.PrefixEngine)
    # End-to-end training: decode the training and validation images once and augment on the device when
    # their frames fit in this many MB (decoded.DEFAULT_CACHE_MB); 0: decode every epoch (the loader).
    cache_mb: int = 2048

    def __post_init__(self) -> None:
        if self.backbone_lr_scale is None:  # resolved here so that the manifest records the value used
            self.backbone_lr_scale = DEFAULT_BACKBONE_LR_SCALE.get(self.mode, 0.1)

    def resolved_epochs(self, cached: bool = False) -> int:
        if self.epochs is not None:
            return self.epochs
        return CACHED_PARTIAL_EPOCHS if cached and self.mode == "partial" else DEFAULT_EPOCHS[self.mode]

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


@dataclass
class FitResult:
    """The best model (loaded into the module passed in) and what happened on the way.

    ``best_epoch`` is the loop's 0-based index; ``history[i]["epoch"]`` and ``epochs()`` number epochs
    from 1, as the progress bar does, for everything a person reads."""

    history: list[dict[str, float]]
    best_epoch: int
    val: dict[str, Any]
    device: str
    world_size: int
    seconds: float
    seconds_per_epoch: float
    skipped_during_training: list[dict[str, str]] = field(default_factory=list)
    epochs_planned: int = 0  # what the mode's default or --epochs asked for; early stopping may run fewer

    def epochs(self) -> dict[str, int]:
        """The manifest's ``epochs``: the best epoch (1-based), how many ran and how many were planned."""
        return {"best": self.best_epoch + 1, "run": len(self.history), "planned": self.epochs_planned}


# ---------------------------------------------------------------- distributed helpers


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str, ddp: Dist | None = None) -> str:
    """``auto`` -> cuda when present; ``cuda`` on a machine without one is a configuration error."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU")
        if device == "cuda":
            device = f"cuda:{ddp.local_rank if ddp else 0}"
    return device


# ---------------------------------------------------------------- data


class ImageDataset(Dataset):
    """Samples of an image folder; a file that fails to decode yields None instead of raising."""

    def __init__(self, root: Path, samples: list[Sample], pre: Preprocess, train: bool,
                 aug_scale: tuple[float, float] = (0.6, 1.0)) -> None:
        self.root, self.samples, self.pre, self.train = root, samples, pre, train
        self.aug = None
        if train:
            from torchvision import transforms as T

            interp = T.InterpolationMode(pre.interpolation)
            # "shorter" crops from the whole image (torchvision's recipe); full-frame and letterbox
            # crops come from the square the model sees, so the augmentation keeps their geometry.
            frame = [] if pre.resize_mode == "shorter" else [T.Lambda(pre.resize_and_crop)]
            self.aug = T.Compose([*frame, T.RandomResizedCrop(pre.crop, scale=aug_scale, interpolation=interp),
                                  T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        s = self.samples[i]
        try:
            img = load_image(self.root / s.path)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the epoch
            return (None, s.label, i, f"{s.path}: {type(exc).__name__}: {exc}")
        x = self.pre.normalize(self.aug(img)) if self.aug else self.pre(img)
        return (torch.from_numpy(x), s.label, i, None)


def collate(batch: list[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Stack the good samples; report the bad ones by name."""
    good = [b for b in batch if b[0] is not None]
    bad = [b[3] for b in batch if b[0] is None]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), bad
    return (torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]),
            torch.tensor([b[2] for b in good]), bad)


# Loader workers hand each batch over through a shared-memory file, which counts against the file-size
# limit (ulimit -f): under a small limit a worker dies and the loader waits for it for ever. Below this
# limit batches are loaded in the main process instead.
WORKER_FSIZE_MIN = 1 << 30


def _workers_allowed(workers: int) -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if workers and soft != resource.RLIM_INFINITY and soft < WORKER_FSIZE_MIN:
        log.warning("file-size limit (ulimit -f) of %d bytes: loading images in the main process, not in %d "
                    "worker(s), whose shared-memory batches it would cut", soft, workers)
        return 0
    return workers


def _loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int,
            sampler: Any = None, pin: bool = False) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    workers = _workers_allowed(workers)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, generator=g, pin_memory=pin,
                      persistent_workers=False)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str,
                   batch_size: int = 64, workers: int = 0, ddp: Dist | None = None,
                   quiet: bool = True, desc: str = "predict") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits, labels (in ``samples`` order, bad files dropped) and the names of files that failed."""
    model.eval()
    out, labels, bad = run_over(lambda x: model(_to(x, device)).float().cpu(), root, samples, pre,
                                batch_size=batch_size, workers=workers, ddp=ddp, quiet=quiet, desc=desc)
    return out.numpy(), labels, bad


@torch.no_grad()
def run_over(fn: Any, root: Path, samples: list[Sample], pre: Preprocess, *, augment: bool = False,
             aug_scale: tuple[float, float] = (0.6, 1.0), seed: int = 0, batch_size: int = 64,
             workers: int = 0, ddp: Dist | None = None, quiet: bool = True, desc: str = "predict",
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """``fn`` (NCHW float32 batch -> CPU tensor) over every image of ``samples``: outputs stacked in
    ``samples`` order (bad files dropped, stored as ``dtype``), their labels, and the files that failed.

    ``augment`` draws one training augmentation per image, reproducibly from ``seed``. Under torchrun
    each rank runs its share and every rank gets the whole result.
    """
    ddp = ddp or Dist()
    idx = list(range(ddp.rank, len(samples), ddp.world))
    ds = ImageDataset(root, [samples[i] for i in idx], pre, train=augment, aug_scale=aug_scale)
    if augment:
        torch.manual_seed(seed + ddp.rank)  # the main process's draws (workers are seeded by the loader)
    outs, order, bad = [], [], []
    with progress(quiet or not ddp.main) as bar:
        task = bar.add_task(desc, total=len(ds), info="")
        for x, _y, i, b in _loader(ds, batch_size, False, workers, seed):
            bad += b
            if len(x):
                outs.append(fn(x).to(dtype))
                order.append(torch.tensor([idx[j] for j in i.tolist()]))
            bar.advance(task, len(x) + len(b))
    logits = torch.cat(outs) if outs else torch.zeros(0, 0)
    order_t = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    if ddp.world > 1:
        gathered: list[Any] = [None] * ddp.world
        dist.all_gather_object(gathered, (logits, order_t, bad))
        logits = torch.cat([g[0] for g in gathered if len(g[0])])
        order_t = torch.cat([g[1] for g in gathered])
        bad = [n for g in gathered for n in g[2]]
    perm = torch.argsort(order_t)
    logits, order_t = logits[perm], order_t[perm]
    labels = np.asarray([samples[i].label for i in order_t.tolist()], dtype=np.int64)
    return logits, labels, bad


def _to(x: torch.Tensor, device: str) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.startswith("cuda") else x


# ---------------------------------------------------------------- the fit


def fit(model: nn.Module, arch: str, root: Path, classes: list[str], train: list[Sample],
        val: list[Sample], pre: Preprocess, cfg: TrainConfig, teacher: nn.Module | None = None) -> FitResult:
    """Fine-tune ``model`` in place per ``cfg``; on return it holds the best validation weights.

    ``teacher`` (``partial`` / ``full`` only): a model whose logits on the same augmented batch the
    student also learns to match (knowledge distillation, see ``distillation_loss``). Pruning recovery
    uses the unpruned model, so the pruned one learns the full model's answers, not only the labels.
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ddp = init_distributed("cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(cfg.device, ddp)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    model.to(device)
    if device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    if cfg.balance not in BALANCE:
        raise ConfigError(f"unknown --balance {cfg.balance!r}; choose {', '.join(BALANCE)}")
    if cfg.max_escape is not None:
        cfg = replace(cfg, ok_index=qc_ok_index(classes, cfg.ok_class, val))
    start = time.perf_counter()
    n_classes = len(classes)
    planned = cfg.resolved_epochs(cached=uses_cache(cfg, device, teacher))
    if cfg.mode == "linear":
        if teacher is not None:
            raise ConfigError("distillation needs end-to-end training (mode partial or full), not linear")
        history, stop, skipped = _fit_linear(model, arch, root, train, val, pre, cfg, device, ddp, n_classes)
    elif uses_cache(cfg, device, teacher):
        history, stop, skipped = _fit_cached(model, arch, root, train, val, pre, cfg, device, ddp, n_classes)
    else:
        history, stop, skipped = _fit_end_to_end(model, arch, root, train, val, pre, cfg, device, ddp, teacher,
                                                 n_classes)
    seconds = time.perf_counter() - start
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    epochs_run = max(len(history), 1)
    logits, labels = stop.val_logits, stop.val_labels
    return FitResult(history, stop.best_epoch, classification_metrics(logits, labels, classes), device,
                     ddp.world, seconds, seconds / epochs_run, skipped, planned)


def uses_cache(cfg: TrainConfig, device: str, teacher: nn.Module | None = None) -> bool:
    """Whether ``partial`` trains on cached prefix activations: always, on every ``device`` (the path,
    the epochs and the batches a seed draws must not depend on where it runs), except with a teacher
    (pruning recovery distils end to end) or progressive unfreezing (the prefix would change).
    ``device`` is taken so that a test can show it changes nothing."""
    del device
    return cfg.mode == "partial" and teacher is None and not cfg.progressive and cfg.views >= 1


def _criterion(cfg: TrainConfig, labels: np.ndarray, n_classes: int, device: str) -> nn.Module:
    """Cross-entropy with label smoothing, class-weighted with ``balance = "weights"``."""
    weight = None
    if cfg.balance == "weights":
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
        weight = torch.tensor(w, dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def _epoch_order(labels: torch.Tensor, gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """This epoch's sample order: a permutation, or with ``balance = "sampler"`` as many draws with
    replacement in which every class is equally likely."""
    if cfg.balance != "sampler":
        return torch.randperm(len(labels), generator=gen)
    counts = torch.bincount(labels.cpu())
    p = (1.0 / counts.clamp(min=1).double())[labels.cpu()]
    return torch.multinomial(p, len(labels), replacement=True, generator=gen)


def qc_ok_index(classes: list[str], ok_class: str | None, val: list[Sample]) -> tuple[int, ...]:
    """The ok classes' indices for choosing epochs by the QC policy (``TrainConfig.max_escape``); ConfigError
    (before any training) when there is no ok class, or no defect image among the validation samples."""
    from .runtime.policy import make_policy

    if ok_class is not None and ok_class not in classes:
        raise ConfigError(f"--ok-class {ok_class!r} is not a class; the classes are {', '.join(classes)}")
    policy = make_policy(classes, [ok_class] if ok_class else None)
    if not policy.ok_classes:
        raise ConfigError("--max-escape needs an ok class (an escape is a defect passed as ok); name it with "
                          f"--ok-class (the classes are {', '.join(classes)})")
    index = tuple(classes.index(c) for c in policy.ok_classes)
    if all(s.label in index for s in val):
        raise ConfigError("--max-escape: the validation split has no defect image to tune the ok threshold on")
    return index


def _val_score(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> float:
    """What early stopping maximises: the QC policy's share of good parts passed at ``cfg.max_escape``, or
    top-1, or balanced accuracy when the classes are balanced."""
    if not len(labels):
        return 0.0
    if cfg.max_escape is not None:
        from .runtime.policy import passed_at_escape

        return passed_at_escape(logits.float().numpy(), labels.numpy(), cfg.ok_index, cfg.max_escape)
    hit = (logits.argmax(1) == labels).float()
    if cfg.balance == "none":
        return float(hit.mean())
    recalls = [float(hit[labels == c].mean()) for c in torch.unique(labels)]
    return float(np.mean(recalls))


def _schedule(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over all steps, after a short linear warm-up."""
    warm = max(1, total_steps // 20)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


@dataclass
class Verdict:
    """One epoch judged for :func:`run_epochs`: ``score`` is what the loop maximises (ties: the higher
    ``tiebreak``), ``fields`` go into the epoch's history entry, ``kept`` stays with the best epoch
    (fit: its validation logits and labels, so no extra pass is needed at the end)."""

    score: float
    fields: dict[str, Any]
    tiebreak: float = 0.0
    kept: Any = None


@dataclass
class Best:
    """The best-judged epoch of a :func:`run_epochs` loop: its number (1-based; 0 is the model before
    training, or no epoch yet), score and tiebreak, what its verdict kept, and its state (CPU copies;
    only with ``keep="best"``)."""

    epoch: int = 0
    score: float = -math.inf
    tiebreak: float = -math.inf
    kept: Any = None
    state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, verdict: Verdict, module: nn.Module | None) -> None:
        """Take ``epoch`` when it beats the best so far (an equal one does not: the earlier stays);
        ``module``: whose state to copy (None: none is kept)."""
        if (verdict.score, verdict.tiebreak) > (self.score, self.tiebreak):
            self.epoch, self.score, self.tiebreak, self.kept = epoch, verdict.score, verdict.tiebreak, verdict.kept
            if module is not None:
                self.state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})


@dataclass
class _FitBest:
    """A fit's best epoch (0-based, as :class:`FitResult`) and its validation logits and labels."""

    best_epoch: int
    val_logits: np.ndarray
    val_labels: np.ndarray


def _skipped(bad: list[str]) -> list[dict[str, str]]:
    return [{"path": b.split(":", 1)[0], "reason": b.split(":", 1)[1].strip()} for b in bad]


# Training images that may turn unreadable during a fit before it stops: a few bad files are skipped and
# named, more means the folder was moved or deleted under the running job, and going on would only print
# a warning per image (seen: 180 of them, then a crash on an empty validation pass).
MAX_UNREADABLE_SHARE = 0.05
NAMED_UNREADABLE = 3  # named one warning each; the rest are counted in the error


def _check_unreadable(skipped: list[dict[str, str]], bad: list[str], n_train: int, root: Path) -> None:
    """Add ``bad`` (loader messages) to ``skipped``, naming the first few unreadable training images in a
    warning each; DataError once more than ``MAX_UNREADABLE_SHARE`` of the training images (and more than
    ``NAMED_UNREADABLE``) can no longer be read."""
    known = {s["path"] for s in skipped}  # the same bad file fails again every epoch: named once
    for entry, b in zip(_skipped(bad), bad, strict=True):
        if entry["path"] not in known and len(known) < NAMED_UNREADABLE:
            log.warning("skipped unreadable image during training: %s", b)
        known.add(entry["path"])
        skipped.append(entry)
    paths = list(dict.fromkeys(s["path"] for s in skipped))
    if len(paths) > max(NAMED_UNREADABLE, MAX_UNREADABLE_SHARE * n_train):
        raise DataError(f"{len(paths)} of the {n_train} training images under {root} can no longer be read "
                        f"(first: {skipped[0]['path']}: {skipped[0]['reason']}): moved or deleted while "
                        "training? Stopped; nothing was written")


def _check_readable(n_train_seen: int, n_val_seen: int, n_val: int, root: Path) -> None:
    """DataError when an epoch read no training image, or its validation pass no validation image."""
    if not n_train_seen:
        raise DataError(f"no training image under {root} could be read in a whole epoch: moved or deleted? "
                        "Stopped; nothing was written")
    if n_val and not n_val_seen:
        raise DataError(f"none of the {n_val} validation images under {root} can be read any more: moved or "
                        "deleted? Stopped; nothing was written")


def _fit_linear(model: nn.Module, arch: str, root: Path, train: list[Sample], val: list[Sample],
                pre: Preprocess, cfg: TrainConfig, device: str, ddp: Dist,
                n_classes: int) -> tuple[list[dict[str, float]], _FitBest, list[dict[str, str]]]:
    """``linear``: the pooled features of the frozen backbone, computed once, train the new head."""
    from .features import PrefixEngine

    freeze_for_mode(model, arch, "linear")
    head = head_of(model, arch)
    head_path = get_arch(arch).head
    set_submodule(model, head_path, nn.Identity())
    try:
        engine = PrefixEngine(model, (3, pre.crop, pre.crop), device, cfg.engine)
        cache, ytr, fva, yva, skipped = _cache(engine, root, train, val, pre, cfg, ddp, views=1, what="features")
    finally:
        set_submodule(model, head_path, head)
    groups = param_groups(head.parameters(), head.parameters(), cfg.resolved_lr(), cfg.backbone_lr_scale)
    result = _train_on_cache(head, head, groups, cache, ytr, fva, yva, cfg, device, ddp, n_classes,
                             cfg.resolved_epochs(), max(cfg.batch_size, 64), "train head")
    return (*result, skipped)


def _val_figures(out: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> tuple[float, float, float]:
    """Validation loss, top-1 and the early-stopping score of one epoch's logits."""
    if not len(labels):
        return 0.0, 0.0, 0.0
    out = out.float()
    return (float(nn.functional.cross_entropy(out, labels)), float((out.argmax(1) == labels).float().mean()),
            _val_score(out, labels, cfg))


def _fit_cached(model: nn.Module, arch: str, root: Path, train: list[Sample], val: list[Sample],
                pre: Preprocess, cfg: TrainConfig, device: str, ddp: Dist,
                n_classes: int) -> tuple[list[dict[str, float]], _FitBest, list[dict[str, str]]]:
    """``partial`` on a CPU: the frozen prefix runs once per image and view, the tail trains on that.

    Training images get ``cfg.views`` cached views (the evaluation preprocessing, then augmented
    ones); each epoch draws one view per image. The prefix's BatchNorm statistics stay frozen, as in
    the end-to-end path; the tail's BatchNorm layers train.
    """
    from .features import PrefixEngine
    from .models import split_at

    freeze_for_mode(model, arch, "partial", cfg.unfreeze)
    prefix, tail = split_at(model, arch, cfg.unfreeze)
    engine = PrefixEngine(prefix, (3, pre.crop, pre.crop), device, cfg.engine)
    cache, ytr, fva, yva, skipped = _cache(engine, root, train, val, pre, cfg, ddp, views=cfg.views,
                                           what="activations")
    groups = param_groups((p for p in tail.parameters() if p.requires_grad), head_of(model, arch).parameters(),
                          cfg.resolved_lr(), cfg.backbone_lr_scale)
    result = _train_on_cache(tail, model, groups, cache, ytr, fva, yva, cfg, device, ddp, n_classes,
                             cfg.resolved_epochs(cached=True), cfg.batch_size, f"train last {cfg.unfreeze} block(s)")
    return (*result, skipped)


def _cache(engine: Any, root: Path, train: list[Sample], val: list[Sample], pre: Preprocess, cfg: TrainConfig,
           ddp: Dist, views: int, what: str,
           ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, list[dict[str, str]]]:
    """The frozen part's outputs: ``views`` per training image (view 0 plain, the others augmented) as one
    (views, N, ...) float16 tensor (half the memory; training noise is far larger than the rounding),
    validation's in float32 (so the stored validation logits are the model's own), labels, bad files."""
    common = {"ddp": ddp, "quiet": cfg.quiet, "workers": cfg.workers}
    cached: list[torch.Tensor] = []
    labels, bad = np.zeros(0, np.int64), []
    for v in range(views):
        out, y, b = run_over(engine, root, train, pre, augment=v > 0, aug_scale=cfg.aug_scale,
                             seed=cfg.seed * 1000 + v, dtype=torch.float16 if views > 1 else torch.float32,
                             desc=f"{what} (train, view {v + 1}/{views}, {engine.name})", **common)
        if v and not np.array_equal(y, labels):
            raise ConfigError("a training image became unreadable between two cached views; run again")
        cached.append(out)
        labels, bad = y, bad + b
    fva, yva, bad_va = run_over(engine, root, val, pre, desc=f"{what} (val, {engine.name})", **common)
    _check_readable(len(labels), len(yva), len(val), root)
    return torch.stack(cached), labels, fva, yva, _skipped(sorted(set(bad)) + bad_va)


def _train_on_cache(trainable: nn.Module, saved: nn.Module, groups: list[dict[str, Any]], cache: torch.Tensor,
                    ytr: np.ndarray, fva: torch.Tensor, yva: np.ndarray, cfg: TrainConfig, device: str, ddp: Dist,
                    n_classes: int, epochs: int, bs: int, desc: str) -> tuple[list[dict[str, float]], _FitBest]:
    """Train ``trainable`` (the head, or the tail of blocks and head) on cached inputs ``cache`` (views, N,
    ...), one view per image per epoch, with early stopping on the validation inputs ``fva``; ``saved``
    (the module whose best state is kept and restored) holds ``trainable``. Identical on every rank, so
    no gradient exchange is needed under torchrun."""
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, epochs * max(1, math.ceil(len(ytr) / bs)))
    crit = _criterion(cfg, ytr, n_classes, device)
    ttr = torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        order = _epoch_order(ttr, gen, cfg)
        pick = torch.randint(0, len(cache), (len(order),), generator=gen)
        for s in range(0, len(order), bs):
            b = order[s:s + bs]
            yield cache[pick[s:s + bs], b].float().to(device), ttr[b].to(device), None

    def one_epoch(_epoch: int) -> tuple[float, int]:
        trainable.train()
        return optimise(trainable, batches(), opt, sched, lambda out, y, _x, _e: crit(out, y))

    def validate(seen: int) -> tuple[np.ndarray, np.ndarray]:
        trainable.eval()
        with torch.no_grad():
            out = torch.cat([trainable(fva[i:i + 256].to(device)).float().cpu()
                             for i in range(0, len(fva), 256)]) if len(fva) else torch.zeros(0, n_classes)
        return out.numpy(), yva

    with progress(cfg.quiet or not ddp.main) as bar:
        task = bar.add_task(desc, total=epochs, info="")
        return _fit_epochs(epochs, one_epoch, validate, cfg, saved,
                           lambda _epoch, entry: bar.update(task, advance=1, info=f"val top-1 {entry['val_top1']:.3f}"))


def optimise(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, Any]], opt: torch.optim.Optimizer,
             sched: Any, loss_of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor], *,
             autocast: Callable[[], Any] | None = None, scaler: Any = None) -> tuple[float, int]:
    """One pass of optimiser steps: the one batch loop of every fit (finetune's cached and end-to-end
    paths, pruning recovery, adapt's self-training, QAT).

    ``batches`` yields (inputs, labels, extra) on the training device; ``loss_of(outputs, labels,
    inputs, extra)`` is the loss (cross-entropy, distillation, ...). ``autocast``: a context factory
    around forward and loss (AMP on CUDA); ``scaler``: fp16's ``GradScaler``, whose skipped steps (inf
    gradients: its scale drops) do not advance ``sched``, which counts optimiser steps (None: a
    constant rate). Returns (sum of loss × batch size, images seen)."""
    total, seen = 0.0, 0
    for xb, yb, extra in batches:
        with autocast() if autocast is not None else contextlib.nullcontext():
            loss = loss_of(net(xb), yb, xb, extra)
        opt.zero_grad(set_to_none=True)
        stepped = True
        if scaler is not None:
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            stepped = scaler.get_scale() >= scale
        else:
            loss.backward()
            opt.step()
        if sched is not None and stepped:
            sched.step()
        total, seen = total + loss.item() * len(xb), seen + len(xb)
    return total, seen


KEEP = ("best", "last")


def run_epochs(epochs: int, one_epoch: Callable[[int], tuple[float, int]], *,
               judge: Callable[[int, int], Verdict] | None = None, keep: str = "last",
               saved: nn.Module | None = None, patience: int | None = None, judge_first: bool = False,
               before: Callable[[int], None] | None = None,
               after: Callable[[int, dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]], Best]:
    """The one epoch loop of every training: finetune's cached and end-to-end paths (and so pruning
    recovery), QAT, and each round of adapt's self-training. Epochs are numbered from 1; each runs
    ``before(epoch)`` (per-epoch work that is not a step: progressive unfreezing, a sampler's epoch),
    ``one_epoch(epoch)`` (the training: loss sum and images, as :func:`optimise` returns), then
    ``judge(epoch, images_seen)`` (a :class:`Verdict`; None: epochs are not judged) and ``after(epoch,
    entry)`` (progress).

    ``keep``: ``"best"`` loads into ``saved`` the state of the best-judged epoch (ties: the earlier one);
    ``"last"`` leaves the last epoch's. ``patience``: stop once that many epochs in a row did not beat
    the best (None: never early). ``judge_first``: judge the model before training as epoch 0, a
    candidate like any other (QAT: the calibrated, untrained model).

    Returns the history, one entry per epoch (``epoch``, ``train_loss``, the verdict's fields,
    ``seconds`` with judging, ``train_images_per_s`` of the training alone; epoch 0 has the verdict's
    fields only), and the best epoch."""
    if keep not in KEEP or (keep == "best" and (judge is None or saved is None)):
        raise ValueError(f"keep={keep!r} needs one of {KEEP}, and 'best' a judge and a module to restore")
    if judge is None and (patience is not None or judge_first):
        raise ValueError("patience and judge_first need a judge")
    best, history = Best(), []
    state_of = saved if keep == "best" else None
    if judge_first:
        verdict = judge(0, 0)
        history.append({"epoch": 0, **verdict.fields})
        best.offer(0, verdict, state_of)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if before is not None:
            before(epoch)
        total, seen = one_epoch(epoch)
        trained = time.perf_counter() - t0
        verdict = judge(epoch, seen) if judge is not None else None
        # Training images (or cached inputs) per second of the epoch's optimiser steps, judging not
        # counted: what says whether a GPU is fed.
        history.append({"epoch": epoch, "train_loss": total / max(1, seen), **(verdict.fields if verdict else {}),
                        "seconds": time.perf_counter() - t0,
                        "train_images_per_s": seen / trained if trained > 0 else None})
        if after is not None:
            after(epoch, history[-1])
        if verdict is not None:
            best.offer(epoch, verdict, state_of)
            if patience is not None and epoch - best.epoch >= patience:
                break
    if keep == "best" and best.state is not None and saved is not None:
        saved.load_state_dict(best.state)
    return history, best


def _fit_epochs(epochs: int, one_epoch: Callable[[int], tuple[float, int]],
                validate: Callable[[int], tuple[np.ndarray, np.ndarray]], cfg: TrainConfig, saved: nn.Module,
                after: Callable[[int, dict[str, Any]], None], before: Callable[[int], None] | None = None,
                ) -> tuple[list[dict[str, float]], _FitBest]:
    """:func:`run_epochs` as both fit paths use it: ``validate(images_seen)`` gives the validation
    (logits, labels); the best epoch by ``cfg``'s validation score (ties: lower loss) is kept,
    ``cfg.patience`` epochs without a better one stop it, and ``saved`` ends with the best state."""

    def judge(_epoch: int, seen: int) -> Verdict:
        logits, labels = validate(seen)
        vloss, vacc, vscore = _val_figures(torch.from_numpy(logits), torch.from_numpy(labels), cfg)
        return Verdict(vscore, {"val_loss": vloss, "val_top1": vacc, "val_score": vscore}, -vloss, (logits, labels))

    history, best = run_epochs(epochs, one_epoch, judge=judge, keep="best", saved=saved, patience=cfg.patience,
                               before=before, after=after)
    logits, labels = best.kept if best.kept is not None else (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    return history, _FitBest(best.epoch - 1, logits, labels)


def param_groups(params: Any, head_params: Any, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of every fit: the parameters of ``head_params`` at ``lr``, the others of
    ``params`` (unfrozen backbone blocks) at ``lr * backbone_lr_scale``; an empty group is left out.
    Pass every parameter that may train (progressive unfreezing turns ``requires_grad`` on later)."""
    head_ids = {id(p) for p in head_params}
    params = list(params)
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": lr},
              {"params": [p for p in params if id(p) not in head_ids], "lr": lr * backbone_lr_scale}]
    return [g for g in groups if g["params"]]


DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.7  # share of the loss that matches the teacher; the rest is the labels' cross-entropy


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      label_loss: nn.Module) -> torch.Tensor:
    """Hinton et al.'s loss: KL divergence between temperature-softened distributions (scaled by T²
    so its gradients keep their size) blended with the ordinary label loss."""
    return DISTILL_WEIGHT * kd_loss(student, teacher) + (1 - DISTILL_WEIGHT) * label_loss(student, labels)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of (N, classes) logits softened by ``DISTILL_TEMPERATURE``, times T² so
    its gradients keep their size (Hinton et al., 2015); a scalar."""
    t = DISTILL_TEMPERATURE
    return nn.functional.kl_div(nn.functional.log_softmax(student.float() / t, dim=1),
                                nn.functional.log_softmax(teacher.float() / t, dim=1),
                                reduction="batchmean", log_target=True) * t * t


def _decode_once(root: Path, train: list[Sample], val: list[Sample], pre: Preprocess, cfg: TrainConfig,
                 ddp: Dist) -> tuple[Any, Any] | None:
    """The training and validation sets decoded once (``decoded.py``), or None where the per-epoch loader
    serves instead: ``cfg.cache_mb`` 0, frames over that limit (said in a line), or torchrun (each rank
    decodes its own share there)."""
    from .decoded import decode, estimated_mb

    if cfg.cache_mb <= 0 or ddp.world > 1:
        return None
    need = estimated_mb(root, train, pre, True) + estimated_mb(root, val, pre, False)
    if need > cfg.cache_mb:
        log.info("decoding every epoch: the decoded images would take ~%.0f MB, over the %d MB cache limit "
                 "(--cache-mb)", need, cfg.cache_mb)
        return None
    workers = max(1, os.cpu_count() or 1)
    t0 = time.perf_counter()
    data = decode(root, train, pre, train=True, workers=workers)
    held = decode(root, val, pre, train=False, workers=workers)
    log.debug("decoded %d + %d images once (%.0f MB) in %.1f s", len(data.kept), len(held.kept),
              (data.nbytes + held.nbytes) / 2**20, time.perf_counter() - t0)
    return data, held


@torch.no_grad()
def _decoded_logits(model: nn.Module, held: Any, pre: Preprocess, device: str, batch: int = 64) -> np.ndarray:
    """The model's (N, classes) float32 logits on decoded evaluation frames (exactly the loader's inputs)."""
    from .decoded import normalise

    model.eval()
    outs = [model(_to(normalise(held.images[i:i + batch].to(device), pre), device)).float().cpu()
            for i in range(0, len(held.kept), batch)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def _fit_end_to_end(model: nn.Module, arch: str, root: Path, train: list[Sample], val: list[Sample],
                    pre: Preprocess, cfg: TrainConfig, device: str, ddp: Dist,
                    teacher: nn.Module | None = None, n_classes: int | None = None,
                    ) -> tuple[list[dict[str, float]], _FitBest, list[dict[str, str]]]:
    from torch.utils.data.distributed import DistributedSampler

    cuda = device.startswith("cuda")
    unfreeze_at = (lambda e: min(cfg.unfreeze, e + 1)) if cfg.progressive else (lambda e: cfg.unfreeze)
    frozen = freeze_for_mode(model, arch, cfg.mode, unfreeze_at(0))
    groups = param_groups(model.parameters(), head_of(model, arch).parameters(), cfg.resolved_lr(),
                          cfg.backbone_lr_scale)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if cuda else None,
            find_unused_parameters=cfg.progressive or cfg.mode != "full")
    ds = ImageDataset(root, train, pre, train=True, aug_scale=cfg.aug_scale)
    train_labels = np.asarray([s.label for s in train], dtype=np.int64)
    n_classes = n_classes or int(train_labels.max(initial=0)) + 1
    sampler: Any = None
    if ddp.world > 1:
        if cfg.balance == "sampler":
            raise ConfigError("--balance sampler is not available under torchrun; use --balance weights")
        sampler = DistributedSampler(ds, ddp.world, ddp.rank, shuffle=True, seed=cfg.seed)
    elif cfg.balance == "sampler":
        from torch.utils.data import WeightedRandomSampler

        counts = np.bincount(train_labels, minlength=n_classes)
        sampler = WeightedRandomSampler(torch.from_numpy(1.0 / np.maximum(counts, 1)[train_labels]), len(train),
                                        generator=torch.Generator().manual_seed(cfg.seed))
    loader = _loader(ds, cfg.batch_size, True, cfg.workers, cfg.seed, sampler, pin=cuda)
    decoded = _decode_once(root, train, val, pre, cfg, ddp)
    steps_per_epoch = math.ceil(len(decoded[0].kept) / cfg.batch_size) if decoded else len(loader)
    epochs = cfg.resolved_epochs()
    sched = _schedule(opt, epochs * max(1, steps_per_epoch))
    crit = _criterion(cfg, train_labels, n_classes, device)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    skipped: list[dict[str, str]] = []
    frozen_now = [frozen]
    gen = torch.Generator().manual_seed(cfg.seed)
    if decoded:
        _check_unreadable(skipped, decoded[0].bad, len(train), root)
        if cuda:  # the frames live on the GPU: each batch is gathered, cropped and flipped there
            decoded[0].images = decoded[0].images.to(device)

    def batches(advance: Callable[[], None]) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        if decoded:
            from .decoded import augmented_batch

            data = decoded[0]
            order = _epoch_order(data.labels, gen, cfg)
            for s in range(0, len(order), cfg.batch_size):
                b = order[s:s + cfg.batch_size]
                x = augmented_batch(data, b, pre, cfg.aug_scale, gen, device)
                yield _to(x, device), data.labels[b].to(device), None
                advance()
            return
        for x, y, _i, bad in loader:
            if bad:
                _check_unreadable(skipped, bad, len(train), root)
            if len(x):
                yield _to(x, device), y.to(device), None
            advance()

    def loss_of(out: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor, _extra: Any) -> torch.Tensor:
        if teacher is None:
            return crit(out, yb)
        with torch.no_grad():
            target = teacher(xb)
        return distillation_loss(out, target, yb, crit)

    def validate(seen: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.autocast("cuda", dtype=amp_dtype, enabled=cuda):
            if decoded:
                logits, labels = _decoded_logits(model, decoded[1], pre, device), decoded[1].labels.numpy()
            else:
                logits, labels, _ = predict_logits(model, root, val, pre, device, ddp=ddp, workers=cfg.workers)
        _check_readable(seen, len(labels), len(val), root)
        return logits, labels

    with progress(cfg.quiet or not ddp.main) as bar:
        task = bar.add_task(f"train ({cfg.mode})", total=epochs * steps_per_epoch, info="")

        def before(epoch: int) -> None:  # epochs from 1; unfreezing and the sampler count from 0
            if cfg.progressive:
                frozen_now[0] = freeze_for_mode(model, arch, cfg.mode, unfreeze_at(epoch - 1))
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch - 1)

        def one_epoch(_epoch: int) -> tuple[float, int]:
            net.train()
            for m in frozen_now[0]:
                m.eval()
            return optimise(net, batches(lambda: bar.advance(task)), opt, sched, loss_of,
                            autocast=lambda: torch.autocast("cuda", dtype=amp_dtype, enabled=cuda), scaler=scaler)

        history, stop = _fit_epochs(epochs, one_epoch, validate, cfg, model, lambda epoch, entry: bar.update(
            task, info=f"epoch {epoch}/{epochs} val top-1 {entry['val_top1']:.3f}"), before)
    if teacher is not None:
        teacher.cpu()
    return history, stop, skipped
