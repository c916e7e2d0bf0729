"""Fit the out-of-distribution score of a source model for export (see ``edge_tl/ood.py``).

What counts as "in distribution" is what the model was made for:

- a fine-tuned or pruned model: the training split's images with their labels (class means and the
  shared covariance); the threshold on the validation images (``eval.npz``), never the ones that fit it;
- an adapted model (``RUN/adapt``): the new line's unlabelled images, classes from the model's own
  answers (there are no labels); 80 % fit the statistics, the other 20 % (seeded) set the threshold.

The fit runs the frozen backbone once per image on the fastest engine (``features.PrefixEngine``) and
is cached in ``RUN/cache/ood-<model sha256[:16]>-<fpr>.npz``, so exporting the same model for several
targets fits once.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Sample
from ..errors import ArtifactError
from ..manifest import atomic_path
from ..models import get_arch, get_submodule, set_submodule
from ..ood import DEFAULT_FPR, DEFAULT_RANK, OODStats, distance, fit, threshold_for
from ..preprocess import Preprocess
from ..rundir import RunDir

log = logging.getLogger("edge_tl")

MAX_FIT_IMAGES = 2000  # per fit; a class-stratified, seeded subset beyond it
HOLDOUT = 0.2  # adapted models: the share of unlabelled images that set the threshold


def _subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    if len(samples) <= limit:
        return samples
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(samples), size=limit, replace=False))
    return [samples[i] for i in keep]


def _backbone(model: Any, arch: str) -> Any:
    import torch.nn as nn

    backbone = copy.deepcopy(model).eval()
    set_submodule(backbone, get_arch(arch).head, nn.Identity())
    return backbone


def fit_for_export(run: RunDir, src: Path, src_manifest: dict[str, Any], model: Any, val_inputs: np.ndarray,
                   fpr: float = DEFAULT_FPR, quiet: bool = True) -> tuple[OODStats, float, dict[str, Any]]:
    """(statistics, raw threshold, record for the export manifest) of ``model`` from stage folder ``src``.

    ``val_inputs``: the validation inputs (N, 3, H, W) from ``eval.npz`` (used unless ``src`` is adapt).
    Raises ArtifactError when the images the score is fitted on are gone.
    """
    import torch

    from ..features import PrefixEngine
    from ..training import run_over

    digest = src_manifest["files"]["model.pt"]
    cache = run.root / "cache" / f"ood-{digest[:16]}-{fpr:g}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return OODStats.from_arrays(z), float(z["threshold"]), json.loads(str(z["record"]))
    arch = src_manifest["arch"]
    pre = Preprocess.from_dict(src_manifest["preprocessing"])
    engine = PrefixEngine(_backbone(model, arch), (3, pre.crop, pre.crop))
    seed = 0
    if src.name == "adapt":
        unl = src_manifest["unlabeled"]
        root = Path(unl["root"])
        samples = [Sample(i["path"], 0) for i in unl["images"] if (root / i["path"]).is_file()]
        if len(samples) < 10:
            raise ArtifactError(f"the unlabelled images the model was adapted on ({root}) are gone: the "
                                "out-of-distribution score is fitted on them; restore them to export")
        samples = _subset(samples, MAX_FIT_IMAGES, seed)
        feats, _, bad = run_over(engine, root, samples, pre, quiet=quiet, desc="ood fit")
        with torch.inference_mode():
            labels = get_submodule(model, get_arch(arch).head)(feats).argmax(1).numpy()
        x = feats.numpy()
        order = np.random.default_rng(seed).permutation(len(x))
        n_cal = max(1, round(HOLDOUT * len(x)))
        cal, fit_idx = order[:n_cal], order[n_cal:]
        stats = fit(x[fit_idx], labels[fit_idx], DEFAULT_RANK)
        cal_d = distance(stats, x[cal])
        fitted_on = {"what": "the unlabelled images the model was adapted on, classes from its own answers",
                     "root": str(root), "n": len(fit_idx), "skipped": len(bad)}
        calibrated_on = {"what": f"a seeded {HOLDOUT:.0%} of the same unlabelled images, not used to fit",
                         "n": int(n_cal)}
    else:
        root, train, _val = run.split()
        present = [s for s in train if (root / s.path).is_file()]
        if not present:
            raise ArtifactError(f"the fine-tune's training images under {root} are gone: the out-of-distribution "
                                "score is fitted on them; restore them to export")
        present = _subset(present, MAX_FIT_IMAGES, seed)
        feats, labels, bad = run_over(engine, root, present, pre, quiet=quiet, desc="ood fit")
        stats = fit(feats.numpy(), labels, DEFAULT_RANK)
        val = torch.from_numpy(np.ascontiguousarray(val_inputs, np.float32))
        cal_d = distance(stats, np.concatenate([engine(val[i:i + 64]).numpy() for i in range(0, len(val), 64)]))
        fitted_on = {"what": "the training split (split.json), with its labels", "root": str(root),
                     "n": len(labels), "skipped": len(bad)}
        calibrated_on = {"what": "the validation split (eval.npz), not used to fit", "n": len(cal_d)}
    threshold = threshold_for(cal_d, fpr)
    record = {
        "output": "ood_score", "method": "mahalanobis",
        "source": "Lee et al., NeurIPS 2018: Mahalanobis distance of L2-normalised pooled features to the "
                  "nearest class mean, shared Ledoit-Wolf covariance",
        "features": int(stats.means.shape[1]), "classes": int(stats.means.shape[0]),
        "rank": int(stats.basis.shape[1]), "fitted_on": fitted_on, "calibrated_on": calibrated_on,
        "false_alarm_target": fpr, "threshold_distance": threshold,
        "calibration_flagged": float(np.mean(cal_d > threshold)),
        "scale": "ood_score = distance / threshold_distance: 1.0 is the threshold",
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **stats.to_arrays(), threshold=np.float64(threshold), record=json.dumps(record))
    return stats, threshold, record


def graft_ood(qdq: bytes, float_onnx: Path) -> bytes:
    """``qdq`` (a serialised ONNX graph with one output, ``logits``) with the float ``ood_score`` subgraph of
    ``float_onnx`` attached to the features its classifier head reads; ``qdq`` unchanged when
    ``float_onnx`` has no such output.

    For graphs built without ``with_ood`` (``export --qat`` trains and exports its own FX graph): the
    subgraph's nodes (``/ood/…``), their initializers and the output are copied over, and its one outside
    input (the pooled features) is renamed to the tensor the QDQ graph's final Gemm/MatMul reads.
    Raises ArtifactError when either graph does not have that shape.
    """
    import onnx

    from ..ood import OOD_OUTPUT, OOD_SCOPE

    src = onnx.load(str(float_onnx))
    out = next((o for o in src.graph.output if o.name == OOD_OUTPUT), None)
    if out is None:
        return qdq
    graph = onnx.load_from_string(qdq)
    nodes = [n for n in src.graph.node if n.name.startswith(OOD_SCOPE)]
    inits = {i.name: i for i in src.graph.initializer}
    # The exporter names some of the subgraph's Constant nodes outside its scope: they come along.
    src_producers = {t: n for n in src.graph.node for t in n.output}
    needed = {t for n in nodes for t in n.input if t} - {t for n in nodes for t in n.output}
    nodes = [src_producers[t] for t in sorted(needed) if t in src_producers
             and src_producers[t].op_type == "Constant"] + nodes
    produced = {t for n in nodes for t in n.output}
    outside = {t for n in nodes for t in n.input if t and t not in produced and t not in inits}
    producers = {t: n for n in graph.graph.node for t in n.output}
    head, name = None, "logits"
    while name in producers:  # back from the logits through Q/DQ pairs and a bias Add to the head
        node = producers[name]
        if node.op_type in ("Gemm", "MatMul"):
            head = node
            break
        name = node.input[0]
    if len(outside) != 1 or head is None:
        raise ArtifactError(f"cannot attach the ood_score subgraph: {len(outside)} outside inputs in "
                            f"{float_onnx.name}, {'a' if head else 'no'} final Gemm/MatMul in the QAT graph")
    feature, (old,) = head.input[0], outside
    for n in nodes:
        copied = graph.graph.node.add()
        copied.CopyFrom(n)
        for i, t in enumerate(copied.input):
            if t == old:
                copied.input[i] = feature
    graph.graph.initializer.extend(inits[t] for t in sorted({t for n in nodes for t in n.input if t in inits}))
    graph.graph.output.append(out)
    onnx.checker.check_model(graph)
    return graph.SerializeToString()
