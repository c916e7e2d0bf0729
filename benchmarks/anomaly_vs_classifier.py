"""Batch-1 latency of an anomaly model against a classifier on the same target, side by side.

    python benchmarks/anomaly_vs_classifier.py ANOMALY_RUN CLASSIFIER_RUN [--target cpu-openvino-int8]

Both exported graphs are opened with the target's runner (same backend, threads and static batch-1
shape) and timed in alternating blocks (``bench.latency.measure_paired``), so a busy period slows both;
the host's load while timing is printed with the figures. The issue's budget: the anomaly model's p50 at
most 2x the classifier's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge_tl.backends import RunnerSpec, open_runner
from edge_tl.bench.hostload import HostLoad
from edge_tl.bench.latency import block_ratio_spread, measure_paired
from edge_tl.targets import get_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("anomaly_run")
    ap.add_argument("classifier_run")
    ap.add_argument("--target", default="cpu-openvino-int8")
    ap.add_argument("--iterations", type=int, default=400)
    args = ap.parse_args()
    t = get_target(args.target)
    runners = []
    for run in (args.classifier_run, args.anomaly_run):
        folder = Path(run) / "targets" / t.name
        runners.append(open_runner(RunnerSpec(folder / t.model_file, t.backend, t.device, t.precision,
                                              t.threads, t.batch_size)))
    # Each model gets an input of its own size (an anomaly model may run at another resolution).
    xs = []
    for run in (args.classifier_run, args.anomaly_run):
        size = json.loads((Path(run) / "finetune" / "manifest.json").read_text())["preprocessing"]["crop"]
        xs.append(np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32))
    with HostLoad(own_threads=t.threads) as load:
        cls, ano = measure_paired(lambda _: runners[0].run(xs[0]), lambda _: runners[1].run(xs[1]), xs[0],
                                  t.warmup, args.iterations)
    out = {"target": t.name, "input_px": [x.shape[-1] for x in xs], "threads": t.threads,
           "classifier_p50_ms": cls["p50"], "anomaly_p50_ms": ano["p50"],
           "anomaly_over_classifier": ano["p50"] / cls["p50"], "ratio_spread": block_ratio_spread(ano, cls),
           "host_load": load.summary()}
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
