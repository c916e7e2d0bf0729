"""Does a partial fine-tune with class weights keep its INT8 drop within the profile's gates, on images that
neither the epoch choice nor the INT8 fallback ever saw, on both x86 INT8 targets?

    python benchmarks/weighted_int8.py [--out runs/weighted] [--sets neu neu-imbalanced elpv]

Each set is split once (seed 0, ``default_recipe``'s split) into trainval (75 % per class) and test (25 %).
The recipe is ``partial-1+weights`` (the last block and head on cached activations, class-weighted loss).
``edge-tl bench RUN --export --data TEST`` then exports ONNX Runtime and OpenVINO INT8 (the fallback chooses
float layers on training images, and checks them on the run's validation split) and judges both on TEST
against the torch fp32 model, in one process, with the INT8-vs-float latency ratio of the same backend.
Writes OUT/weighted_int8.md and .json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_recipe import RECIPES, _cli, split_set

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("cpu-onnxruntime-int8", "cpu-openvino-int8")
RECIPE = "partial-1+weights"


def _run(data: Path, run: Path, extra: list[str]) -> dict[str, Any]:
    manifest = run / "finetune" / "manifest.json"
    if not manifest.is_file():
        _cli("finetune", str(data / "trainval"), "--out", str(run), "--seed", "0", "-q", *RECIPES[RECIPE], *extra)
    reports = {t: run / f"test-{t}.json" for t in TARGETS}
    for t, path in reports.items():
        if not path.is_file():
            _cli("bench", str(run), "--target", t, "--export", "--data", str(data / "test"), "--json", str(path), "-q")
    m = json.loads(manifest.read_text())
    row: dict[str, Any] = {"val_top1": m["metrics"]["val_top1"], "val_balanced": m["metrics"]["val_balanced_accuracy"]}
    for t, path in reports.items():
        r = json.loads(path.read_text())
        c, ref = r["candidate"], r["reference"]
        tm = json.loads((run / "targets" / t / "manifest.json").read_text())
        held = (tm.get("fallback") or {}).get("held_out") or {}
        row[t] = {"n": r["n"], "ref_top1": ref["top1"], "ref_balanced": ref["balanced_accuracy"],
                  "drop": c["top1_drop"], "balanced_drop": c.get("balanced_accuracy_drop"),
                  "from_noise": c.get("top1_drop_from_noise"), "confident": c.get("agreement_confident"),
                  "confident_n": c.get("confident_n"), "near_ties": c.get("near_tie_n"),
                  "layers": (c.get("precision_state") or {}).get("label", c["precision"]),
                  "int8_vs_float": c.get("int8_speedup_over_float"), "passed": r["passed"],
                  "failed": [g["name"] for g in r["gates"] if g["passed"] is False],
                  "fallback": (tm.get("fallback") or {}).get("status"), "val_drop": held.get("top1_drop"),
                  "reliable": r["timing_reliable"], "host": r["host"]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-cls")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "weighted")
    ap.add_argument("--sets", nargs="+", default=["neu", "neu-imbalanced", "elpv"])
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for s in args.sets:
        data, extra = split_set(s, args.neu, args.out)
        rows.append({"set": s} | _run(data, args.out / s, extra))
    lines = ["| set | val top-1 / bal. | target | test images | test top-1 / bal. (fp32) | drop (pts) | bal. drop | "
             "drop from noise alone | confident agreement (n) | near-ties | layers | fallback (val drop) | "
             "INT8 vs float p50 | failed gates |", "|" + "---|" * 14]
    for r in rows:
        for i, t in enumerate(TARGETS):
            b = r[t]
            head = f"| {r['set']} | {r['val_top1']:.3f} / {r['val_balanced']:.3f} |" if i == 0 else "| | |"
            noise = b["from_noise"]
            chance = (f"{noise['mean']:.2f} ({noise['interval'][0]:.2f} to {noise['interval'][1]:.2f}), p "
                      f"{noise['p_value']:.2f}") if noise else "–"
            conf = "–" if b["confident"] is None else f"{b['confident']:.4f} ({b['confident_n']})"
            val = "–" if b["val_drop"] is None else f"{b['val_drop']:.2f}"
            ratio = "–" if b["int8_vs_float"] is None else f"{b['int8_vs_float']:.2f}×" + (
                "" if b["reliable"] else " (unreliable)")
            bal = "–" if b["balanced_drop"] is None else f"{b['balanced_drop']:.2f}"
            lines.append(f"{head} {t} | {b['n']} | {b['ref_top1']:.3f} / {b['ref_balanced']:.3f} | {b['drop']:.2f} | "
                         f"{bal} | {chance} | {conf} | {b['near_ties']} | {b['layers']} | {b['fallback']} ({val}) | "
                         f"{ratio} | {', '.join(b['failed']) or 'none'} |")
    host = rows[0][TARGETS[0]]["host"] if rows else {}
    lines.append(f"\nHost: {host.get('cpu')}, flags {' '.join(host.get('cpu_flags', []))}; recipe {RECIPE}; figures "
                 "on each set's test part (25 % per class, seed 0), never seen by the epoch choice or the fallback.")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weighted_int8.md").write_text(text + "\n")
    (args.out / "weighted_int8.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
