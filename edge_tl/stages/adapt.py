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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..batchnorm import adabn
from ..checkpoint import MODEL_FILE, load_model, save_state
from ..data import Sample, class_counts, class_folders, find_files, name_left_out, readable, scan_image_folder
from ..errors import ArtifactError, ConfigError, DataError, require
from ..manifest import check_writable, read_manifest, sha256_file, staged_folder, write_manifest
from ..preprocess import Preprocess
from ..rundir import RunDir
from .self_training import self_train

if TYPE_CHECKING:
    import torch.nn as nn

    from ..settings import AdaptSettings

log = logging.getLogger("edge_tl")

METHODS = ("adabn", "self-train", "both")
# Stages adapt reads (an adapted model is not adapted again: adapt the source model to the new data).
ADAPT_SOURCES = ("finetune", "prune")


def adapt_run(run_dir: str | Path, st: AdaptSettings, quiet: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Adapt the classifier of RUN/finetune (``st.source="prune"``: RUN/prune; None: prune when present)
    to the unlabelled images under ``st.unlabeled`` (every image below it, sub-folder names ignored) by
    ``st.method`` (``adabn``, ``self-train`` or ``both``); ``st`` is ``edge_tl.settings.AdaptSettings``.

    ``st.target_val``: an ImageFolder of the new domain with exactly the run's classes, used only to
    report source-only vs adapted accuracy. Unreadable images are skipped with a warning and recorded.
    ``st.data``: where the fine-tune's training images (the AdaBN anchor) were moved (``data.locate_split``).
    Returns the adapted model (eval mode, CPU) and the manifest written to RUN/adapt/manifest.json.
    Raises ArtifactError (no run / model), ConfigError (bad option, an anomaly run), DataError (no
    readable unlabelled image, ``target_val`` unusable or with other classes).
    """
    torch = require("torch", "train")
    require("torchvision", "train")
    from ..training import TrainConfig, resolve_device
    from .prune import _train_config

    unlabeled, target_val, source, device, data = st.unlabeled, st.target_val, st.source, st.device, st.data
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ArtifactError(f"run directory not found: {run.root}")
    src = run.source(source, stages=ADAPT_SOURCES)
    src_manifest = read_manifest(src)  # checks model.pt's sha256 before anything uses it
    if src_manifest.get("task") == "detect":
        raise ConfigError(f"{src} is a detection model: adapt does not take detection runs yet (it adapts "
                          "classifiers); fine-tune the detector on labelled images of the new line instead")
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
            method=st.method, settings=st.model_dump(include=set(st.RECORDED)) | {"device": dev},
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
                           "per_class": class_counts(folder.samples, len(classes)),
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


__all__ = ["METHODS", "adapt_run", "describe", "scan_unlabeled"]
