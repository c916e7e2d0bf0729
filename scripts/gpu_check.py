"""One prepared GPU check: CUDA fine-tuning of NEU (AMP, channels_last) and the torch reference's GPU latency.

Run from source against the machine's own torch:
    EDGE_TL_WEIGHTS_DIR=data/weights PYTHONPATH=. python3 scripts/gpu_check.py data/neu-cls OUTDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edge_tl.backends.base import RunnerSpec
from edge_tl.backends.torch_.runner import TorchRunner
from edge_tl.bench.latency import measure_latency, measure_throughput
from edge_tl.stages.finetune import finetune
from edge_tl.training import TrainConfig


def main(data: str, out: str) -> None:
    out_dir = Path(out)
    results: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                     "capability": list(torch.cuda.get_device_capability(0))}
    print(results, flush=True)
    for mode, epochs in (("linear", 30), ("full", 4)):
        t0 = time.perf_counter()
        m = finetune(data, out_dir / f"neu-{mode}", arch="mobilenet_v2", weights="imagenet",
                     train_cfg=TrainConfig(mode=mode, epochs=epochs, batch_size=64, device="cuda", workers=8,
                                           seed=0, quiet=True))
        results[f"finetune_{mode}"] = {
            "wall_s": time.perf_counter() - t0, "train_s": m["timings"]["train_seconds"],
            "seconds_per_epoch": m["timings"]["seconds_per_epoch"],
            "epochs_run": len(m["metrics"]["history"]),
            "per_epoch": [h.get("seconds") for h in m["metrics"]["history"]],
            "val_top1": m["metrics"]["val_top1"], "device": m["timings"]["device"],
        }
        print(mode, results[f"finetune_{mode}"], flush=True)
    x1 = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    x32 = np.repeat(x1, 32, axis=0)
    for precision in ("fp32", "fp16"):
        r = TorchRunner(RunnerSpec(out_dir / "neu-linear" / "finetune", "torch", "cuda", precision, 16, 32))
        lat = measure_latency(r.run, x1, warmup=50, iterations=300)
        lat.pop("samples")
        results[f"reference_gpu_{precision}"] = {"latency_ms": lat,
                                                 "throughput_ips_b32": measure_throughput(r.run, x32)}
        print(precision, results[f"reference_gpu_{precision}"], flush=True)
    (out_dir / "gpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
