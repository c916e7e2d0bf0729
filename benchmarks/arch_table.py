"""mobilenet_v2 beside the EfficientNet-Lite family on NEU and elpv: one table, the product's own CLI.

    python benchmarks/arch_table.py [--neu ../shared/datasets/neu-cls] [--out runs/arch] \
        [--archs mobilenet_v2 efficientnet_lite0] [--sets neu elpv elpv-anomaly]

For each set and backbone: a linear probe and the demo's partial recipe (last block + head on cached
activations, 2 views, backbone lr x1, 15 epochs, seed 0; elpv with the whole frame, as the demo), their
validation top-1 and balanced accuracy (the validation split: 20 % per class, seed 0) and training
time; then, for the partial model, ``edge-tl bench --export`` of OpenVINO fp32 and INT8 and ONNX Runtime
INT8 in one process per run: held-out drop and agreement on that validation split, INT8 layers, p50 and
the speed-up over torch fp32 (a ratio measured in the same process, batch 1). Print the CPU flags beside
it (the bench's host line). ``elpv-anomaly``: ``edge-tl dataset elpv --anomaly`` (good cells only to fit),
the default PaDiM fit per backbone, its image AUROC on every labelled test cell (all / mono / poly, torch),
then the same bench: AUROC drop, and the ok/defect decisions' accuracy drop and agreement on the held-out
half of the labelled cells. Writes OUT/arch_table.md and .json after every row. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("cpu-openvino-fp32", "cpu-onnxruntime-int8", "cpu-openvino-int8")
PARTIAL = ["--mode", "partial", "--unfreeze", "1", "--views", "2", "--backbone-lr-scale", "1", "--epochs", "15"]


def _cli(*args: str) -> int:
    cmd = [sys.executable, "-m", "edge_tl", *args]
    print("$ edge-tl " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=False).returncode


def _data(name: str, neu: Path, out: Path) -> Path:
    if name == "neu":
        return neu
    dest = out / "data" / name
    anomaly = ["--anomaly"] if name == "elpv-anomaly" else []
    if not dest.is_dir() and _cli("dataset", "elpv", *anomaly, "--out", str(dest)) != 0:
        raise SystemExit("could not import elpv (pip install elpv-dataset)")
    return dest


def _fit_anomaly(data: Path, run: Path, arch: str) -> dict[str, Any]:
    from anomaly_elpv import score_cells

    manifest = run / "finetune" / "manifest.json"
    if not manifest.is_file():
        _cli("finetune", str(data / "train" / "good"), "--task", "anomaly", "--val", str(data / "test"),
             "--out", str(run), "--arch", arch, "--seed", "0", "-q")
    m = json.loads(manifest.read_text())
    torch_fig = score_cells(run, data / "test", [])["torch"]
    return {"auroc_all": torch_fig["auroc_all"], "auroc_mono": torch_fig["auroc_mono"],
            "auroc_poly": torch_fig["auroc_poly"], "val_auroc": m["metrics"].get("val_auroc"),
            "train_s": m["timings"]["train_seconds"]}


def _fit(data: Path, run: Path, arch: str, mode: str, set_name: str) -> dict[str, Any]:
    manifest = run / "finetune" / "manifest.json"
    if not manifest.is_file():
        extra = PARTIAL if mode == "partial" else ["--mode", "linear"]
        if set_name == "elpv":
            extra = [*extra, "--resize", "full"]
        _cli("finetune", str(data), "--out", str(run), "--arch", arch, "--seed", "0", "-q", *extra)
    m = json.loads(manifest.read_text())
    return {"top1": m["metrics"]["val_top1"], "balanced": m["metrics"]["val_balanced_accuracy"],
            "train_s": m["timings"]["train_seconds"]}


def _bench(run: Path) -> dict[str, Any]:
    if not all((run / "reports" / f"{t}.json").is_file() for t in TARGETS):
        _cli("bench", str(run), "--export", *(a for t in TARGETS for a in ("--target", t)), "-q")
    out: dict[str, Any] = {}
    for t in TARGETS:
        r = json.loads((run / "reports" / f"{t}.json").read_text())
        c = r["candidate"]
        out[t] = {"drop": c["top1_drop"], "auroc_drop": c.get("auroc_drop"),
                  "balanced_drop": c.get("balanced_accuracy_drop"),
                  "agreement": c["agreement"] if c.get("agreement") is not None
                  else c.get("decision_agreement"), "confident": c.get("agreement_confident"),
                  "near_ties": c.get("near_tie_n"), "p50_ms": c["latency_ms"]["p50"],
                  "speedup": r["speedup"], "passed": r["passed"],
                  "layers": (c.get("precision_state") or {}).get("label", c["precision"]),
                  "reliable": r["timing_reliable"], "host": r["host"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-cls")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "arch")
    ap.add_argument("--archs", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    ap.add_argument("--sets", nargs="+", default=["neu", "elpv"])
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for s in args.sets:
        data = _data(s, args.neu, args.out)
        for arch in args.archs:
            row: dict[str, Any] = {"set": s, "arch": arch}
            if s == "elpv-anomaly":
                row["anomaly"] = _fit_anomaly(data, args.out / f"{s}-{arch}", arch)
                row["targets"] = _bench(args.out / f"{s}-{arch}")
            else:
                for mode in ("linear", "partial"):
                    row[mode] = _fit(data, args.out / f"{s}-{arch}-{mode}", arch, mode, s)
                row["targets"] = _bench(args.out / f"{s}-{arch}-partial")
            rows.append(row)
            _write(rows, args.out)  # after every row: a long run stopped early keeps what it measured


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    classify = [r for r in rows if "anomaly" not in r]
    anomaly = [r for r in rows if "anomaly" in r]
    lines = _classify_lines(classify) + ([""] if classify and anomaly else []) + _anomaly_lines(anomaly)
    host = rows[0]["targets"][TARGETS[0]]["host"] if rows else {}
    lines.append(f"\nHost: {host.get('cpu')}, flags {' '.join(host.get('cpu_flags', []))}; classifier figures on "
                 "each set's validation split (20 % per class, seed 0); anomaly AUROC on all labelled test cells, "
                 "the bench on their held-out half.")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch_table.md").write_text(text + "\n")
    (out / "arch_table.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text, flush=True)


def _target_cells(t: str, b: dict[str, Any], anomaly: bool) -> str:
    flag = "" if b["reliable"] else " (unreliable)"
    conf = "–" if b["confident"] is None else f"{b['confident']:.4f}"
    bal = "–" if b["balanced_drop"] is None else f"{b['balanced_drop']:.2f}"
    drop = f"{b['auroc_drop']:.4f} | {b['drop']:.2f}" if anomaly else f"{b['drop']:.2f} | {bal}"
    return (f"{t} | {drop} | {b['agreement']:.4f} ({conf}) | {b['near_ties']} | {b['layers']} | "
            f"{b['p50_ms']:.2f} | {b['speedup']:.2f}{flag} | {b['passed']} |")


def _anomaly_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["| set | backbone | AUROC all / mono / poly (torch) | fit s | target | AUROC drop | decision "
             "accuracy drop (pts) | decision agreement (confident) | near-ties | layers | p50 ms | × torch fp32 "
             "| passed |", "|" + "---|" * 13]
    for r in rows:
        a = r["anomaly"]
        for i, (t, b) in enumerate(r["targets"].items()):
            head = (f"| {r['set']} | {r['arch']} | {a['auroc_all']:.3f} / {a['auroc_mono']:.3f} / "
                    f"{a['auroc_poly']:.3f} | {a['train_s']:.0f} |" if i == 0 else "| | | | |")
            lines.append(f"{head} {_target_cells(t, b, True)}")
    return lines


def _classify_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["| set | backbone | linear top-1 / bal. | partial top-1 / bal. | partial train s | target | drop (pts) "
             "| bal. drop | agreement (confident) | near-ties | layers | p50 ms | × torch fp32 | passed |",
             "|" + "---|" * 14]
    for r in rows:
        for i, (t, b) in enumerate(r["targets"].items()):
            head = (f"| {r['set']} | {r['arch']} | {r['linear']['top1']:.3f} / {r['linear']['balanced']:.3f} | "
                    f"{r['partial']['top1']:.3f} / {r['partial']['balanced']:.3f} | {r['partial']['train_s']:.0f} |"
                    if i == 0 else "| | | | | |")
            lines.append(f"{head} {_target_cells(t, b, False)}")
    return lines


if __name__ == "__main__":
    main()
