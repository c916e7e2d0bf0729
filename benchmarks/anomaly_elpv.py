"""Image AUROC of an anomaly run on every elpv test cell, all / mono / poly, torch and exported targets.

    edge-tl dataset elpv --anomaly --out data/elpv-an
    edge-tl finetune data/elpv-an/train/good --task anomaly --val data/elpv-an/test --out runs/cells
    python benchmarks/anomaly_elpv.py runs/cells data/elpv-an/test cpu-openvino-int8 cpu-onnxruntime-int8

Both halves of the labelled set (the threshold's and the reported one) are scored: AUROC needs no
threshold, so this is the figure the issue's acceptance names. False-reject and escape rates at the
shipped threshold are printed too, but the threshold was chosen on half of these images (see the run's
manifest for the held-out half alone). Cell type comes from the importer's file names (mono_/poly_).
``torch_by_defect_probability``: good cells against the defects the annotators marked 2/3 ("probably")
and 1 (certain) separately, from the elpv package's labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def score_cells(run: Path, test: Path, targets: list[str]) -> dict[str, object]:
    """AUROC all / mono / poly of ``run`` on every cell under ``test`` (torch, then each exported target),
    with false-reject and escape at the shipped threshold and, per target, decision agreement with torch."""
    import torch

    from edge_tl.backends import RunnerSpec, open_runner
    from edge_tl.checkpoint import load_model
    from edge_tl.metrics import auroc, scores_from_logits
    from edge_tl.preprocess import Preprocess, load_image
    from edge_tl.targets import get_target

    torch.set_num_threads(2)
    model, man = load_model(run / "finetune")
    pre = Preprocess.from_dict(man["preprocessing"])
    paths = sorted(p for p in test.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    labels = np.array([p.parent.name not in ("good", "ok") for p in paths]).astype(int)
    types = np.array([p.name.split("_")[0] for p in paths])
    x = np.stack([pre(load_image(p)) for p in paths]).astype(np.float32)
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(x[i:i + 32])).numpy() for i in range(0, len(x), 32)])

    def figures(logits: np.ndarray) -> dict[str, float | None]:
        s = scores_from_logits(logits)
        groups = [("all", types == types)] + [(t, types == t) for t in sorted(set(types)) if t in ("mono", "poly")]
        return {f"auroc_{k}": round(auroc(labels[m], s[m]), 4) for k, m in groups} | {
            "false_reject": round(float((s[labels == 0] > 1).mean()), 4),
            "escape": round(float((s[labels == 1] <= 1).mean()), 4)}

    out: dict[str, object] = {"n": len(paths), "n_defect": int(labels.sum()), "torch": figures(ref),
                              "torch_by_defect_probability": _by_probability(paths, types, scores_from_logits(ref))}
    for name in targets:
        t = get_target(name)
        r = open_runner(RunnerSpec(run / "targets" / t.name / t.model_file, t.backend, t.device, t.precision,
                                   t.threads, t.batch_size))
        got = np.concatenate([r.run(x[i:i + t.batch_size]) for i in range(0, len(x), t.batch_size)])
        r.close()
        sr, sg = scores_from_logits(ref), scores_from_logits(got)
        out[name] = figures(got) | {"decision_agreement": round(float(((sr > 1) == (sg > 1)).mean()), 4),
                                    "max_score_drift": round(float(np.abs(sr - sg).max()), 4)}
    return out


def _by_probability(paths: list[Path], types: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC of good cells (annotated defect probability 0) against the defects of each annotated probability
    (2/3: "probably defective", 1: certain), per cell type, from the installed elpv set's labels."""
    from edge_tl.datasets import elpv_rows
    from edge_tl.metrics import auroc

    prob = {Path(rel).name: p for rel, p, _kind in elpv_rows()[1]}
    # The importer names a cell "<type>_<elpv file name>".
    pr = np.array([prob.get(p.name.split("_", 1)[-1], np.nan) for p in paths])
    out: dict[str, float] = {}
    for kind in ("mono", "poly", "all"):
        cells = types == kind if kind != "all" else np.ones(len(paths), bool)
        good = cells & (pr == 0)
        for name, level in (("2/3", 2 / 3), ("1", 1.0)):
            sel = good | (cells & np.isclose(pr, level))
            if good.any() and (sel & ~good).any():
                out[f"auroc_{kind}_p{name}"] = round(auroc((pr[sel] > 0).astype(int), scores[sel]), 4)
    return out


def main() -> None:
    print(json.dumps(score_cells(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]), indent=1))


if __name__ == "__main__":
    main()
