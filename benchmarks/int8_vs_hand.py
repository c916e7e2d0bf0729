"""The shipped OpenVINO INT8 graph beside a hand-built OpenVINO + NNCF INT8 of the same network, timed in one run.

    python benchmarks/int8_vs_hand.py RUN [RUN ...] [--iterations 400] [--threads 2]

For each run with exported ``cpu-openvino-fp32`` and ``cpu-openvino-int8`` targets: the hand recipe of the
OpenVINO / NNCF documentation (``ov.convert_model`` of the same float ONNX file, ``nncf.quantize`` with the
performance preset on the same calibration images as the export, nothing kept float, no input restoring ops),
then batch-1 latency of fp32, the shipped INT8 and the hand INT8, each opened by the product's own OpenVINO
runner (the same threads, the same compile settings), timed in alternating blocks against the shipped INT8
(``bench.latency.measure_paired``). Prints p50 of each, the ratios shipped/hand and fp32/shipped with the
spread of the per-block ratio, the layers each keeps float, and the CPU flags. The issue's bar: shipped INT8 at
least as fast as the hand recipe. Run it on a quiet machine; a figure from a loaded one is not a timing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _hand_int8(float_onnx: Path, calibration: np.ndarray, out: Path) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(float_onnx))
    data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    qmodel = nncf.quantize(model, data, subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE)
    xml = out / "model.xml"
    ov.save_model(qmodel, str(xml), compress_to_fp16=False)
    return xml


def _calibration_inputs(folder: Path) -> np.ndarray:
    from edge_tl.preprocess import Preprocess, load_image

    cal = json.loads((folder / "calibration.json").read_text())
    pre = Preprocess.from_dict(cal["preprocessing"])
    root = Path(cal["root"])
    return pre.batch([load_image(root / im["path"]) for im in cal["images"]])


def compare(run: Path, iterations: int, threads: int) -> dict:
    from edge_tl.backends import RunnerSpec, open_runner
    from edge_tl.bench.latency import block_ratio_spread, measure_paired
    from edge_tl.bench.precision import count_openvino

    fp32_dir, int8_dir = run / "targets" / "cpu-openvino-fp32", run / "targets" / "cpu-openvino-int8"
    x_cal = _calibration_inputs(int8_dir)
    x = x_cal[:1]
    with tempfile.TemporaryDirectory(prefix="edge-tl-hand-") as work:
        hand_xml = _hand_int8(int8_dir / "float.onnx", x_cal, Path(work))
        runners = {name: open_runner(RunnerSpec(path, "openvino", "CPU", precision, threads, 1))
                   for name, path, precision in (("fp32", fp32_dir / "model.xml", "fp32"),
                                                 ("shipped", int8_dir / "model.xml", "int8"),
                                                 ("hand", hand_xml, "int8"))}
        try:
            shipped_vs_hand = measure_paired(runners["hand"].run, runners["shipped"].run, x, 20, iterations)
            fp32_vs_shipped = measure_paired(runners["fp32"].run, runners["shipped"].run, x, 20, iterations)
            layers = {"shipped": count_openvino(int8_dir / "model.xml"), "hand": count_openvino(hand_xml)}
        finally:
            for r in runners.values():
                r.close()
    hand, shipped = shipped_vs_hand
    fp32, shipped2 = fp32_vs_shipped
    return {"run": str(run), "p50_ms": {"fp32": fp32["p50"], "shipped_int8": shipped["p50"], "hand_int8": hand["p50"]},
            "hand_over_shipped": hand["p50"] / shipped["p50"],
            "hand_over_shipped_blocks": block_ratio_spread(hand, shipped),
            "fp32_over_shipped": fp32["p50"] / shipped2["p50"],
            "fp32_over_shipped_blocks": block_ratio_spread(fp32, shipped2), "layers": layers,
            "threads": threads, "batch": 1, "iterations": iterations}


def main() -> None:
    from edge_tl.manifest import cpu_flags, host_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"host: {host_info().get('cpu')}; flags {' '.join(cpu_flags())}")
    for run in args.runs:
        r = compare(run, args.iterations, args.threads)
        p = r["p50_ms"]
        print(f"{run}: p50 fp32 {p['fp32']:.3f} ms, shipped INT8 {p['shipped_int8']:.3f} ms, hand INT8 "
              f"{p['hand_int8']:.3f} ms; hand/shipped {r['hand_over_shipped']:.3f}x (blocks p10-p90 "
              f"{r['hand_over_shipped_blocks']['p10']:.3f}-{r['hand_over_shipped_blocks']['p90']:.3f}); "
              f"fp32/shipped {r['fp32_over_shipped']:.3f}x")
        print(json.dumps(r["layers"], default=str))
        print(json.dumps(r, default=str), flush=True)


if __name__ == "__main__":
    main()
