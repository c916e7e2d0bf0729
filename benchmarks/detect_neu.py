"""NEU-DET detection (issue 27): train on the seeded 80 % split, report held-out mAP, per-class AP, time.

    python benchmarks/detect_neu.py ../shared/datasets/neu-det runs/neu-det [--arch mobilenet_v2]
        [--mode partial] [--input-size 320] [--epochs 24] [--threads 1]

``--threads``: torch's intra-op threads (1 on a CPU shared with other work: with two threads on two busy
cores each step waited ~8x longer here). Prints one JSON line with the manifest's figures and timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--mode", default="partial")
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from edge_tl.detect.train import fit_detector

    t0 = time.time()
    m = fit_detector(args.data, args.out, arch=args.arch, mode=args.mode, input_size=args.input_size,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, views=args.views, seed=args.seed,
                     quiet=False)
    mt = m["metrics"]
    print(json.dumps({"arch": args.arch, "mode": args.mode, "input_size": args.input_size,
                      "map50": mt["map50"], "map50_95": mt["map50_95"], "per_class_ap50": mt["per_class_ap50"],
                      "epochs": mt["epochs"], "val_images": mt["val_images"], "val_boxes": mt["val_boxes"],
                      "wall_seconds": time.time() - t0, "timings": m["timings"],
                      "history": [(h["epoch"], round(h["train_loss"], 4), round(h["val_map50"], 4))
                                  for h in mt["history"]]}))


if __name__ == "__main__":
    main()
