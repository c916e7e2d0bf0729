"""The reproducible compression benchmark: one process, the whole chain, one table.

    python benchmarks/neu_table.py [--data ../shared/datasets/neu-cls] [--out runs/bench] [--ratios 0.3 0.5]

Fine-tunes mobilenet_v2 (ImageNet weights, linear, seed 0) once, prunes copies of that run at each
ratio, exports ONNX Runtime fp32/int8 and OpenVINO fp32/int8 for each variant, and benches every
candidate and torch fp32 against the full model in this one process (same threads, same warm-up).
Writes OUT/benchmark.md and OUT/benchmark.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edge_tl.backends import RunnerSpec, open_runner
from edge_tl.bench.run import bench_target, measure
from edge_tl.evalset import ensure_eval_set, load_eval_set
from edge_tl.manifest import read_manifest, write_bytes, write_json
from edge_tl.metrics import agreement, classification_metrics
from edge_tl.rundir import RunDir
from edge_tl.stages.export import export
from edge_tl.stages.finetune import finetune
from edge_tl.targets import get_target
from edge_tl.training import TrainConfig

TARGETS = ("cpu-onnxruntime-fp32", "cpu-onnxruntime-int8", "cpu-openvino-fp32", "cpu-openvino-int8")
ROOT = Path(__file__).resolve().parents[1]


def _variant(base: RunDir, ratio: float, quiet: bool) -> tuple[RunDir, dict[str, Any]]:
    """A copy of the base run (finetune + eval.npz), pruned at ``ratio``."""
    from edge_tl.stages.prune import prune

    run = RunDir(base.root.parent / f"{base.root.name}-p{round(ratio * 100)}")
    if not (run.prune / "manifest.json").is_file():
        shutil.rmtree(run.root, ignore_errors=True)
        run.root.mkdir(parents=True)
        shutil.copytree(base.finetune, run.finetune)
        shutil.copyfile(base.eval_npz, run.eval_npz)
        prune(run.root, ratio, quiet=quiet)
    return run, read_manifest(run.prune)


def _row(name: str, variant: str, report: dict[str, Any], macs: float) -> dict[str, Any]:
    c = report["candidate"]
    return {"model": name, "variant": variant, "top1": c["top1"], "drop": c["top1_drop"], "agreement": c["agreement"],
            "p50": c["latency_ms"]["p50"], "p95": c["latency_ms"]["p95"], "speedup": report["speedup"],
            "size_mb": c["size_mb"], "macs_m": macs / 1e6, "notes": "; ".join(report.get("notes", []))}


def _torch_row(run: RunDir, variant: str, evalset: Any, macs: float, ref_p50: float) -> dict[str, Any]:
    profile = get_target("cpu-onnxruntime-fp32")  # the same threads, warm-up and iterations as the others
    stage = run.prune if variant != "unpruned" else run.finetune
    runner = open_runner(RunnerSpec(stage, "torch", "cpu", "fp32", profile.threads, profile.batch_size))
    try:
        m = measure(runner, evalset, profile)
    finally:
        runner.close()
    met = classification_metrics(m["logits"], evalset.labels, evalset.classes)
    ref_top1 = classification_metrics(evalset.logits, evalset.labels, evalset.classes)["top1"]
    return {"model": "torch fp32", "variant": variant, "top1": met["top1"], "drop": (ref_top1 - met["top1"]) * 100,
            "agreement": agreement(m["logits"], evalset.logits), "p50": m["latency_ms"]["p50"],
            "p95": m["latency_ms"]["p95"], "speedup": ref_p50 / m["latency_ms"]["p50"],
            "size_mb": (stage / "model.pt").stat().st_size / 1e6, "macs_m": macs / 1e6, "notes": ""}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | variant | top-1 | drop (pt) | agreement | p50 ms | p95 ms | speedup vs torch | size MB "
           "| MACs M |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['variant']} | {r['top1']:.4f} | {r['drop']:.2f} | {r['agreement']:.4f} | "
            f"{r['p50']:.2f} | {r['p95']:.2f} | {r['speedup']:.2f}× | {r['size_mb']:.2f} | {r['macs_m']:.0f} |"
            for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "neu-cls"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.3, 0.5])
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"error: data folder not found: {args.data}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    base = RunDir(Path(args.out))
    if not (base.finetune / "manifest.json").is_file():
        finetune(args.data, base.root, arch="mobilenet_v2", weights="imagenet",
                 train_cfg=TrainConfig(mode="linear", seed=0, quiet=args.quiet))
    evalset = load_eval_set(ensure_eval_set(base, args.quiet))
    variants: list[tuple[str, RunDir, float]] = []
    full_macs = None
    for ratio in args.ratios:
        run, pm = _variant(base, ratio, args.quiet)
        full_macs = pm["macs"]["before"]
        variants.append((f"pruned {ratio:.0%}", run, pm["macs"]["after"]))
    variants.insert(0, ("unpruned", base, full_macs or float("nan")))
    rows: list[dict[str, Any]] = []
    for variant, run, macs in variants:
        ref_p50 = None
        for name in TARGETS:
            if not (run.target(name) / "manifest.json").is_file():
                export(run.root, name, source="prune" if variant != "unpruned" else "finetune", quiet=args.quiet)
            report = bench_target(run, get_target(name), evalset, args.quiet)
            ref_p50 = report["reference"]["latency_ms"]["p50"]
            rows.append(_row(name, variant, report, macs))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        rows.append(_torch_row(run, variant, evalset, macs, ref_p50))
    text = table(rows)
    write_bytes(base.root / "benchmark.md", (text + "\n").encode())
    write_json(base.root / "benchmark.json", {"rows": rows, "seconds": time.perf_counter() - started,
                                              "data": args.data})
    print(text)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
