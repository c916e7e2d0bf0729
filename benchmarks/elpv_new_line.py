"""Issue 15's out-of-distribution figures: an elpv model trained on mono cells meets poly cells and NEU steel.

    python benchmarks/elpv_new_line.py data/elpv WORK [linear|partial] [--latency]

``data/elpv`` is the ImageFolder ``edge-tl dataset elpv`` writes (``ok``/``defect``, files named
``mono_*``/``poly_*``); NEU images are read from ``../shared/datasets/neu-cls`` when present. In WORK:
mono cells split 80/20 (seed 7; symlinks), mobilenet_v2 fine-tuned on the 80 % (``linear`` 15 epochs, or
``partial`` 3 blocks, 8 epochs), exported for ORT fp32 and OpenVINO INT8 with the ood output, bundled with
and without the ood review. The bundle's runtime then scores the held-out 20 % mono cells (never seen: not
training, not validation), every poly cell and every 6th NEU image. Printed per target: the limit, AUROC of
the score between held-out mono and poly (and NEU), the share flagged of each, and how many decisions
differ from the bundle without the ood review for any reason other than out_of_distribution.

``--latency``: also batch-1 runtime latency with vs without the output (same model exported with
``ood=False``), alternating blocks of 25 calls in one process. Run it on a quiet host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from edge_tl.runtime import Runtime
from edge_tl.stages.bundle import bundle
from edge_tl.stages.export import export
from edge_tl.stages.finetune import finetune
from edge_tl.training import TrainConfig

TARGETS = ("cpu-onnxruntime-fp32", "cpu-openvino-int8")
NEU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu-cls"


def images(folder: Path, step: int = 1, prefix: str = "") -> list[Path]:
    found = sorted(p for p in folder.rglob(f"{prefix}*") if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    return found[::step]


def split_mono(elpv: Path, work: Path) -> tuple[Path, Path]:
    train, test = work / "mono_train", work / "mono_test"
    if not train.exists():
        rng = np.random.default_rng(7)
        for cls in ("defect", "ok"):
            files = images(elpv / cls, prefix="mono_")
            order = rng.permutation(len(files))
            cut = int(0.8 * len(files))
            for dest, part in ((train, order[:cut]), (test, order[cut:])):
                (dest / cls).mkdir(parents=True, exist_ok=True)
                for i in part:
                    os.symlink(files[i].resolve(), dest / cls / files[i].name)
    return train, test


def predict_all(rt: Runtime, files: list[Path]) -> list:
    return [p for i in range(0, len(files), 32) for p in rt.predict_batch(files[i:i + 32])]


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def latency(a: Runtime, b: Runtime, x: np.ndarray) -> tuple[float, float]:
    """p50 ms of ``a`` and ``b`` at batch 1, alternating blocks of 25 calls after 20 warm-up calls each."""
    for rt in (a, b):
        for _ in range(20):
            rt.predict_inputs(x, [None])
    times: dict[int, list[float]] = {0: [], 1: []}
    for block in range(20):
        for k in ((0, 1) if block % 2 == 0 else (1, 0)):
            rt = (a, b)[k]
            for _ in range(25):
                start = time.perf_counter()
                rt.predict_inputs(x, [None])
                times[k].append((time.perf_counter() - start) * 1000)
    return float(np.median(times[0])), float(np.median(times[1]))


def main(elpv: Path, work: Path, mode: str, with_latency: bool) -> None:
    train, test = split_mono(elpv, work)
    run = work / f"run-{mode}"
    if not (run / "finetune" / "manifest.json").exists():
        extra = {"unfreeze": 3} if mode == "partial" else {}
        finetune(train, run, arch="mobilenet_v2", weights="imagenet",
                 train_cfg=TrainConfig(mode=mode, epochs=15 if mode == "linear" else 8, seed=0, quiet=True,
                                       workers=0, **extra))
    sets = {"mono_held_out": images(test), "poly": images(elpv, prefix="poly_"),
            "neu": images(NEU, step=6) if NEU.is_dir() else []}
    print({k: len(v) for k, v in sets.items()}, flush=True)
    for t in TARGETS:
        m = export(run, t)
        for use in (True, False):
            bundle(run, t, work / f"bundle-{mode}-{t}-{'ood' if use else 'plain'}", use_ood=use)
        with Runtime(work / f"bundle-{mode}-{t}-ood") as rt, Runtime(work / f"bundle-{mode}-{t}-plain") as plain:
            out: dict[str, object] = {"limit": round(m["ood"]["limit"], 4)}
            scores = {}
            for name, files in sets.items():
                if not files:
                    continue
                got, ref = predict_all(rt, files), predict_all(plain, files)
                scores[name] = np.array([p.ood_score for p in got])
                out[f"flagged_{name}"] = round(float(np.mean([p.reason == "out_of_distribution" for p in got])), 4)
                out[f"changed_otherwise_{name}"] = sum(a.decision != b.decision and a.reason != "out_of_distribution"
                                                       for a, b in zip(got, ref, strict=True))
            out["auroc_mono_vs_poly"] = round(auroc(scores["mono_held_out"], scores["poly"]), 4)
            if "neu" in scores:
                out["auroc_mono_vs_neu"] = round(auroc(scores["mono_held_out"], scores["neu"]), 4)
        print(mode, t, json.dumps(out), flush=True)
        if with_latency:
            plain_run = work / f"run-{mode}-without-ood"
            if not plain_run.exists():
                shutil.copytree(run, plain_run, ignore=shutil.ignore_patterns("targets", "cache", "reports"))
            export(plain_run, t, ood=False)
            bundle(plain_run, t, work / f"bundle-{mode}-{t}-no-output")
            with Runtime(work / f"bundle-{mode}-{t}-ood") as a, Runtime(work / f"bundle-{mode}-{t}-no-output") as b:
                x = a.prepare(sets["mono_held_out"][0])[None]
                with_ms, without_ms = latency(a, b, x)
            print(mode, t, f"batch-1 p50 with the ood output {with_ms:.3f} ms, without {without_ms:.3f} ms "
                  f"({with_ms / without_ms - 1:+.1%}); load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(args[0]), Path(args[1]), args[2] if len(args) > 2 else "linear", "--latency" in sys.argv)
