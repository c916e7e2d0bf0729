"""Which finetune recipe should be the default? Each candidate recipe on several sets, judged on test images
no recipe or early stop ever saw.

    python benchmarks/default_recipe.py [--out runs/recipe] [--sets neu neu-imbalanced elpv]

Each set is split once (seed 0) into trainval (75 % per class) and test (25 %); every recipe fine-tunes
on trainval (which itself holds out 20 % for early stopping, as the product does) and is scored on test
by the product's own ``bench --data TEST --no-latency`` (the torch fp32 model's top-1 and balanced accuracy).
``neu-imbalanced`` keeps NEU's crazing class whole (300) and 12-60 images of the others: an imbalanced
line. elpv is imbalanced by nature. Writes OUT/recipe.md and .json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES: dict[str, list[str]] = {
    "linear": ["--mode", "linear"],
    "partial-1": ["--mode", "partial", "--unfreeze", "1", "--views", "2", "--backbone-lr-scale", "1", "--epochs", "15"],
    "partial-3": ["--mode", "partial"],
    "linear+weights": ["--mode", "linear", "--balance", "weights"],
    "partial-1+weights": ["--mode", "partial", "--unfreeze", "1", "--views", "2", "--backbone-lr-scale", "1",
                          "--epochs", "15", "--balance", "weights"],
}
IMBALANCED = {"crazing": 300, "inclusion": 60, "patches": 40, "pitted_surface": 30, "rolled-in_scale": 20,
              "scratches": 12}


def _cli(*args: str) -> int:
    print("$ edge-tl " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "edge_tl", *args], check=False).returncode


def _split(src: Path, dest: Path, keep: dict[str, int] | None = None) -> Path:
    """dest/trainval and dest/test as symlinks, 25 % of each class (at least 3) to test, seed 0."""
    if (dest / "test").is_dir():
        return dest
    rng = random.Random(0)
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in (src / cls).iterdir() if p.is_file())
        rng.shuffle(files)
        files = files[:keep[cls]] if keep else files
        n_test = max(3, round(0.25 * len(files)))
        for part, chosen in (("test", files[:n_test]), ("trainval", files[n_test:])):
            (dest / part / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (dest / part / cls / f.name).symlink_to(f.resolve())
    return dest


def split_set(name: str, neu: Path, out: Path) -> tuple[Path, list[str]]:
    """The split folder of set ``name`` (neu, neu-imbalanced, elpv) under OUT/data and its finetune options."""
    if name == "elpv":
        src = out / "data" / "elpv-src"
        if not src.is_dir() and _cli("dataset", "elpv", "--out", str(src)) != 0:
            raise SystemExit("could not import elpv (pip install elpv-dataset)")
        return _split(src, out / "data" / "elpv"), ["--resize", "full"]
    return _split(neu, out / "data" / name, IMBALANCED if name == "neu-imbalanced" else None), []


def _one(data: Path, run: Path, recipe: list[str], extra: list[str]) -> dict[str, Any]:
    manifest = run / "finetune" / "manifest.json"
    if not manifest.is_file():
        started = time.perf_counter()
        _cli("finetune", str(data / "trainval"), "--out", str(run), "--seed", "0", "-q", *recipe, *extra)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    m = json.loads(manifest.read_text())
    report_json = run / "test-report.json"
    if not report_json.is_file():
        _cli("bench", str(run), "--target", "cpu-onnxruntime-fp32", "--export", "--data", str(data / "test"),
             "--no-latency", "--json", str(report_json), "-q")
    r = json.loads(report_json.read_text())
    return {"val_top1": m["metrics"]["val_top1"], "val_balanced": m["metrics"]["val_balanced_accuracy"],
            "test_top1": r["reference"]["top1"], "test_balanced": r["reference"]["balanced_accuracy"],
            "test_recall": r["reference"]["per_class_recall"], "n_test": r["n"],
            "train_s": m["timings"]["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-cls")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe")
    ap.add_argument("--sets", nargs="+", default=["neu", "neu-imbalanced", "elpv"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for s in args.sets:
        data, extra = split_set(s, args.neu, args.out)
        for name in args.recipes:
            row = {"set": s, "recipe": name} | _one(data, args.out / f"{s}-{name}", RECIPES[name], extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = ["| set | recipe | val top-1 / bal. | test top-1 / bal. | test images | train s |", "|" + "---|" * 6]
    lines += [f"| {r['set']} | {r['recipe']} | {r['val_top1']:.3f} / {r['val_balanced']:.3f} | "
              f"{r['test_top1']:.3f} / {r['test_balanced']:.3f} | {r['n_test']} | {r['train_s']:.0f} |" for r in rows]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.md").write_text(text + "\n")
    (args.out / "recipe.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
