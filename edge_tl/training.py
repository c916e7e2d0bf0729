"""The fine-tuning loop shared by ``finetune`` and pruning recovery.

Two paths: ``linear`` computes backbone features once (frozen weights *and* BatchNorm statistics) and
trains the head on the cached features, which is what makes CPU fine-tuning take seconds;
``partial`` and ``full`` train end to end with augmentation, AMP and channels_last on CUDA. Both run
under ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .bench.accuracy import classification_metrics
from .data import Sample
from .errors import ConfigError
from .models import freeze_for_mode, get_arch, head_of, set_submodule
from .preprocess import Preprocess, load_image
from .progress import progress

log = logging.getLogger("edge_tl")

DEFAULT_EPOCHS = {"linear": 30, "partial": 8, "full": 8}
DEFAULT_LR = {"linear": 3e-3, "partial": 1e-3, "full": 5e-4}


@dataclass
class TrainConfig:
    """Hyper-parameters of one fit; ``None`` means the mode's default."""

    mode: str = "linear"
    epochs: int | None = None
    unfreeze: int = 3
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
    # Pretrained layers move this much more gently than the new head; pruning recovery sets 1 (the
    # pruned backbone is what needs to move).
    backbone_lr_scale: float = 0.1

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.mode]

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


@dataclass
class FitResult:
    """The best model (loaded into the module passed in) and what happened on the way."""

    history: list[dict[str, float]]
    best_epoch: int
    val: dict[str, Any]
    device: str
    world_size: int
    seconds: float
    seconds_per_epoch: float
    skipped_during_training: list[dict[str, str]] = field(default_factory=list)


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
            self.aug = T.Compose([T.RandomResizedCrop(pre.crop, scale=aug_scale, interpolation=interp),
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


def _loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int,
            sampler: Any = None, pin: bool = False) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, generator=g, pin_memory=pin,
                      persistent_workers=False)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str,
                   batch_size: int = 64, workers: int = 0, ddp: Dist | None = None,
                   quiet: bool = True, desc: str = "predict") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits, labels (in ``samples`` order, bad files dropped) and the names of files that failed."""
    ddp = ddp or Dist()
    idx = list(range(ddp.rank, len(samples), ddp.world))
    ds = ImageDataset(root, [samples[i] for i in idx], pre, train=False)
    model.eval()
    outs, order, bad = [], [], []
    with progress(quiet or not ddp.main) as bar:
        task = bar.add_task(desc, total=len(ds), info="")
        for x, _y, i, b in _loader(ds, batch_size, False, workers, 0):
            bad += b
            if len(x):
                outs.append(model(_to(x, device)).float().cpu())
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
    return logits.numpy(), labels, bad


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
    start = time.perf_counter()
    if cfg.mode == "linear":
        if teacher is not None:
            raise ConfigError("distillation needs end-to-end training (mode partial or full), not linear")
        history, stop, skipped = _fit_linear(model, arch, root, train, val, pre, cfg, device, ddp)
    else:
        history, stop, skipped = _fit_end_to_end(model, arch, root, train, val, pre, cfg, device, ddp, teacher)
    seconds = time.perf_counter() - start
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    epochs_run = max(len(history), 1)
    logits, labels = stop.val_logits, stop.val_labels
    return FitResult(history, stop.best_epoch, classification_metrics(logits, labels, classes), device,
                     ddp.world, seconds, seconds / epochs_run, skipped)


def _schedule(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over all steps, after a short linear warm-up."""
    warm = max(1, total_steps // 20)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


class _EarlyStop:
    """Tracks the best epoch by validation top-1 (ties broken by loss), its weights and validation
    logits (so no extra pass is needed at the end), and when to stop."""

    def __init__(self, patience: int, val_labels: np.ndarray | None = None) -> None:
        self.patience, self.best, self.best_epoch, self.state = patience, (-1.0, math.inf), -1, None
        self.val_logits = np.zeros((0, 0), np.float32)
        self.val_labels = val_labels if val_labels is not None else np.zeros(0, np.int64)

    def update(self, epoch: int, acc: float, loss: float, module: nn.Module, logits: np.ndarray,
               labels: np.ndarray) -> bool:
        if (acc, -loss) > (self.best[0], -self.best[1]):
            self.best, self.best_epoch = (acc, loss), epoch
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
            self.val_logits, self.val_labels = logits, labels
        return epoch - self.best_epoch >= self.patience


def _fit_linear(model: nn.Module, arch: str, root: Path, train: list[Sample], val: list[Sample],
                pre: Preprocess, cfg: TrainConfig, device: str,
                ddp: Dist) -> tuple[list[dict[str, float]], _EarlyStop, list[dict[str, str]]]:
    freeze_for_mode(model, arch, "linear")
    head = head_of(model, arch)
    head_path = get_arch(arch).head
    set_submodule(model, head_path, nn.Identity())
    try:
        ftr, ytr, bad_tr = predict_logits(model, root, train, pre, device, ddp=ddp, quiet=cfg.quiet,
                                          workers=cfg.workers, desc="features (train)")
        fva, yva, bad_va = predict_logits(model, root, val, pre, device, ddp=ddp, quiet=cfg.quiet,
                                          workers=cfg.workers, desc="features (val)")
    finally:
        set_submodule(model, head_path, head)
    skipped = [{"path": b.split(":", 1)[0], "reason": b.split(":", 1)[1].strip()} for b in bad_tr + bad_va]
    # The head trains on cached features: identical on every rank, so no gradient exchange is needed.
    gen = torch.Generator().manual_seed(cfg.seed)
    xtr, ttr = torch.from_numpy(ftr).to(device), torch.from_numpy(ytr).to(device)
    xva, tva = torch.from_numpy(fva).to(device), torch.from_numpy(yva).to(device)
    epochs, bs = cfg.resolved_epochs(), max(cfg.batch_size, 64)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.resolved_lr(), weight_decay=cfg.weight_decay)
    steps = epochs * max(1, math.ceil(len(xtr) / bs))
    sched = _schedule(opt, steps)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    stop, history = _EarlyStop(cfg.patience), []
    with progress(cfg.quiet or not ddp.main) as bar:
        task = bar.add_task("train head", total=epochs, info="")
        for epoch in range(epochs):
            head.train()
            perm = torch.randperm(len(xtr), generator=gen).to(device)
            total = 0.0
            for s in range(0, len(xtr), bs):
                b = perm[s:s + bs]
                loss = crit(head(xtr[b]), ttr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(b)
            head.eval()
            with torch.no_grad():
                out = head(xva)
                vloss = float(nn.functional.cross_entropy(out, tva))
                vacc = float((out.argmax(1) == tva).float().mean()) if len(tva) else 0.0
            history.append({"epoch": epoch, "train_loss": total / max(1, len(xtr)), "val_loss": vloss,
                            "val_top1": vacc})
            bar.update(task, advance=1, info=f"val top-1 {vacc:.3f}")
            if stop.update(epoch, vacc, vloss, head, out.float().cpu().numpy(), yva):
                break
    head.load_state_dict(stop.state)
    return history, stop, skipped


DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.7  # share of the loss that matches the teacher; the rest is the labels' cross-entropy


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      label_loss: nn.Module) -> torch.Tensor:
    """Hinton et al.'s loss: KL divergence between temperature-softened distributions (scaled by T²
    so its gradients keep their size) blended with the ordinary label loss."""
    t = DISTILL_TEMPERATURE
    kd = nn.functional.kl_div(nn.functional.log_softmax(student.float() / t, dim=1),
                              nn.functional.log_softmax(teacher.float() / t, dim=1),
                              reduction="batchmean", log_target=True) * t * t
    return DISTILL_WEIGHT * kd + (1 - DISTILL_WEIGHT) * label_loss(student, labels)


def _fit_end_to_end(model: nn.Module, arch: str, root: Path, train: list[Sample], val: list[Sample],
                    pre: Preprocess, cfg: TrainConfig, device: str, ddp: Dist,
                    teacher: nn.Module | None = None) -> tuple[list[dict[str, float]], _EarlyStop,
                                                                list[dict[str, str]]]:
    from torch.utils.data.distributed import DistributedSampler

    cuda = device.startswith("cuda")
    unfreeze_at = (lambda e: min(cfg.unfreeze, e + 1)) if cfg.progressive else (lambda e: cfg.unfreeze)
    frozen = freeze_for_mode(model, arch, cfg.mode, unfreeze_at(0))
    head_ids = {id(p) for p in head_of(model, arch).parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": cfg.resolved_lr()},
        {"params": [p for p in model.parameters() if id(p) not in head_ids],
         "lr": cfg.resolved_lr() * cfg.backbone_lr_scale},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if cuda else None,
            find_unused_parameters=cfg.progressive or cfg.mode != "full")
    ds = ImageDataset(root, train, pre, train=True, aug_scale=cfg.aug_scale)
    sampler = DistributedSampler(ds, ddp.world, ddp.rank, shuffle=True, seed=cfg.seed) if ddp.world > 1 else None
    loader = _loader(ds, cfg.batch_size, True, cfg.workers, cfg.seed, sampler, pin=cuda)
    epochs = cfg.resolved_epochs()
    sched = _schedule(opt, epochs * max(1, len(loader)))
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    stop, history, skipped = _EarlyStop(cfg.patience), [], []
    with progress(cfg.quiet or not ddp.main) as bar:
        task = bar.add_task(f"train ({cfg.mode})", total=epochs * len(loader), info="")
        for epoch in range(epochs):
            if cfg.progressive:
                frozen = freeze_for_mode(model, arch, cfg.mode, unfreeze_at(epoch))
            if sampler is not None:
                sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            net.train()
            for m in frozen:
                m.eval()
            total, seen = 0.0, 0
            for x, y, _i, bad in loader:
                for b in bad:
                    log.warning("skipped unreadable image during training: %s", b)
                    skipped.append({"path": b.split(":", 1)[0], "reason": b.split(":", 1)[1].strip()})
                if len(x):
                    xb, yb = _to(x, device), y.to(device)
                    with torch.autocast("cuda", dtype=amp_dtype, enabled=cuda):
                        out = net(xb)
                        if teacher is None:
                            loss = crit(out, yb)
                        else:
                            with torch.no_grad():
                                target = teacher(xb)
                            loss = distillation_loss(out, target, yb, crit)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    total, seen = total + loss.item() * len(x), seen + len(x)
                sched.step()
                bar.advance(task)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=cuda):
                logits, labels, _ = predict_logits(model, root, val, pre, device, ddp=ddp, workers=cfg.workers)
            vt = torch.from_numpy(labels)
            lt = torch.from_numpy(logits).float()
            vloss = float(nn.functional.cross_entropy(lt, vt)) if len(vt) else 0.0
            vacc = float((lt.argmax(1) == vt).float().mean()) if len(vt) else 0.0
            history.append({"epoch": epoch, "train_loss": total / max(1, seen), "val_loss": vloss,
                            "val_top1": vacc, "seconds": time.perf_counter() - t0})
            bar.update(task, info=f"epoch {epoch + 1}/{epochs} val top-1 {vacc:.3f}")
            if stop.update(epoch, vacc, vloss, model, logits, labels):
                break
    model.load_state_dict(stop.state)
    if teacher is not None:
        teacher.cpu()
    return history, stop, skipped
