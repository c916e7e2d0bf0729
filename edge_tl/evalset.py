"""``RUN/eval.npz``: held-out inputs, labels and the full model's reference logits.

It is what lets a device with no torch (and no training images) compare any candidate against the
reference: inputs are already preprocessed with the run's contract (NCHW float32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Sample, scan_image_folder, split_from_json
from .errors import ArtifactError
from .manifest import atomic_path, read_json, read_manifest
from .preprocess import Preprocess, load_image
from .progress import progress
from .rundir import RunDir

log = logging.getLogger("edge_tl")


@dataclass
class EvalSet:
    """Preprocessed inputs with labels and reference logits."""

    inputs: np.ndarray  # (N, 3, H, W) float32
    labels: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, C) float32, the full fp32 torch model
    classes: list[str]
    paths: list[str]
    source: str


def preprocess_samples(root: Path, samples: list[Sample], pre: Preprocess,
                       quiet: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode and preprocess ``samples``; files that no longer decode are left out."""
    xs, ys, paths = [], [], []
    failed: list[str] = []
    with progress(quiet) as bar:
        task = bar.add_task("preprocess", total=len(samples), info="")
        for s in samples:
            try:
                xs.append(pre(load_image(root / s.path)))
                ys.append(s.label)
                paths.append(s.path)
            except Exception as exc:  # noqa: BLE001 - any decoder failure costs this one image, named below
                failed.append(f"{s.path} ({type(exc).__name__}: {exc})")
            bar.advance(task)
    if failed:
        # Scanned as readable, unreadable now (changed or removed since): the evaluation is one image
        # smaller per file, and says which.
        log.warning("left out %d image(s) that no longer decode: %s", len(failed),
                    "; ".join(failed[:5]) + (" …" if len(failed) > 5 else ""))
    shape = (0, 3, pre.crop, pre.crop)
    return (np.stack(xs) if xs else np.zeros(shape, np.float32)), np.asarray(ys, np.int64), paths


def reference_logits(run: RunDir, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits of the full fine-tuned fp32 model (the reference of every comparison)."""
    import torch

    from .checkpoint import load_model

    model, _ = load_model(run.require_finetune())
    outs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            outs.append(model(torch.from_numpy(inputs[i:i + batch])).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def ensure_eval_set(run: RunDir, quiet: bool = True) -> Path:
    """Build ``RUN/eval.npz`` from the validation split once; later calls reuse it."""
    if run.eval_npz.is_file():
        return run.eval_npz
    ft = run.require_finetune()
    manifest = read_manifest(ft)
    root, _train, val = split_from_json(read_json(ft / "split.json"))
    pre = Preprocess.from_dict(manifest["preprocessing"])
    inputs, labels, paths = preprocess_samples(root, val, pre, quiet)
    if not len(inputs):
        raise ArtifactError(f"none of the validation images under {root} can be read any more")
    logits = reference_logits(run, inputs)
    with atomic_path(run.eval_npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, inputs=inputs, labels=labels, logits=logits.astype(np.float32),
                 classes=np.asarray(manifest["classes"]), paths=np.asarray(paths))
    return run.eval_npz


def load_eval_set(path: Path) -> EvalSet:
    """Read an eval.npz written by ensure_eval_set."""
    if not path.is_file():
        raise ArtifactError(f"missing {path}: run `edge-tl export` or `edge-tl bench` on a workstation first")
    with np.load(path, allow_pickle=False) as z:
        return EvalSet(z["inputs"], z["labels"], z["logits"], [str(c) for c in z["classes"]],
                       [str(p) for p in z["paths"]], str(path))


def eval_set_from_folder(run: RunDir, data_dir: Path, quiet: bool = True) -> EvalSet:
    """An eval set from another labelled folder with the run's classes (``bench --data``)."""
    manifest = read_manifest(run.require_finetune())
    folder = scan_image_folder(data_dir, classes=manifest["classes"])
    pre = Preprocess.from_dict(manifest["preprocessing"])
    inputs, labels, paths = preprocess_samples(folder.root, folder.samples, pre, quiet)
    return EvalSet(inputs, labels, reference_logits(run, inputs), manifest["classes"], paths, str(data_dir))
