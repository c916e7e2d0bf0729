"""Evaluation sets: ``RUN/eval.npz`` (the held-out split) and cached ``bench --data`` folders.

An evaluation set holds the inputs, labels and the full model's reference logits; it is what lets a
device with no torch (and no training images) compare any candidate against the reference.

On disk (format 2) the inputs are the **uint8 crops** the model sees (``Preprocess.resize_and_crop``:
N x H x W x 3, before normalisation) plus the preprocessing contract (``preprocessing``, JSON). The
float inputs are rebuilt on load with the very arithmetic of ``Preprocess.normalize``, so they are
bit-identical to ``Preprocess.__call__`` and the file is 4x smaller than float32 (316 MB -> 79 MB for
the demo's 525 images, less once compressed). Format 1 files (float32 ``inputs``) still load.

Every set carries its identity (``EvalSet.identity``): what it is (``kind``), its folder, its image
count and ``sha256``, a hash of its list of images (relative path, class, sha256 of the file's
bytes), so every report can say which images its figures come from.

``bench --data DIR`` sets are cached under ``RUN/evalsets/<key>.npz``, keyed by the folder's content
(the same list hash over every candidate file), the preprocessing contract and the fine-tuned model:
a second bench on the same folder neither decodes the images nor runs torch again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .data import Sample, find_files, scan_image_folder
from .errors import ArtifactError, DataError
from .manifest import atomic_path, read_manifest, sha256_file
from .preprocess import Preprocess, load_image
from .progress import progress
from .rundir import RunDir

log = logging.getLogger("edge_tl")

FORMAT = 2  # uint8 crops + preprocessing contract (1: float32 inputs)
EVALSETS_DIR = "evalsets"


@dataclass
class EvalSet:
    """Preprocessed inputs with labels and reference logits."""

    inputs: np.ndarray  # (N, 3, H, W) float32
    labels: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, C) float32, the full fp32 torch model
    classes: list[str]
    paths: list[str]
    source: str
    # What the set is: kind ("validation split" | "folder"), folder, n, sha256 (of the image list), name
    identity: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The identity every report carries (``eval_set``)."""
        ident = {"kind": "eval set", "folder": None, "sha256": None} | dict(self.identity)
        ident["n"] = len(self.labels)
        ident.setdefault("name", Path(self.source).name or self.source)
        ident.setdefault("path", self.source)
        return ident


# --------------------------------------------------------------------------------------------------
# Hashes


def list_sha256(entries: list[tuple[str, str, str]]) -> str:
    """sha256 of an image list: one ``relative path<TAB>class<TAB>sha256 of the bytes`` line per image,
    sorted by path (independent of scan order)."""
    h = hashlib.sha256()
    for path, cls, digest in sorted(entries):
        h.update(f"{path}\t{cls}\t{digest}\n".encode())
    return h.hexdigest()


def samples_sha256(root: Path, samples: list[Sample], classes: list[str]) -> str:
    """The list hash of ``samples`` under ``root``."""
    return list_sha256([(s.path, classes[s.label], sha256_file(root / s.path)) for s in samples])


def folder_sha256(root: Path, classes: list[str]) -> str:
    """The list hash of every candidate image file of ``classes`` under ``root``, without decoding any
    (the cache key of a ``--data`` folder: same bytes, same decode, same set). Raises DataError for a
    missing folder or class folder, as the full scan would."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(f"{root} lacks class folder(s) {', '.join(missing)} (expected {classes})")
    entries = []
    for c in classes:
        images, _ = find_files(root / c)
        entries += [(str(p.relative_to(root)), c, sha256_file(p)) for p in images]
    return list_sha256(entries)


# --------------------------------------------------------------------------------------------------
# Crops and inputs


def crop_samples(root: Path, samples: list[Sample], pre: Preprocess,
                 quiet: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``samples`` to the uint8 crops the model sees (N, H, W, 3); files that no longer decode
    are left out (and named in a warning)."""
    xs, ys, paths = [], [], []
    failed: list[str] = []
    with progress(quiet) as bar:
        task = bar.add_task("preprocess", total=len(samples), info="")
        for s in samples:
            try:
                xs.append(np.asarray(pre.resize_and_crop(load_image(root / s.path)), dtype=np.uint8))
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
    shape = (0, pre.crop, pre.crop, 3)
    return (np.stack(xs) if xs else np.zeros(shape, np.uint8)), np.asarray(ys, np.int64), paths


def inputs_from_crops(crops: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 crops (N, H, W, 3) -> NCHW float32, bit-identical to ``Preprocess.normalize`` per image
    (the same float32 operations in the same order; element-wise, so batching changes no bit)."""
    out = np.empty((len(crops), 3, *crops.shape[1:3]), np.float32)
    scale = np.float32(pre.scale)
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    for i in range(0, len(crops), 64):  # in chunks: one float copy of the whole set at a time
        arr = crops[i:i + 64].astype(np.float32) * scale
        arr = (arr - mean) / std
        out[i:i + 64] = arr.transpose(0, 3, 1, 2)
    return out


def preprocess_samples(root: Path, samples: list[Sample], pre: Preprocess,
                       quiet: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode and preprocess ``samples`` to NCHW float32; files that no longer decode are left out."""
    crops, labels, paths = crop_samples(root, samples, pre, quiet)
    return inputs_from_crops(crops, pre), labels, paths


def crops_from_inputs(inputs: np.ndarray, pre: Preprocess) -> np.ndarray | None:
    """The uint8 crops that rebuild ``inputs`` exactly, or None when there are none (inputs not made by
    ``pre`` from 8-bit pixels). Used to convert a format 1 eval.npz."""
    mean = np.asarray(pre.mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float64).reshape(1, 3, 1, 1)
    pixels = np.rint((inputs.astype(np.float64) * std + mean) / pre.scale)
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        return None
    crops = np.ascontiguousarray(pixels.astype(np.uint8).transpose(0, 2, 3, 1))
    return crops if np.array_equal(inputs_from_crops(crops, pre), inputs) else None


def reference_logits(run: RunDir, inputs: np.ndarray, batch: int = 32, stage: str = "finetune") -> np.ndarray:
    """Logits (N, C) of the fp32 torch model of ``stage``: the full fine-tuned one (the reference of every
    comparison but an adapted target's, see ``with_reference``), or ``adapt``."""
    import torch

    from .checkpoint import load_model

    model, _ = load_model(run.require_finetune() if stage == "finetune" else run.root / stage)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            outs.append(model(torch.from_numpy(inputs[i:i + batch])).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


ADAPTED_REFERENCE = "reference.npz"  # in an adapted target's folder: the adapted model's eval.npz logits


def with_reference(run: RunDir, evalset: EvalSet, target_manifest: dict[str, Any],
                   target_folder: Path) -> tuple[EvalSet, str]:
    """``evalset`` with the logits a target is judged against, and what they are.

    Every target is judged against the full fine-tuned fp32 model (``eval.npz``: how far its answers
    drift from it), except one exported from ``RUN/adapt``: adaptation changes the answers on purpose, so
    judging it against the source would report the adaptation as drift. Its reference is the adapted
    fp32 model: the logits its export stored (``reference.npz``, for the eval set they were computed on,
    so a device without torch can bench it), else the adapted model run here (torch).
    """
    if target_manifest.get("source_stage") != "adapt":
        return evalset, "full fine-tuned fp32 torch model"
    what = "adapted fp32 torch model (RUN/adapt)"
    stored = target_folder / ADAPTED_REFERENCE
    sha = evalset.describe().get("sha256")
    if stored.is_file():
        with np.load(stored, allow_pickle=False) as z:
            if str(z["eval_set_sha256"]) == str(sha) and len(z["logits"]) == len(evalset.labels):
                return replace(evalset, logits=z["logits"]), what
    try:
        logits = reference_logits(run, evalset.inputs, stage="adapt")
    except ImportError:
        raise ArtifactError(f"{target_folder.name} was exported from RUN/adapt: judging it on these images needs "
                            "the adapted model's answers, which only torch can give (pip install "
                            "'edge-tl[train]'), or bench it on the run's eval.npz") from None
    return replace(evalset, logits=logits), what


def save_adapted_reference(folder: Path, evalset: EvalSet, logits: np.ndarray) -> str:
    """Write ``reference.npz`` (the adapted model's logits on ``evalset``) into an export's staging
    folder; returns its file name."""
    with open(folder / ADAPTED_REFERENCE, "wb") as f:
        np.savez_compressed(f, logits=np.asarray(logits, np.float32),
                            eval_set_sha256=np.asarray(str(evalset.describe().get("sha256"))))
    return ADAPTED_REFERENCE


# --------------------------------------------------------------------------------------------------
# Files


def save_eval_set(path: Path, crops: np.ndarray, pre: Preprocess, labels: np.ndarray, logits: np.ndarray,
                  classes: list[str], paths: list[str], identity: dict[str, Any]) -> Path:
    """Write a format 2 evaluation set (uint8 crops, compressed) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, format=np.asarray(FORMAT), crops=crops,
                            preprocessing=np.asarray(json.dumps(pre.to_dict(), sort_keys=True)),
                            labels=labels, logits=logits.astype(np.float32), classes=np.asarray(classes),
                            paths=np.asarray(paths), identity=np.asarray(json.dumps(identity, sort_keys=True)))
    return path


def ensure_eval_set(run: RunDir, quiet: bool = True) -> Path:
    """Build ``RUN/eval.npz`` from the validation split once; later calls reuse it."""
    if run.eval_npz.is_file():
        return run.eval_npz
    ft = run.require_finetune()
    manifest = read_manifest(ft)
    root, _train, val = run.split()
    pre = Preprocess.from_dict(manifest["preprocessing"])
    crops, labels, paths = crop_samples(root, val, pre, quiet)
    if not len(crops):
        raise ArtifactError(f"none of the validation images under {root} can be read any more")
    classes = list(manifest["classes"])
    used = [Sample(p, int(y)) for p, y in zip(paths, labels, strict=True)]
    identity = {"kind": "validation split", "name": "validation split", "folder": str(root),
                "sha256": samples_sha256(Path(root), used, classes)}
    logits = reference_logits(run, inputs_from_crops(crops, pre))
    return save_eval_set(run.eval_npz, crops, pre, labels, logits, classes, paths, identity)


def _legacy_identity(z: Any, path: Path) -> dict[str, Any]:
    """A format 1 file has no image hashes: its identity hashes its own paths, labels and inputs."""
    h = hashlib.sha256()
    for key in ("paths", "labels", "inputs"):
        h.update(np.ascontiguousarray(z[key]).tobytes())
    return {"kind": "eval.npz (format 1)", "name": path.name, "folder": None, "sha256": h.hexdigest(),
            "hash_of": "the file's paths, labels and inputs (format 1 keeps no image hashes)"}


def load_eval_set(path: Path) -> EvalSet:
    """Read an evaluation set (format 2: crops, rebuilt to float; format 1: float inputs as stored)."""
    if not path.is_file():
        raise ArtifactError(f"missing {path}: run `edge-tl export` or `edge-tl bench` on a workstation first")
    with np.load(path, allow_pickle=False) as z:
        if "crops" in z.files:
            pre = Preprocess.from_dict(json.loads(str(z["preprocessing"])))
            inputs = inputs_from_crops(z["crops"], pre)
            identity = json.loads(str(z["identity"])) if "identity" in z.files else {}
        else:
            inputs, identity = z["inputs"], _legacy_identity(z, path)
        identity = identity | {"path": str(path)}
        return EvalSet(inputs, z["labels"], z["logits"], [str(c) for c in z["classes"]],
                       [str(p) for p in z["paths"]], str(path), identity)


def compact_eval_npz(src: Path, dest: Path) -> dict[str, Any]:
    """Rewrite a format 1 eval.npz (float32 inputs) as format 2 at ``dest``, checking that the rebuilt
    inputs are bit-identical to the stored ones; returns the sizes. Raises ArtifactError when the
    inputs cannot be rebuilt exactly (they were not made from 8-bit pixels by this contract)."""
    with np.load(src, allow_pickle=False) as z:
        if "crops" in z.files:
            raise ArtifactError(f"{src} is already in the compact format")
        if "preprocessing" in z.files:
            pre_dict = json.loads(str(z["preprocessing"]))
        else:
            manifest = read_manifest(src.parent / "finetune", verify=False)
            pre_dict = manifest["preprocessing"]
        pre = Preprocess.from_dict(pre_dict)
        inputs = z["inputs"]
        crops = crops_from_inputs(inputs, pre)
        if crops is None:
            raise ArtifactError(f"{src}: the inputs do not rebuild exactly from 8-bit crops")
        identity = _legacy_identity(z, src) | {"kind": "validation split", "name": "validation split",
                                               "converted_from": str(src)}
        save_eval_set(dest, crops, pre, z["labels"], z["logits"], [str(c) for c in z["classes"]],
                      [str(p) for p in z["paths"]], identity)
    rebuilt = load_eval_set(dest).inputs
    if not np.array_equal(rebuilt, inputs):
        raise ArtifactError(f"{dest}: rebuilt inputs differ from {src}")
    return {"before_bytes": src.stat().st_size, "after_bytes": dest.stat().st_size,
            "n": len(inputs), "bit_identical": True}


def _cache_key(folder_hash: str, pre: Preprocess, model_sha: str) -> str:
    blob = json.dumps({"format": FORMAT, "images": folder_hash, "preprocessing": pre.to_dict(),
                       "model": model_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def eval_set_from_folder(run: RunDir, data_dir: Path, quiet: bool = True) -> EvalSet:
    """An eval set from another labelled folder with the run's classes (``bench --data``).

    Cached in ``RUN/evalsets/<key>.npz`` (key: the folder's content hash, the preprocessing contract and
    the fine-tuned model's sha256): a later bench on unchanged images reads it back instead of decoding
    every image and running the torch model again.
    """
    manifest = read_manifest(run.require_finetune(), verify=False)
    classes = list(manifest["classes"])
    pre = Preprocess.from_dict(manifest["preprocessing"])
    data_dir = Path(data_dir)
    content = folder_sha256(data_dir, classes)
    model_sha = (manifest.get("files") or {}).get("model.pt") or sha256_file(run.finetune / "model.pt")
    cache = run.root / EVALSETS_DIR / f"{_cache_key(content, pre, model_sha)[:32]}.npz"
    if cache.is_file():
        try:
            cached = load_eval_set(cache)
            if cached.identity.get("folder_sha256") == content:
                log.info("evaluation set %s: reusing %s (same images, preprocessing and model)", data_dir, cache)
                return _with_source(cached, data_dir)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache %s (%s)", cache, exc)
    folder = scan_image_folder(data_dir, classes=classes)
    crops, labels, paths = crop_samples(folder.root, folder.samples, pre, quiet)
    used = [Sample(p, int(y)) for p, y in zip(paths, labels, strict=True)]
    identity = {"kind": "folder", "name": data_dir.resolve().name, "folder": str(data_dir.resolve()),
                "sha256": samples_sha256(folder.root, used, classes), "folder_sha256": content}
    inputs = inputs_from_crops(crops, pre)
    logits = reference_logits(run, inputs)
    try:
        save_eval_set(cache, crops, pre, labels, logits, classes, paths, identity)
    except OSError as exc:  # a read-only run still benches; it only recomputes next time
        log.warning("cannot cache the evaluation set in %s: %s", cache, exc)
    return EvalSet(inputs, labels, logits, classes, paths, str(data_dir), identity | {"cache": str(cache)})


def _with_source(es: EvalSet, data_dir: Path) -> EvalSet:
    es.identity = es.identity | {"cache": es.identity.get("path")}
    es.identity.pop("path", None)
    es.source = str(data_dir)
    return es
