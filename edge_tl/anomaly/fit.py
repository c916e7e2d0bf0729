"""``edge-tl finetune GOOD_DIR --task anomaly``: good images -> ``RUN/finetune/`` (PatchCore or PaDiM).

The stage flow shared by every method: scan the images, extract the patch features, fit the method
(:mod:`.methods` names them; one file each) once per mode, set the threshold, score the figures, write
the run. ``fit_anomaly`` calls one function per step.

The run looks like a two-class classifier run to every later stage (classes ``[good, defect]``, a
``split.json`` whose ``val`` images build ``eval.npz``), so export, bench, bundle and the device runtime
take it unchanged; see :mod:`.model` for the graph's outputs.

Which images do what (held-out truth):

- ``train``: good images only, the ones the bank (or the Gaussians) is built from.
- ``threshold``: labelled images that choose the threshold; never scored in the reported figures.
- ``val``: labelled images the figures (and later ``eval.npz``, the bench, the bundle's policy) come from.

The labelled images are the good images held out of ``GOOD_DIR`` (``holdout``), the images of ``--val
DIR`` (its good class and every other class as ``defect``) and, when ``GOOD_DIR`` is an ImageFolder with
``--ok-class``, its other classes as ``defect``. They are split in two halves per class (seeded). AUROC
needs no threshold and is also given on both halves together (``auroc_all_labelled``).

Threshold: with defect images among the ``threshold`` images, the one that maximises balanced accuracy
there (Youden's J; unlike F1, which anomalib's adaptive threshold maximises, it does not depend on how
many defects the folder happens to hold: on elpv, with 410 defect and 226 good images, the F1 threshold
rejected 47 % of the good cells); with good images only, or with
``max_false_reject`` set, the lowest one whose one-sided Clopper-Pearson upper bound of the false-reject
rate on the ``threshold`` good images is within ``max_false_reject``.

Modes (``clusters``, for a method that takes them: PaDiM): ``auto`` fits 1, 2 and 3 modes (k-means on
the good images' pooled features) when the ``threshold`` images include defects, and keeps the fewest
whose AUROC there is within ``MODE_TOLERANCE`` of the best; the ``val`` images never take part. On elpv
(mono- and polycrystalline cells mixed) two modes raised image AUROC on all 1,273 test cells from 0.877
to 0.901. Good images only: one mode, unless ``clusters`` says otherwise (nothing tells modes that help
from modes that overfit). The manifest's ``method.clusters.rule`` says why the count was kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Sample, class_folders, find_files, name_left_out, readable, stratified_split
from ..errors import ConfigError, DataError
from ..metrics import decision_metrics, worse_than_chance
from ..progress import progress
from .methods import AnomalyMethod, FitOptions, Fitted, method_for, names
from .model import AnomalySpec, backbone_stages, build_anomaly_model, stride_cuts

log = logging.getLogger("edge_tl")

CLASSES = ["good", "defect"]
GOOD_NAMES = ("good", "ok")
# Default chosen on elpv (README, "Anomaly detection"): the whole cell ("full") scored image AUROC 0.868
# against 0.840 for PatchCore with the centre crop.
DEFAULT_RESIZE = "full"
MODE_CHOICES = (1, 2, 3)
MODE_TOLERANCE = 0.005  # AUROC on the threshold images: a smaller model within this of the best wins
MIN_MODE_IMAGES = 10  # a mode's Gaussians need this many good images
MIN_FIGURE_IMAGES = 10  # of a class in the reported half, below which its rates are warned about


def _good_class(folder: Path, classes: list[str], ok_class: str | None, flag: str) -> str:
    if ok_class is not None:
        if ok_class not in classes:
            raise DataError(f"{folder} has no class folder {ok_class!r} (found {', '.join(classes)})")
        return ok_class
    named = [c for c in classes if c.lower() in GOOD_NAMES]
    if len(named) != 1:
        raise DataError(f"{folder} has class folders {', '.join(classes)}: name the good one with {flag}")
    return named[0]


def scan_good_and_labelled(good_dir: Path, val_dir: Path | None, ok_class: str | None
                           ) -> tuple[list[Path], list[tuple[Path, int]], list[dict[str, str]]]:
    """(good training candidates, labelled images (path, 0 good / 1 defect), skipped files).

    ``good_dir``: a folder of good images (any depth), or an ImageFolder whose good class is ``ok_class``.
    Raises DataError for a missing or empty folder, or class folders without a named good class.
    """
    if not good_dir.is_dir():
        raise DataError(f"data folder not found: {good_dir}")
    classes = class_folders(good_dir)
    labelled: list[tuple[Path, int]] = []
    skipped: list[dict[str, str]] = []
    if ok_class is not None or len(classes) >= 2:
        good_cls = _good_class(good_dir, classes, ok_class, "--ok-class")
        good, bad = readable(find_files(good_dir / good_cls)[0])
        skipped += bad
        for c in classes:
            if c != good_cls:
                imgs, bad = readable(find_files(good_dir / c)[0])
                labelled += [(p, 1) for p in imgs]
                skipped += bad
    else:
        images, others = find_files(good_dir)
        if others:
            log.warning("left out %s under %s", name_left_out([str(p.relative_to(good_dir)) for p in others]),
                        good_dir)
        good, bad = readable(images)
        skipped += bad
    if not good:
        raise DataError(f"no readable good images under {good_dir}")
    if val_dir is not None:
        if not val_dir.is_dir():
            raise DataError(f"--val folder not found: {val_dir}")
        vclasses = class_folders(val_dir)
        if len(vclasses) < 2:
            raise DataError(f"--val {val_dir} needs a good folder and at least one defect folder")
        good_cls = _good_class(val_dir, vclasses, ok_class, "--ok-class")
        for c in vclasses:
            imgs, bad = readable(find_files(val_dir / c)[0])
            labelled += [(p, 0 if c == good_cls else 1) for p in imgs]
            skipped += bad
    return good, labelled, skipped


def _batches(paths: list[Path], pre: Any, batch: int) -> Any:
    """NCHW float32 batches of preprocessed images (one that fails to decode now is skipped and named)."""
    from ..preprocess import load_image

    for i in range(0, len(paths), batch):
        arrs, kept = [], []
        for p in paths[i:i + batch]:
            try:
                arrs.append(pre(load_image(p)))
                kept.append(p)
            except Exception as exc:  # noqa: BLE001 - one bad image costs itself, not the fit
                log.warning("skipped %s (%s: %s)", p, type(exc).__name__, exc)
        if arrs:
            yield np.stack(arrs).astype(np.float32), kept


def _features(engine: Any, paths: list[Path], pre: Any, quiet: bool, what: str,
              batch: int = 32) -> tuple[list[np.ndarray], list[Path]]:
    """Patch features (B, D, h, w) per batch for ``paths``, and the paths that decoded."""
    import torch

    out, kept = [], []
    with progress(quiet) as bar:
        task = bar.add_task(what, total=len(paths), info="")
        for x, ok in _batches(paths, pre, batch):
            out.append(engine(torch.from_numpy(x)).numpy())
            kept += ok
            bar.advance(task, len(ok))
    return out, kept


def _modes(feats: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """Mode of each good image (N,): k-means (scikit-learn, 10 starts) on its L2-normalised, spatially
    pooled patch features. Raises DataError when a mode has fewer than ``MIN_MODE_IMAGES`` images."""
    n = sum(len(f) for f in feats)
    if k == 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import KMeans

    pooled = np.concatenate([f.mean((2, 3)) for f in feats]).astype(np.float64)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
    if n < k * MIN_MODE_IMAGES:
        raise DataError(f"{k} modes need at least {k * MIN_MODE_IMAGES} good images, there are {n}: "
                        "use fewer --clusters")
    assign = KMeans(k, n_init=10, random_state=seed).fit(pooled).labels_.astype(np.int64)
    sizes = np.bincount(assign, minlength=k)
    if sizes.min() < MIN_MODE_IMAGES:
        raise DataError(f"k-means found a mode of only {sizes.min()} good images for --clusters {k} (at least "
                        f"{MIN_MODE_IMAGES} are needed): use fewer --clusters")
    return assign


def raw_scores(model: Any, engine: Any, paths: list[Path], pre: Any, quiet: bool,
               what: str, heads: list[Any] | None = None) -> tuple[np.ndarray, list[Path]]:
    """Raw image scores (max patch distance, before normalisation) of ``paths``: (N,) from ``model``'s
    head, or (len(heads), N) from each of ``heads`` with the backbone run once."""
    import torch

    many = heads is not None
    heads = heads if many else [model.head]
    scores: list[list[np.ndarray]] = [[] for _ in heads]
    kept: list[Path] = []
    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task(what, total=len(paths), info="")
        for x, ok in _batches(paths, pre, 16):
            f = engine(torch.from_numpy(x))
            for out, head in zip(scores, heads, strict=True):
                out.append(head(f).flatten(1).max(1).values.numpy())
            kept += ok
            bar.advance(task, len(ok))
    arr = np.stack([np.concatenate(o) if o else np.zeros(0, np.float32) for o in scores])
    return (arr if many else arr[0]), kept


def choose_threshold(scores: np.ndarray, labels: np.ndarray, max_false_reject: float | None,
                     confidence: float) -> dict[str, Any]:
    """The decision threshold on raw scores, and how it was chosen (module docstring)."""
    from ..runtime.policy import _events_allowed, rate_upper_bound

    good = np.sort(scores[labels == 0])
    if not len(good):
        raise DataError("no good images to set the threshold on (hold some out or give --val)")
    if (labels == 1).any() and max_false_reject is None:
        cand = np.unique(scores)
        bad = labels == 1
        best, best_j = 0, -2.0
        for i, t in enumerate(cand):  # defect when score > t
            pred = scores > t
            j = float(pred[bad].mean() - pred[~bad].mean())  # Youden's J = balanced accuracy * 2 - 1
            if j > best_j:
                best, best_j = i, j
        # Midway to the next score up: the same decisions here, the widest margin for new images.
        raw = float(cand[best] + cand[best + 1]) / 2 if best + 1 < len(cand) else float(cand[best])
        return {"rule": "max balanced accuracy (Youden's J) on the threshold images, midway between the two "
                        "scores it separates", "raw": raw, "balanced_accuracy": (best_j + 1) / 2}
    target = 0.05 if max_false_reject is None else max_false_reject
    k = _events_allowed(len(good), target, confidence)
    note = None
    if k < 0:
        k = 0
        note = (f"{len(good)} good threshold images cannot show a false-reject rate within {target:.3g} at "
                f"{confidence:.0%} confidence; the threshold is the highest good score")
    raw = float(good[len(good) - 1 - k])
    return {"rule": f"false-reject upper bound within {target:.3g} at {confidence:.0%} confidence",
            "raw": raw, "good_above": k, "false_reject_upper_bound": rate_upper_bound(k, len(good), confidence),
            "note": note}




@dataclasses.dataclass
class LabelledSplit:
    """The images of one fit: good ones to fit on, labelled ones for the threshold and for the figures."""

    train: list[Path]
    threshold: list[Sample]
    val: list[Sample]
    labelled: list[Path]  # every labelled image (threshold and val), for the bit-depth record
    skipped: list[dict[str, str]]


@dataclasses.dataclass
class FittedModel:
    """A fitted ``AnomalyModel`` (threshold 1) and what the manifest says of it."""

    model: Any
    spec: AnomalySpec
    info: dict[str, Any]  # the manifest's method fields
    stored: list[np.ndarray]  # the arrays the bank size and sha256 cover
    threshold_scores: tuple[np.ndarray, list[Path]] | None = None  # raw threshold-image scores, when computed


@dataclasses.dataclass
class Scored:
    """Raw image scores of the labelled images that decoded, with their labels."""

    raw: np.ndarray
    kept: list[Path]
    labels: np.ndarray


def fit_anomaly(good_dir: str | Path, out: str | Path, *, arch: str = "mobilenet_v2", weights: str = "imagenet",
                method: str = "padim", val_dir: str | Path | None = None, ok_class: str | None = None,
                holdout: float | None = None, coreset: float = 0.01, bank_size: int | None = None,
                dim: int | None = None, resize: str | None = None, input_size: int | None = None,
                max_false_reject: float | None = None, confidence: float = 0.95, seed: int = 0,
                clusters: int | str = "auto", engine: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Fit an anomaly method (PaDiM, PatchCore: :func:`.methods.names`) on the good images of ``good_dir``;
    write ``out/finetune/``; return its manifest.

    ``coreset``: the PatchCore bank as a fraction of all training patches (``bank_size`` overrides it
    with a count). ``dim``: features after the random projection (default: the method's; 64 for PaDiM, whose
    inverse covariances grow with its square; none for PatchCore). ``resize``: default ``full`` (the whole
    frame: a centre crop would hide a defect at the part's border, and no one would know).
    ``holdout``: share of the good images kept out of the fit (PatchCore's bank, PaDiM's Gaussians) for
    the threshold and the figures
    (default 0.2 without ``--val``, 0 with it). ``clusters``: PaDiM's modes, a count or ``auto`` (module
    docstring). Raises DataError/ConfigError before any work for bad
    input; nothing is written until the fit has finished.
    """
    from ..features import PrefixEngine
    from ..manifest import check_writable
    from ..weights import resolve_weights

    meth, clusters = _checked_options(method, coreset, bank_size, max_false_reject, clusters)
    check_writable(out)
    good_dir = Path(good_dir)
    images = split_images(good_dir, Path(val_dir) if val_dir else None, ok_class, holdout, clusters, seed)
    state, source = resolve_weights(arch, weights)
    pre, resize_info = _preprocessing(arch, source, input_size, resize, images, quiet)
    cut8, cut16, chans, dim = _feature_taps(arch, state, pre.crop, meth, dim)

    started = time.time()
    spec = AnomalySpec(arch, meth.name, cut8, cut16, sum(chans), dim, bank=1, grid=math.ceil(pre.crop / 8))
    features = _projected_features(spec, state, seed)
    feat_engine = PrefixEngine(features, (3, pre.crop, pre.crop), "cpu", engine)
    feats, train_kept = _features(feat_engine, images.train, pre, quiet, "features (good images)")
    if not feats:
        raise DataError(f"none of the good images under {good_dir} can be read")
    options = FitOptions(coreset=coreset, bank_size=bank_size, seed=seed)
    if meth.modes:
        fitted = _fit_modes(meth, feats, spec, state, feat_engine, clusters, images.threshold, pre, options, quiet)
    else:
        fitted = _fit_one(meth, feats, _one_mode(feats), spec, state, feat_engine, options)
    del feats
    fit_seconds = time.time() - started

    threshold, thr = _set_threshold(fitted, feat_engine, images.threshold, pre, max_false_reject, confidence,
                                    quiet)
    val = _score(fitted.model, feat_engine, images.val, pre, quiet, "validation images")
    metrics, warnings = _figures(thr, val, threshold["raw"])
    return _write_run(
        Path(out), fitted.model, _split_json(train_kept, thr, val, images.skipped, seed),
        arch=arch, classes=CLASSES, preprocessing=pre.to_dict(), structure=None, weights=source,
        task="anomaly", mode=f"anomaly ({meth.name})", anomaly=fitted.spec.to_dict(),
        method=_method_fields(meth, fitted, cut8, cut16, chans, dim),
        bank=_bank_fields(fitted, dim), threshold=threshold,
        normalisation={"score": "raw / threshold (1.0 = the threshold)",
                       "logits": "[0, score - 1]: argmax is defect exactly when score > 1",
                       "anomaly_map": "each patch's raw distance / threshold, stride 8"},
        resize=resize_info,
        data=_data_fields(good_dir, val_dir, train_kept, thr, val, images.skipped),
        metrics=metrics, warnings=warnings,
        timings={"started": started, "train_seconds": fit_seconds, "seconds_per_epoch": fit_seconds,
                 "device": "cpu", "world_size": 1, "feature_engine": feat_engine.name})


def _checked_options(method: str, coreset: float, bank_size: int | None, max_false_reject: float | None,
                     clusters: int | str) -> tuple[AnomalyMethod, int | str]:
    """The registered method and the parsed ``clusters``; ConfigError for an option out of range."""
    meth = method_for(method)
    if not 0 < coreset <= 1:
        raise ConfigError(f"--coreset is a fraction of the training patches in (0, 1], got {coreset}")
    if bank_size is not None and bank_size < 1:
        raise ConfigError(f"--bank-size must be at least 1, got {bank_size}")
    if max_false_reject is not None and not 0 < max_false_reject < 1:
        raise ConfigError(f"--max-false-reject must be in (0, 1), got {max_false_reject}")
    return meth, _parse_clusters(clusters, meth)


def _parse_clusters(clusters: int | str, method: AnomalyMethod) -> int | str:
    if clusters == "auto":
        return clusters
    try:
        k = int(clusters)
    except ValueError:
        raise ConfigError(f"--clusters is a count of modes or auto, got {clusters!r}") from None
    if not 1 <= k <= 8:
        raise ConfigError(f"--clusters must be between 1 and 8, got {k}")
    if k > 1 and not method.modes:
        takes = " or ".join(n for n in names() if method_for(n).modes)
        why = f" ({method.why_no_modes})" if method.why_no_modes else ""
        raise ConfigError(f"--clusters is for --method {takes}{why}")
    return k


def split_images(good_dir: Path, val_dir: Path | None, ok_class: str | None, holdout: float | None,
                 clusters: int | str, seed: int) -> LabelledSplit:
    """Scan the folders, hold ``holdout`` of the good images out of the fit, and split the labelled images
    into a threshold half and a reported half per class (seeded). DataError/ConfigError for too few."""
    good, labelled, skipped = scan_good_and_labelled(good_dir, val_dir, ok_class)
    holdout = (0.0 if val_dir else 0.2) if holdout is None else holdout
    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(len(good))
    n_hold = round(holdout * len(good))
    train = [good[i] for i in sorted(order[n_hold:])]
    labelled = [(good[i], 0) for i in sorted(order[:n_hold])] + labelled
    if not train:
        raise DataError(f"no good images left to fit on under {good_dir}")
    if clusters != "auto" and len(train) < int(clusters) * MIN_MODE_IMAGES:
        raise DataError(f"{clusters} modes need at least {int(clusters) * MIN_MODE_IMAGES} good images to fit on, "
                        f"there are {len(train)}: use fewer --clusters")
    if sum(1 for _, y in labelled if y == 0) < 2:
        raise DataError("at least 2 labelled good images are needed for the threshold and the figures: "
                        "raise --holdout or give --val DIR with a good folder")
    lab_samples = [Sample(str(p.resolve()), y) for p, y in labelled]
    if np.bincount([s.label for s in lab_samples], minlength=2)[1] == 1:
        raise DataError("a single defect image cannot be split between the threshold and the figures")
    thr_samples, val_samples = stratified_split(lab_samples, 0.5, seed)
    per_class = np.bincount([s.label for s in val_samples], minlength=2)
    few = [f"{int(per_class[y])} {name}" for y, name in ((0, "good"), (1, "defect"))
           if 0 < per_class[y] < MIN_FIGURE_IMAGES]
    if few:
        # The run goes on (a first try on a handful of images is legitimate), but its figures are anecdotes.
        log.warning("the reported half holds only %s image(s): its AUROC, false-reject and escape rates rest on "
                    "them (fewer than %d of a class); hold out more good images (--holdout) or give --val DIR "
                    "with more", " and ".join(few), MIN_FIGURE_IMAGES)
    return LabelledSplit(train, thr_samples, val_samples, [p for p, _ in labelled], skipped)


def _preprocessing(arch: str, source: Any, input_size: int | None, resize: str | None, images: LabelledSplit,
                   quiet: bool) -> tuple[Any, dict[str, Any]]:
    """The weights' preprocessing with the resize mode chosen on the good images and their bit depths."""
    from ..data import ImageFolder
    from ..preprocess import record_bit_depths
    from ..stages.finetune import choose_resize, weights_preprocessing

    pre = weights_preprocessing(arch, source, input_size)
    probe = ImageFolder(Path("/"), CLASSES, [Sample(str(p.resolve()), 0) for p in images.train])
    mode, resize_info = choose_resize(probe, probe.samples, pre, resize or DEFAULT_RESIZE)
    pre = dataclasses.replace(pre, resize_mode=mode)
    return record_bit_depths(pre, [*images.train, *images.labelled], quiet), resize_info


def _feature_taps(arch: str, state: dict, crop: int, method: AnomalyMethod,
                  dim: int | None) -> tuple[int, int, list[int], int]:
    """(cut8, cut16, channels of the two taps, projected dimension): where the backbone's stride-8 and
    stride-16 features are tapped, and ``dim`` checked (the method's default when None)."""
    from ..models import build_backbone

    backbone = build_backbone(arch, state)
    cut8, cut16, chans = stride_cuts(backbone_stages(backbone, arch).copy(), crop)
    channels = sum(chans)
    dim = method.default_dim(channels) if dim is None else dim
    if not 1 <= dim <= channels:
        raise ConfigError(f"--dim must be between 1 and {channels} (the features' channels), got {dim}")
    return cut8, cut16, chans, dim


def _projected_features(spec: AnomalySpec, state: dict, seed: int) -> Any:
    """The model's feature module: the backbone's taps and, when ``spec.dim`` is below the channels, a fixed
    random projection drawn from ``seed``."""
    import torch

    torch.manual_seed(seed)
    model = build_anomaly_model(spec, state)
    if spec.dim != spec.channels:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.features.project.weight.copy_(
                torch.randn(spec.dim, spec.channels, 1, 1, generator=gen) / spec.dim ** 0.5)
    return model.features


def _one_mode(feats: list[np.ndarray]) -> np.ndarray:
    return np.zeros(sum(len(f) for f in feats), np.int64)


def _fit_one(method: AnomalyMethod, feats: list[np.ndarray], assign: np.ndarray, spec: AnomalySpec, state: dict,
             feat_engine: Any, options: FitOptions) -> FittedModel:
    """``method`` fitted on ``feats`` split into the modes ``assign``, loaded into a model (threshold 1)."""
    import torch

    fitted: Fitted = method.fit(feats, assign, options)
    k = int(assign.max()) + 1
    kspec = dataclasses.replace(spec, bank=fitted.size, grid=int(feats[0].shape[2]), clusters=k)
    model = build_anomaly_model(kspec, state)
    model.load_state_dict({**_features_state(feat_engine.module),
                           **{f"head.{name}": torch.from_numpy(a) for name, a in fitted.buffers.items()},
                           "threshold": torch.ones(())})
    return FittedModel(model, kspec, fitted.info, [fitted.buffers[name] for name in fitted.stored])


def _mode_candidates(clusters: int | str, thr_labels: np.ndarray) -> tuple[tuple[int, ...], str]:
    """The mode counts to fit, and why there is one candidate when ``auto`` cannot choose."""
    if clusters != "auto":
        return (int(clusters),), "--clusters"
    if not (thr_labels == 1).any():
        return (1,), "one mode (no defect threshold images)"
    if not (thr_labels == 0).any():
        return (1,), "one mode (no good threshold images)"
    return MODE_CHOICES, ""


def _fit_modes(method: AnomalyMethod, feats: list[np.ndarray], spec: AnomalySpec, state: dict, feat_engine: Any,
               clusters: int | str, thr_samples: list[Sample], pre: Any, options: FitOptions,
               quiet: bool) -> FittedModel:
    """The model with ``clusters`` modes, or with the mode count ``auto`` picks on the threshold images
    (module docstring); the manifest's ``clusters`` fields say which and why."""
    counts, rule = _mode_candidates(clusters, np.asarray([s.label for s in thr_samples]))
    fitted, too_few = [], []
    for k in counts:
        try:
            assign = _modes(feats, k, options.seed)
        except DataError:
            if len(counts) > 1:  # too few images for k modes: k is not a candidate
                too_few.append(k)
                continue
            raise
        fit = _fit_one(method, feats, assign, spec, state, feat_engine, options)
        fit.info["clusters"] = {"k": k, "images_per_mode": np.bincount(assign, minlength=k).tolist(),
                                "by": "k-means (scikit-learn) on L2-normalised pooled features" if k > 1
                                else "no split"}
        fitted.append(fit)
    if len(fitted) == 1:
        fitted[0].info["clusters"]["rule"] = rule or (
            f"one mode ({' or '.join(map(str, too_few))} modes would leave a mode under {MIN_MODE_IMAGES} good "
            "images)")
        return fitted[0]
    return _pick_modes(fitted, feat_engine, thr_samples, pre, quiet)


def _pick_modes(fitted: list[FittedModel], feat_engine: Any, thr_samples: list[Sample], pre: Any,
                quiet: bool) -> FittedModel:
    """The fewest modes whose AUROC on the threshold images is within ``MODE_TOLERANCE`` of the best."""
    from ..metrics import auroc

    paths = [Path(s.path) for s in thr_samples]
    scores, kept = raw_scores(None, feat_engine, paths, pre, quiet, "threshold images (choosing modes)",
                              heads=[f.model.head for f in fitted])
    labels = _labels_of(thr_samples, kept)
    aurocs = [auroc(labels, s) for s in scores]
    best = max(a for a in aurocs if a is not None)
    pick = next(i for i, a in enumerate(aurocs) if a is not None and a >= best - MODE_TOLERANCE)
    chosen = fitted[pick]
    chosen.info["clusters"].update(
        rule=f"fewest modes within {MODE_TOLERANCE} AUROC of the best on the threshold images",
        candidates=[{"k": f.spec.clusters, "auroc_threshold_images": a} for f, a in zip(fitted, aurocs, strict=True)])
    chosen.threshold_scores = (scores[pick], kept)
    return chosen


def _score(model: Any, feat_engine: Any, samples: list[Sample], pre: Any, quiet: bool, what: str) -> Scored:
    raw, kept = raw_scores(model, feat_engine, [Path(s.path) for s in samples], pre, quiet, what)
    return Scored(raw, kept, _labels_of(samples, kept))


def _set_threshold(fitted: FittedModel, feat_engine: Any, thr_samples: list[Sample], pre: Any,
                   max_false_reject: float | None, confidence: float, quiet: bool) -> tuple[dict[str, Any], Scored]:
    """Choose the threshold on the threshold images and store it in the model; (how it was chosen, the
    threshold images' scores)."""
    if fitted.threshold_scores is not None:
        raw, kept = fitted.threshold_scores
        thr = Scored(raw, kept, _labels_of(thr_samples, kept))
    else:
        thr = _score(fitted.model, feat_engine, thr_samples, pre, quiet, "threshold images")
    threshold = choose_threshold(thr.raw, thr.labels, max_false_reject, confidence)
    if threshold["raw"] <= 0:
        raise DataError("every threshold image scores 0: the good images leave nothing to tell apart")
    fitted.model.threshold.fill_(threshold["raw"])
    return threshold, thr


def _figures(thr: Scored, val: Scored, raw_threshold: float) -> tuple[dict[str, Any], list[str]]:
    """The manifest's metrics (on the ``val`` images; AUROC on all labelled ones too) and its warnings."""
    from ..metrics import classification_metrics

    s_val, s_thr = val.raw / raw_threshold, thr.raw / raw_threshold
    val_m = decision_metrics(s_val, val.labels)
    all_m = decision_metrics(np.concatenate([s_thr, s_val]), np.concatenate([thr.labels, val.labels]))
    logits = np.stack([np.zeros_like(s_val), s_val - 1], 1)
    cls = classification_metrics(logits, val.labels, CLASSES)
    # In the manifest; the summary line (finetune, run) prints them.
    warnings = [w for w in (worse_than_chance(val_m["auroc"]),) if w]
    return {"val_top1": cls["top1"], "val_balanced_accuracy": cls["balanced_accuracy"],
            "per_class_recall": cls["per_class_recall"], "confusion": cls["confusion"],
            **{f"val_{k}": v for k, v in val_m.items()},
            "auroc_all_labelled": all_m["auroc"], "history": []}, warnings


def _method_fields(method: AnomalyMethod, fitted: FittedModel, cut8: int, cut16: int, chans: list[int],
                   dim: int) -> dict[str, Any]:
    return {"name": method.name, "source": method.source,
            "layers": {"stride_8": f"backbone stages [0, {cut8})", "stride_16": f"stages [{cut8}, {cut16})",
                       "channels": chans}, "aggregation": "3x3 average", "projection_dim": dim, **fitted.info}


def _data_fields(good_dir: Path, val_dir: str | Path | None, train_kept: list[Path], thr: Scored, val: Scored,
                 skipped: list[dict[str, str]]) -> dict[str, Any]:
    return {"root": str(good_dir.resolve()), "val_dir": str(Path(val_dir).resolve()) if val_dir else None,
            "n_images": len(train_kept) + len(thr.kept) + len(val.kept), "train_good": len(train_kept),
            "threshold_per_class": np.bincount(thr.labels, minlength=2).tolist(),
            "val_per_class": np.bincount(val.labels, minlength=2).tolist(), "skipped": skipped}


def _bank_fields(fitted: FittedModel, dim: int) -> dict[str, Any]:
    bank_bytes = b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in fitted.stored)
    return {"entries": fitted.spec.bank, "dim": dim, "mb": len(bank_bytes) / 1e6,
            "sha256": hashlib.sha256(bank_bytes).hexdigest()}


def _split_json(train_kept: list[Path], thr: Scored, val: Scored, skipped: list[dict[str, str]],
                seed: int) -> dict[str, Any]:
    """``split.json``: paths relative to the images' common folder (good images and ``--val`` may live in
    different trees), so reports name a real folder and the file stays readable."""
    used = [p.resolve() for p in (*train_kept, *thr.kept, *val.kept)]
    common = Path(os.path.commonpath([str(p) for p in used]))
    common = common if common.is_dir() else common.parent

    def rel(p: Path) -> str:
        return str(p.resolve().relative_to(common))

    return {"root": str(common), "classes": CLASSES, "seed": seed, "val_fraction": 0.5, "task": "anomaly",
            "train": [[rel(p), 0] for p in train_kept],
            "threshold": [[rel(p), int(y)] for p, y in zip(thr.kept, thr.labels, strict=True)],
            "val": [[rel(p), int(y)] for p, y in zip(val.kept, val.labels, strict=True)],
            "skipped": skipped}


def _write_run(out: Path, model: Any, split: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Write ``out/finetune/`` (model.pt, split.json, manifest.json with ``fields``) in one staged step."""
    from ..checkpoint import MODEL_FILE, save_state
    from ..manifest import staged_folder, write_json, write_manifest
    from ..rundir import RunDir

    run = RunDir(out)
    with staged_folder(run.finetune) as tmp:
        save_state(model, tmp / MODEL_FILE)
        write_json(tmp / "split.json", split)
        manifest = write_manifest(tmp, "finetune", files=[MODEL_FILE, "split.json"], **fields)
        run.eval_npz.unlink(missing_ok=True)  # its reference scores are the replaced model's (rebuilt on demand)
    return manifest


def _features_state(features: Any) -> dict[str, Any]:
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def _labels_of(samples: list[Sample], kept: list[Path]) -> np.ndarray:
    by_path = {s.path: s.label for s in samples}
    return np.asarray([by_path[str(p)] for p in kept], np.int64)
