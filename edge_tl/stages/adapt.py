"""``edge-tl adapt``: fit the classifier to a new line, camera or product variant without new labels.

Reads RUN/finetune (or RUN/prune), never changes it, and writes RUN/adapt/ (model.pt + manifest.json
naming its parent by sha256, like prune). ``export --from adapt`` ships it like any other model.
Two methods, alone or in turn (``both``: AdaBN first, then self-training from the adapted model):

* **AdaBN** (Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation",
  arXiv:1603.04779): a network's domain knowledge sits largely in its BatchNorm statistics, so every
  BatchNorm layer's running mean and variance are re-estimated on the unlabelled target images
  (an average over the images; no gradient, no weight changes). Seconds, no labels. It matters in
  ``linear`` mode too: the frozen backbone's statistics are exactly what it changes. The paper assumes
  the stored statistics are the source domain's; after a frozen-backbone fine-tune they are ImageNet's,
  so the layers are first re-anchored on the fine-tune's training images (``anchor_batchnorm``: the
  source statistics, with the affine pair changed so that the model computes exactly the same function).
* **Self-training** with pseudo-labels, after FixMatch (Sohn et al., "FixMatch: Simplifying
  Semi-Supervised Learning with Consistency and Confidence", arXiv:2001.07685): the model's answer on
  the plain image is a pseudo-label when it is confident (``threshold``) and the same on an augmented
  view (consistency); the model then trains on augmented views with the plain view's label. The
  pseudo-labels are class-balanced (at most ``class_factor`` times the smallest class's count per
  class, most confident first, after class-balanced self-training, Zou et al., ECCV 2018,
  arXiv:1810.07911), so a class that dominates the new domain does not take over. A KL term to the
  starting model's logits on the same view (``distill``, Hinton et al.'s distillation) limits drift.
  Rounds repeat until fewer than ``tolerance`` of the pseudo-labels change between two rounds.
  The trained part follows the fine-tune's ``mode``: ``linear`` trains the head on cached backbone
  features, ``partial`` the last ``unfreeze`` blocks and head on cached activations (the machinery of
  ``training.py``: ``PrefixEngine`` + ``run_over``, so the frozen part runs once per image and view),
  ``full`` trains end to end.

``--target-val`` (labelled images of the new domain) is used only for the report (source-only vs
adapted top-1 and balanced accuracy): nothing is trained, selected or tuned on it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..batchnorm import batchnorms, estimate_statistics, image_batches
from ..checkpoint import MODEL_FILE, load_model, save_state
from ..data import Sample, class_folders, find_files, name_left_out, readable, scan_image_folder
from ..errors import ArtifactError, ConfigError, DataError, require
from ..manifest import check_writable, read_manifest, sha256_file, staged_folder, write_manifest
from ..preprocess import Preprocess
from ..rundir import RunDir

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

log = logging.getLogger("edge_tl")

METHODS = ("adabn", "self-train", "both")
# Stages adapt reads (an adapted model is not adapted again: adapt the source model to the new data).
ADAPT_SOURCES = ("finetune", "prune")


@dataclass
class AdaptSettings:
    """How ``adapt`` works; recorded whole in the manifest. None means the documented default."""

    method: str = "adabn"
    # AdaBN: images whose statistics are averaged (a random subset beyond this; the statistics of
    # every pixel of 512 images are stable, as in prune's recalibration).
    bn_images: int = 512
    # AdaBN: first re-anchor the BatchNorm layers on the source training images (``anchor_batchnorm``),
    # so that the statistics AdaBN replaces are the source domain's, as the method assumes.
    anchor: bool = True
    # Self-training. 0.8, not FixMatch's 0.95: fine-tunes use label smoothing 0.1, which caps a
    # confident answer near 0.95 for two classes and 0.91 for ten.
    threshold: float = 0.8
    class_factor: float = 2.0
    epochs: int | None = None  # per round; None: 5 on cached inputs, 2 end to end
    rounds: int = 5
    tolerance: float = 0.02
    distill: float = 0.5
    views: int = 3  # cached views per image: the plain one, then augmented ones
    lr: float | None = None  # None: the fine-tune's own learning rate
    seed: int = 0

    def check(self) -> None:
        """ConfigError (one line) for a setting out of range."""
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checks = [
            (self.bn_images >= 1, f"--bn-images must be at least 1, got {self.bn_images}"),
            (0.0 < self.threshold < 1.0, f"--threshold must be between 0 and 1, got {self.threshold}"),
            (self.class_factor >= 1.0, f"--class-factor must be at least 1, got {self.class_factor}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.rounds >= 1, f"--rounds must be at least 1, got {self.rounds}"),
            (0.0 <= self.tolerance < 1.0, f"--tolerance must be in [0, 1), got {self.tolerance}"),
            (self.distill >= 0.0, f"--distill must be 0 or more, got {self.distill}"),
            (self.views >= 1, f"--views must be at least 1, got {self.views}"),
            (self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def adapt(run_dir: str | Path, unlabeled: str | Path, method: str = "adabn", target_val: str | Path | None = None,
          source: str | None = None, *, settings: AdaptSettings | None = None, device: str = "auto",
          quiet: bool = True, data: str | Path | None = None) -> dict[str, Any]:
    """Adapt RUN's classifier to the images under ``unlabeled`` and write RUN/adapt/; returns its
    manifest (see ``adapt_run``)."""
    return adapt_run(run_dir, unlabeled, method, target_val, source, settings=settings, device=device,
                     quiet=quiet, data=data)[1]


def adapt_run(run_dir: str | Path, unlabeled: str | Path, method: str = "adabn",
              target_val: str | Path | None = None, source: str | None = None, *,
              settings: AdaptSettings | None = None, device: str = "auto",
              quiet: bool = True, data: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Adapt the classifier of RUN/finetune (``source="prune"``: RUN/prune; None: prune when present)
    to the unlabelled images under ``unlabeled`` (every image below it, sub-folder names ignored) by
    ``method`` (``adabn``, ``self-train`` or ``both``; ``settings.method`` is overridden by it).

    ``target_val``: an ImageFolder of the new domain with exactly the run's classes, used only to
    report source-only vs adapted accuracy. Unreadable images are skipped with a warning and recorded.
    ``data``: where the fine-tune's training images (the AdaBN anchor) were moved (``data.locate_split``).
    Returns the adapted model (eval mode, CPU) and the manifest written to RUN/adapt/manifest.json.
    Raises ArtifactError (no run / model), ConfigError (bad option, an anomaly run), DataError (no
    readable unlabelled image, ``target_val`` unusable or with other classes).
    """
    torch = require("torch", "train")
    require("torchvision", "train")
    from ..training import TrainConfig, resolve_device
    from .prune import _train_config

    st = copy.copy(settings or AdaptSettings())
    st.method = method
    st.check()
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ArtifactError(f"run directory not found: {run.root}")
    src = run.source(source, stages=ADAPT_SOURCES)
    src_manifest = read_manifest(src)  # checks model.pt's sha256 before anything uses it
    if src_manifest.get("task") == "anomaly":
        raise ConfigError(f"{src} is an anomaly model: adapt works on classifiers (refit an anomaly model on "
                          "good images of the new line instead)")
    check_writable(run.adapt)  # before minutes of work, not after
    classes: list[str] = list(src_manifest["classes"])
    pre = Preprocess.from_dict(src_manifest["preprocessing"])
    pool = scan_unlabeled(unlabeled)
    val_folder = _target_val(target_val, classes) if target_val is not None else None
    dev = resolve_device(device)
    ft_manifest = read_manifest(run.finetune, verify=False) if src != run.finetune else src_manifest
    ft_cfg = _train_config(ft_manifest.get("train_config") or {}, TrainConfig)
    mode = ft_cfg.mode
    started = time.perf_counter()
    torch.manual_seed(st.seed)

    source_sha = sha256_file(src / MODEL_FILE)
    model, _ = load_model(src)
    source_model = copy.deepcopy(model)
    samples = pool["samples"]
    root = pool["root"]
    record: dict[str, Any] = {}
    stages: list[tuple[str, nn.Module]] = [("source", source_model)]
    if st.method in ("adabn", "both"):
        anchor = _source_images(run, data) if st.anchor else None
        record["adabn"] = adabn(model, root, samples, pre, dev, anchor=anchor, limit=st.bn_images, seed=st.seed,
                                batch_size=ft_cfg.batch_size, quiet=quiet)
        if st.method == "both":
            stages.append(("adabn", copy.deepcopy(model)))
    if st.method in ("self-train", "both"):
        record["self_training"] = self_train(model, src_manifest["arch"], ft_cfg, root, samples, pre, st, dev,
                                             len(classes), quiet)
    model.eval().cpu()
    stages.append(("adapted", model))

    report = None
    if val_folder is not None:
        report = _report(stages, val_folder, pre, classes, pool, dev, ft_cfg.engine, quiet)
    del source_model, stages

    with staged_folder(run.adapt) as tmp:
        save_state(model, tmp / MODEL_FILE)
        manifest = write_manifest(
            tmp, "adapt", parent=src / MODEL_FILE, files=[MODEL_FILE],
            arch=src_manifest["arch"], classes=classes, preprocessing=src_manifest["preprocessing"],
            structure=src_manifest.get("structure"), weights=src_manifest.get("weights"), mode=mode,
            source={"stage": src.name, "path": str((src / MODEL_FILE).resolve()),
                    "sha256": source_sha, "mode": mode},
            method=st.method, settings=asdict(st) | {"device": dev},
            unlabeled={"root": str(root.resolve()), "n_images": len(samples), "n_skipped": len(pool["skipped"]),
                       "set_sha256": pool["set_sha256"], "images": pool["images"], "skipped": pool["skipped"]},
            **record, report=report,
            timings={"seconds": time.perf_counter() - started, "device": dev},
        )
        if manifest["parent"]["sha256"] != source_sha:  # the parent must be the model that was adapted
            raise ArtifactError(f"{src / MODEL_FILE} changed while adapting; nothing was written, run adapt again")
        # The folder must rebuild from the manifest alone; check before it replaces anything.
        rebuilt, _ = load_model(tmp)
        with torch.inference_mode():
            x = torch.randn(2, 3, pre.crop, pre.crop, generator=torch.Generator().manual_seed(0))
            if not torch.allclose(rebuilt(x), model(x), atol=1e-5, rtol=1e-4):
                raise ArtifactError("the saved adapted model does not rebuild identically (a bug); nothing was written")
    return model, manifest


# ---------------------------------------------------------------- inputs


def scan_unlabeled(folder: str | Path, workers: int = 4) -> dict[str, Any]:
    """Every image below ``folder`` (recursively; sub-folder names mean nothing), decoded once.

    Returns ``root``, ``samples`` (label 0: there are none), ``images`` ([{path, sha256}] of the
    readable ones), ``skipped`` ([{path, reason}]: unreadable images and files that are not images,
    each named in a warning) and ``set_sha256`` (of the sorted per-image lines: one value that
    changes when any image does). DataError when the folder is missing or holds no readable image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--unlabeled folder not found: {root}")
    files, others = find_files(root)
    skipped = [{"path": str(p.relative_to(root)), "reason": f"not an image file Pillow reads (suffix "
                f"{p.suffix.lower() or 'none'!r})"} for p in others]
    if others:
        log.warning("left out %s under %s", name_left_out([s["path"] for s in skipped]), root)
    if not files:
        raise DataError(f"--unlabeled {root} holds no image (no file with the suffix of a format Pillow reads)")
    good, bad = readable(files, root, workers)
    if not good:
        raise DataError(f"--unlabeled {root}: none of its {len(files)} image(s) can be read")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, good))
    images = [{"path": str(p.relative_to(root)), "sha256": d} for p, d in zip(good, digests, strict=True)]
    lines = "".join(f"{im['sha256']}  {im['path']}\n" for im in images)
    return {"root": root, "samples": [Sample(im["path"], 0) for im in images], "images": images,
            "skipped": skipped + bad, "set_sha256": hashlib.sha256(lines.encode()).hexdigest()}


def _target_val(folder: str | Path, classes: list[str]) -> Any:
    """The labelled report folder; DataError unless its class folders are exactly the run's."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--target-val folder not found: {root}")
    found = class_folders(root)
    if sorted(classes) != found:
        raise DataError(f"--target-val {root} has class folders {found}, the run's classes are {sorted(classes)}")
    return scan_image_folder(root, classes=classes)


# ---------------------------------------------------------------- AdaBN


def _source_images(run: RunDir, data: str | Path | None = None) -> tuple[Path, list[Sample]] | None:
    """The fine-tune's training images (split.json), or None (with a warning) when they are gone;
    under ``data`` when they were moved there (checked by ``locate_split``: DataError on a mismatch)."""
    from ..data import locate_split, split_from_json
    from ..manifest import read_json

    split = read_json(run.finetune / "split.json")
    if data is not None:
        moved = locate_split(split, data, origin=str(run.finetune / "split.json"))
        return moved.root, moved.train
    root, train, _val = split_from_json(split)
    present = [s for s in train if (root / s.path).is_file()]
    if not present:
        log.warning("the fine-tune's training images under %s are gone: AdaBN replaces the BatchNorm statistics "
                    "without re-anchoring them on the source (wrong for a frozen backbone); if they moved, "
                    "pass --data NEW_FOLDER", root)
        return None
    return root, present


def _input_statistics(model: nn.Module, root: Path, samples: list[Sample], pre: Preprocess, device: str,
                      batch_size: int, quiet: bool) -> tuple[dict[int, tuple[Any, Any]], int]:
    """Per BatchNorm layer (by ``id``): the mean and (population) variance per channel of its input over
    ``samples``, with the model as it is (eval mode, nothing changes); and the images seen."""
    import torch

    from ..progress import progress

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
    """Give every BatchNorm layer the running statistics ``stats`` (``_input_statistics`` of the source
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
        stats, n = _input_statistics(model, anchor[0], chosen, pre, device, batch_size, quiet)
        record["anchor"] = {"images": n, "root": str(anchor[0]), "layers": anchor_batchnorm(model, stats),
                            "what": "the fine-tune's training images (split.json)"}
    # Shuffled: statistics averaged over batches of one kind of image miss the variance between kinds.
    chosen = random.Random(seed).sample(samples, min(limit, len(samples)))
    seen = estimate_statistics(model, root, chosen, pre, device, batch_size, quiet, "AdaBN (unlabelled images)")
    if not seen and bns:
        raise DataError(f"none of the unlabelled images under {root} can be read any more")
    return record | {"images": seen, "statistics": "average over the images (batches weighted by size)",
                     "preprocessing": "evaluation (no augmentation)", "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- self-training


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

        from ..training import _schedule, kd_loss, optimise

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

        total, seen = 0.0, 0
        for _ in range(epochs):
            self.trainable.train()
            order = torch.randperm(len(idx), generator=gen)
            view = (torch.randint(0, n_aug, (len(idx),), generator=gen) + 1 if n_aug
                    else torch.zeros(len(idx), dtype=torch.long))
            total, seen = optimise(self.trainable, batches(order, view), opt, sched, loss_of)
        self.trainable.eval()
        return total / max(1, seen)


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

        from ..training import ImageDataset, _loader, _schedule, _to, kd_loss, optimise

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

        total, seen = 0.0, 0
        for _ in range(epochs):
            self.model.train()
            for m in self.frozen:
                m.eval()
            total, seen = optimise(self.model, batches(), opt, sched, loss_of)
        self.model.eval()
        return total / max(1, seen)


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


# ---------------------------------------------------------------- report


def _report(stages: list[tuple[str, nn.Module]], folder: Any, pre: Preprocess, classes: list[str],
            pool: dict[str, Any], device: str, engine: str, quiet: bool) -> dict[str, Any]:
    """Top-1, balanced accuracy and per-class recall of every stage's model on ``--target-val``, and the
    gain of the adapted model over the source. Report only: nothing is chosen from it."""
    from ..features import PrefixEngine
    from ..metrics import classification_metrics
    from ..training import run_over

    digests = {im["sha256"] for im in pool["images"]}
    overlap = sum(sha256_file(folder.abspath(s)) in digests for s in folder.samples)
    if overlap:
        log.warning("%d --target-val image(s) are also among the unlabelled images: the report is not held out",
                    overlap)
    out: dict[str, Any] = {"root": str(folder.root.resolve()), "n_images": len(folder.samples),
                           "per_class": _counts(np.array([s.label for s in folder.samples]), len(classes)),
                           "skipped": folder.skipped, "overlap_with_unlabeled": overlap,
                           "note": "reported only: nothing was trained, selected or tuned on these images"}
    for name, model in stages:
        engine_ = PrefixEngine(model.to(device).eval(), (3, pre.crop, pre.crop), device, engine)
        logits, labels, _bad = run_over(engine_, folder.root, folder.samples, pre, quiet=quiet,
                                        desc=f"report ({name} model, --target-val)")
        model.cpu()
        out[name] = classification_metrics(logits.numpy(), labels, classes)
    out["gain"] = {k: out["adapted"][k] - out["source"][k] for k in ("top1", "balanced_accuracy")}
    return out


def describe(manifest: dict[str, Any]) -> str:
    """One line for the CLI: method, images, and (with --target-val) source-only -> adapted figures."""
    u = manifest["unlabeled"]
    line = (f"adapted {manifest['arch']} ({manifest['method']}, from {manifest['source']['stage']}) on "
            f"{u['n_images']} unlabelled image(s)" + (f", {u['n_skipped']} skipped" if u["n_skipped"] else ""))
    st = manifest.get("self_training")
    if st:
        trained = sum("train_loss" in r for r in st["rounds"])
        line += f"; self-training: {trained} round(s), {st['stopped']}"
    r = manifest.get("report")
    if r:
        steps = [r["source"], *([r["adabn"]] if "adabn" in r else []), r["adapted"]]
        top1 = " -> ".join(f"{m['top1']:.4f}" for m in steps)
        balanced = " -> ".join(f"{m['balanced_accuracy']:.4f}" for m in steps)
        names = " -> ".join(["source", *(["AdaBN"] if "adabn" in r else []), "adapted"])
        line += f"; --target-val ({r['n_images']} images, {names}): top-1 {top1}, balanced accuracy {balanced}"
    return line


__all__ = ["METHODS", "AdaptSettings", "adabn", "adapt", "adapt_run", "anchor_batchnorm", "describe", "scan_unlabeled",
           "select_pseudo_labels", "self_train"]
