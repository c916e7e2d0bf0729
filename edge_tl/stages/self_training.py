"""Self-training of the adapt stage (FixMatch-style pseudo-labels, Sohn et al. 2020): the model labels the
unlabelled images it is sure of, on a plain and an augmented view, and trains on them for a few rounds, on
the fine-tune's own path (cached frozen layers for linear/partial, end to end for full), the one epoch loop
(``training.run_epochs``) and the one batch loop (``training.optimise``).

A round is not an epoch: it labels the images anew, starts a fresh optimiser and learning-rate schedule
over its own ``epochs``, trains them (``run_epochs``, not judged: no labelled images here, so the last
epoch stays), labels again and stops when few answers changed. ``self_train`` loops over rounds.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import Sample
from ..errors import DataError
from ..preprocess import Preprocess

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..settings import AdaptSettings

log = logging.getLogger("edge_tl")


def select_pseudo_labels(clean: np.ndarray, augmented: np.ndarray | None, threshold: float,
                         class_factor: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The images to train on and their pseudo-labels, from logits on the plain (``clean``) and on an
    augmented view of every image (N x classes each).

    An image qualifies when its plain-view softmax confidence is ≥ ``threshold`` and the augmented
    view's answer is the same (FixMatch's confidence and consistency). Per predicted class the most
    confident qualifying images are kept, at most ``class_factor`` times the smallest non-empty
    class's count (class-balanced: one class that dominates the new domain cannot take over). Classes
    with no qualifying image are named in ``info["missing"]``; with fewer than two classes left nothing
    is selected (training on one class only teaches the model to say it).
    """
    z = clean - clean.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    pred, conf = p.argmax(axis=1), p.max(axis=1)
    ok = conf >= threshold
    if augmented is not None:
        ok &= augmented.argmax(axis=1) == pred
    n_classes = clean.shape[1]
    candidates = [int((ok & (pred == c)).sum()) for c in range(n_classes)]
    present = [n for n in candidates if n]
    info: dict[str, Any] = {"candidates_per_class": candidates,
                            "missing": [c for c, n in enumerate(candidates) if n == 0]}
    if len(present) < 2:
        info |= {"cap": 0, "selected_per_class": [0] * n_classes}
        return np.zeros(0, np.int64), np.zeros(0, np.int64), info
    cap = max(1, math.floor(class_factor * min(present)))
    chosen = []
    for c in range(n_classes):
        idx = np.flatnonzero(ok & (pred == c))
        chosen.append(idx[np.argsort(-conf[idx], kind="stable")][:cap])
    idx = np.concatenate(chosen)
    info |= {"cap": cap, "selected_per_class": [len(c) for c in chosen],
             "mean_confidence_selected": float(conf[idx].mean())}
    return idx, pred[idx], info


class _Learner:
    """What self-training needs of a model: logits on every image (plain and one augmented view), and a
    few epochs of training on pseudo-labelled images. ``describe`` says what trains."""

    describe = ""

    def predict(self, round_: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def train(self, idx: np.ndarray, labels: np.ndarray, round_: int) -> float:
        raise NotImplementedError


class _CachedLearner(_Learner):
    """``linear`` / ``partial``: the frozen part runs once per image and view (``PrefixEngine``, ONNX
    Runtime on a CPU) and only the head (linear) or the last ``unfreeze`` blocks and head (partial)
    train, on those cached inputs, as the fine-tune did. View 0 is the plain image, the others are
    training augmentations (random-resized crop and flip)."""

    def __init__(self, model: nn.Module, arch: str, cfg: Any, root: Path, samples: list[Sample], pre: Preprocess,
                 st: AdaptSettings, device: str, quiet: bool) -> None:
        import torch
        import torch.nn as nn

        from ..features import PrefixEngine
        from ..models import freeze_for_mode, get_arch, head_of, set_submodule, split_at
        from ..training import param_groups

        self.st, self.cfg, self.device = st, cfg, device
        freeze_for_mode(model, arch, cfg.mode, cfg.unfreeze)
        head = head_of(model, arch)
        shape = (3, pre.crop, pre.crop)
        if cfg.mode == "linear":
            head_path = get_arch(arch).head
            set_submodule(model, head_path, nn.Identity())
            try:
                self.cache = self._views(PrefixEngine(model, shape, device, cfg.engine), root, samples, pre, quiet,
                                         "features")
            finally:
                set_submodule(model, head_path, head)
            self.trainable: nn.Module = head
            self.groups = param_groups(head.parameters(), head.parameters(), self._lr(), cfg.backbone_lr_scale)
            self.batch = max(cfg.batch_size, 64)  # as fit's linear path
            self.describe = "the head, on cached backbone features"
        else:
            prefix, tail = split_at(model, arch, cfg.unfreeze)
            self.cache = self._views(PrefixEngine(prefix, shape, device, cfg.engine), root, samples, pre, quiet,
                                     "activations")
            self.trainable = tail
            self.groups = param_groups((p for p in tail.parameters() if p.requires_grad), head.parameters(),
                                       self._lr(), cfg.backbone_lr_scale)
            self.batch = cfg.batch_size
            self.describe = f"the last {cfg.unfreeze} block(s) and the head, on cached activations"
        self.trainable.to(device)
        # The teacher is the model self-training starts from, on the same view as the student.
        teacher = copy.deepcopy(self.trainable).eval()
        self.teacher_logits = torch.stack([self._logits(teacher, v) for v in range(len(self.cache))])
        del teacher

    def _lr(self) -> float:
        return self.st.lr if self.st.lr is not None else self.cfg.resolved_lr()

    def _views(self, engine: Any, root: Path, samples: list[Sample], pre: Preprocess, quiet: bool,
               what: str) -> torch.Tensor:
        """(views, N, ...) float16 (as training's cache: the rounding is far below training noise)."""
        import torch

        from ..training import run_over

        out = []
        for v in range(self.st.views):
            x, _y, bad = run_over(engine, root, samples, pre, augment=v > 0, aug_scale=self.cfg.aug_scale,
                                  seed=self.st.seed * 1000 + v, workers=self.cfg.workers, quiet=quiet,
                                  dtype=torch.float16, desc=f"{what} (unlabelled, view {v + 1}/{self.st.views}, "
                                                              f"{engine.name})")
            if bad or len(x) != len(samples):
                raise DataError(f"unlabelled image(s) became unreadable while adapting: {', '.join(bad[:3])}")
            out.append(x)
        return torch.stack(out)

    def _logits(self, module: nn.Module, view: int) -> torch.Tensor:
        import torch

        module.eval()
        with torch.no_grad():
            return torch.cat([module(self.cache[view, i:i + 256].float().to(self.device)).float().cpu()
                              for i in range(0, self.cache.shape[1], 256)])

    def predict(self, round_: int) -> tuple[np.ndarray, np.ndarray | None]:
        aug = self._logits(self.trainable, 1).numpy() if len(self.cache) > 1 else None
        return self._logits(self.trainable, 0).numpy(), aug

    def train(self, idx: np.ndarray, labels: np.ndarray, round_: int) -> float:
        import torch

        from ..training import _schedule, kd_loss, optimise, run_epochs

        epochs = self.st.epochs or 5
        gen = torch.Generator().manual_seed(self.st.seed * 100 + round_)
        opt = torch.optim.AdamW(self.groups, weight_decay=self.cfg.weight_decay)
        sched = _schedule(opt, epochs * math.ceil(len(idx) / self.batch))
        crit = torch.nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        index, target = torch.from_numpy(idx), torch.from_numpy(labels)
        # FixMatch: train on augmented views with the plain view's label (the plain view when there is no other).
        n_aug = len(self.cache) - 1

        def batches(order: torch.Tensor, view: torch.Tensor) -> Any:
            for s in range(0, len(order), self.batch):
                b = order[s:s + self.batch]
                i, v = index[b], view[b]
                yield self.cache[v, i].float().to(self.device), target[b].to(self.device), (v, i)

        def loss_of(out: torch.Tensor, y: torch.Tensor, _x: torch.Tensor, vi: Any) -> torch.Tensor:
            loss = crit(out, y)
            if self.st.distill:
                loss = loss + self.st.distill * kd_loss(out, self.teacher_logits[vi].to(self.device))
            return loss

        def one_epoch(_epoch: int) -> tuple[float, int]:
            self.trainable.train()
            order = torch.randperm(len(idx), generator=gen)
            view = (torch.randint(0, n_aug, (len(idx),), generator=gen) + 1 if n_aug
                    else torch.zeros(len(idx), dtype=torch.long))
            return optimise(self.trainable, batches(order, view), opt, sched, loss_of)

        history, _ = run_epochs(epochs, one_epoch)  # not judged: the round's last epoch stays
        self.trainable.eval()
        return history[-1]["train_loss"]


class _EndToEndLearner(_Learner):
    """``full``: every layer trains, on augmented images loaded per batch (the fine-tune's own path);
    the teacher (the starting model) scores the same augmented batch."""

    def __init__(self, model: nn.Module, arch: str, cfg: Any, root: Path, samples: list[Sample], pre: Preprocess,
                 st: AdaptSettings, device: str, quiet: bool) -> None:
        from ..models import freeze_for_mode, head_of
        from ..training import param_groups

        self.model, self.cfg, self.st, self.device, self.quiet = model, cfg, st, device, quiet
        self.root, self.samples, self.pre = root, samples, pre
        # The fine-tune's own mode (full, or partial --progressive): frozen layers keep their statistics.
        self.frozen = freeze_for_mode(model, arch, cfg.mode, cfg.unfreeze)
        self.describe = ("every layer, end to end" if cfg.mode == "full"
                         else f"the last {cfg.unfreeze} block(s) and the head, end to end")
        lr = st.lr if st.lr is not None else cfg.resolved_lr()
        self.groups = param_groups((p for p in model.parameters() if p.requires_grad),
                                   head_of(model, arch).parameters(), lr, cfg.backbone_lr_scale)
        self.teacher = copy.deepcopy(model).eval() if st.distill else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def _run(self, augment: bool, round_: int) -> np.ndarray:
        from ..training import _to, run_over

        self.model.to(self.device).eval()
        out, _y, bad = run_over(lambda x: self.model(_to(x, self.device)).float().cpu(), self.root, self.samples,
                                self.pre, augment=augment, aug_scale=self.cfg.aug_scale,
                                seed=self.st.seed * 1000 + round_, quiet=self.quiet, workers=self.cfg.workers,
                                desc=f"predict (unlabelled{', augmented' if augment else ''})")
        if bad or len(out) != len(self.samples):
            raise DataError(f"unlabelled image(s) became unreadable while adapting: {', '.join(bad[:3])}")
        return out.numpy()

    def predict(self, round_: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self._run(False, round_), (self._run(True, round_) if self.st.views > 1 else None)

    def train(self, idx: np.ndarray, labels: np.ndarray, round_: int) -> float:
        import torch

        from ..training import ImageDataset, _loader, _schedule, _to, kd_loss, optimise, run_epochs

        epochs = self.st.epochs or 2
        chosen = [Sample(self.samples[i].path, int(y)) for i, y in zip(idx.tolist(), labels.tolist(), strict=True)]
        ds = ImageDataset(self.root, chosen, self.pre, train=True, aug_scale=self.cfg.aug_scale)
        loader = _loader(ds, self.cfg.batch_size, True, self.cfg.workers, self.st.seed * 100 + round_)
        opt = torch.optim.AdamW(self.groups, weight_decay=self.cfg.weight_decay)
        sched = _schedule(opt, epochs * max(1, len(loader)))
        crit = torch.nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        if self.teacher is not None:
            self.teacher.to(self.device)
        def batches() -> Any:
            for x, y, _i, _bad in loader:
                if len(x):
                    yield _to(x, self.device), y.to(self.device), None

        def loss_of(out: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, _extra: Any) -> torch.Tensor:
            loss = crit(out, y)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(xb)
                loss = loss + self.st.distill * kd_loss(out, target)
            return loss

        def one_epoch(_epoch: int) -> tuple[float, int]:
            self.model.train()
            for m in self.frozen:
                m.eval()
            return optimise(self.model, batches(), opt, sched, loss_of)

        history, _ = run_epochs(epochs, one_epoch)  # not judged: the round's last epoch stays
        self.model.eval()
        return history[-1]["train_loss"]


def self_train(model: nn.Module, arch: str, cfg: Any, root: Path, samples: list[Sample], pre: Preprocess,
               st: AdaptSettings, device: str, n_classes: int, quiet: bool = True) -> dict[str, Any]:
    """Self-train ``model`` in place on the unlabelled ``samples`` (see the module docstring); returns
    the record for the manifest: what trained, every round's pseudo-label counts and changes, why it
    stopped. ``cfg`` is the fine-tune's TrainConfig (its mode picks what trains)."""
    import torch

    from ..training import uses_cache

    torch.manual_seed(st.seed)
    # As fit: cached inputs where the fine-tune used them (linear always, partial on a CPU).
    learner = _CachedLearner if cfg.mode == "linear" or uses_cache(cfg, device) else _EndToEndLearner
    t0 = time.perf_counter()
    model.to(device)
    worker = learner(model, arch, cfg, root, samples, pre, st, device, quiet)
    clean, aug = worker.predict(0)
    current = clean.argmax(axis=1)
    rounds: list[dict[str, Any]] = [{"round": 0, "predicted_per_class": _counts(current, n_classes),
                                     "seconds": time.perf_counter() - t0}]
    stopped = f"ran the most rounds (--rounds {st.rounds})"
    for r in range(1, st.rounds + 1):
        t0 = time.perf_counter()
        idx, labels, info = select_pseudo_labels(clean, aug, st.threshold, st.class_factor)
        entry: dict[str, Any] = {"round": r, **info}
        if not len(idx):
            stopped = (f"round {r}: fewer than two classes have a pseudo-label (confidence ≥ {st.threshold:g}, the "
                       "same on the augmented view); nothing to train on")
            log.warning("self-training stopped: %s", stopped)
            rounds.append(entry | {"seconds": time.perf_counter() - t0})
            break
        if info["missing"]:
            log.warning("self-training round %d: no pseudo-label for class index(es) %s", r, info["missing"])
        entry["train_loss"] = worker.train(idx, labels, r)
        clean, aug = worker.predict(r)
        new = clean.argmax(axis=1)
        changed = float((new != current).mean())
        entry |= {"predicted_per_class": _counts(new, n_classes), "changed": changed,
                  "seconds": time.perf_counter() - t0}
        rounds.append(entry)
        current = new
        if not quiet:
            log.info("self-training round %d: %d pseudo-labels %s, %.1f %% of the answers changed", r, len(idx),
                     info["selected_per_class"], changed * 100)
        if changed < st.tolerance:
            stopped = f"converged: {changed:.1%} of the pseudo-labels changed in round {r} (< {st.tolerance:.0%})"
            break
    model.eval().cpu()
    return {"trained": worker.describe, "epochs_per_round": st.epochs or (5 if isinstance(worker, _CachedLearner)
                                                                           else 2),
            "teacher": "the model self-training started from" if st.distill else None,
            "rounds": rounds, "stopped": stopped}


def _counts(pred: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(pred, minlength=n_classes).astype(int).tolist()


__all__ = ["select_pseudo_labels", "self_train"]
