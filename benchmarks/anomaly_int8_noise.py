"""Why an anomaly run's OpenVINO INT8 graph misses the decision-agreement gate: NNCF settings compared.

    python benchmarks/anomaly_int8_noise.py runs/cells [base mixed minmax meanq to16float]

``runs/cells`` is an anomaly run (``finetune --task anomaly --val ...``) already exported for
``cpu-openvino-int8`` (its ``float.onnx`` is re-quantised here). Each variant quantises the backbone
with NNCF on 300 of the run's training (good) images, as the export does (input restored to pixels,
distance part float), and scores the run's labelled images with the run's own head and threshold.
Printed per variant: ok/defect agreement with the torch model on the held-out half of the labelled
images (the half that did not set the threshold), its flips, the median |Δscore| (threshold = 1)
and INT8 image AUROC on both halves. Accuracy only: no timing, so the host may be busy.

Variants: ``base`` the export's settings (performance preset, full bias correction); ``mixed``
asymmetric activations; ``minmax`` / ``meanq`` NNCF's MINMAX / MEAN_QUANTILE range estimators;
``to16float`` the stride-16 stage left float (only the stride-8 stage INT8).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("/features/to8/", "/features/to16/")
TAPS = ["/features/to8/to8.6/Add_output_0", "/features/to16/to16.6/Add_output_0"]


def main() -> None:
    import nncf
    import onnx
    import openvino as ov
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from edge_tl.backends.pixel_grid import pin_pixel_quantizer, restore_pixels
    from edge_tl.checkpoint import load_model
    from edge_tl.metrics import auroc
    from edge_tl.preprocess import Preprocess, load_image

    run = Path(sys.argv[1])
    variants = sys.argv[2:] or ["base", "mixed", "minmax", "meanq", "to16float"]
    torch.set_num_threads(2)
    model, man = load_model(run / "finetune")
    pre = Preprocess.from_dict(man["preprocessing"])
    split = json.loads((run / "finetune" / "split.json").read_text())
    root = Path(split["root"])

    def images(rows: list[list]) -> np.ndarray:
        return np.stack([pre(load_image(root / p)) for p, _ in rows]).astype(np.float32)

    cal = images(split["train"][::3][:300])
    labelled = split["threshold"] + split["val"]
    x = images(labelled)
    y = np.array([label for _, label in labelled])
    held_out = np.arange(len(labelled)) >= len(split["threshold"])
    feat, head = model.features, model.head

    def scores(o8: torch.Tensor, o16: torch.Tensor) -> np.ndarray:
        a = torch.nn.functional.avg_pool2d(o8, 3, 1, 1, count_include_pad=False)
        b = torch.nn.functional.avg_pool2d(o16, 3, 1, 1, count_include_pad=False)
        b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        with torch.inference_mode():
            amap = head(feat.project(torch.cat([a, b], 1)))
        return (amap.flatten(1).max(1).values / model.threshold).numpy()

    with torch.inference_mode():
        t8 = [feat.to8(torch.from_numpy(x[i:i + 32])) for i in range(0, len(x), 32)]
        ref = scores(torch.cat(t8), torch.cat([feat.to16(a) for a in t8]))
    graph = onnx.load(str(run / "targets" / "cpu-openvino-int8" / "float.onnx"))
    pixels = restore_pixels(graph, pre)
    pix = run / "targets" / "cpu-openvino-int8" / "noise-pixels.onnx"
    onnx.save(graph, str(pix))
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "meanq": RangeEstimatorParametersSet.MEAN_QUANTILE}
    core = ov.Core()
    try:
        for name in variants:
            t0 = time.perf_counter()
            fm = ov.convert_model(str(pix), share_weights=False)
            ops = [op.get_friendly_name() for op in fm.get_ops()
                   if op.get_type_name() not in ("Parameter", "Result", "Constant")]
            keep = [n for n in ops if not n.startswith(STAGES)]
            if name == "to16float":
                keep += [n for n in ops if n.startswith("/features/to16/")]
            kw: dict = {"preset": nncf.QuantizationPreset.MIXED if name == "mixed" else
                        nncf.QuantizationPreset.PERFORMANCE}
            if name in estimators:
                kw["advanced_parameters"] = AdvancedQuantizationParameters(
                    activations_range_estimator_params=estimators[name])
            q = nncf.quantize(fm, nncf.Dataset([cal[i:i + 1] for i in range(len(cal))]), subset_size=len(cal),
                              fast_bias_correction=False, target_device=nncf.TargetDevice.CPU,
                              ignored_scope=nncf.IgnoredScope(names=[*pixels.float_ops, *keep], validate=False), **kw)
            pin_pixel_quantizer(q, pixels)
            q.add_outputs(TAPS)
            c = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
            outs = [list(c(x[i:i + 1]).values()) for i in range(len(x))]
            s = scores(torch.from_numpy(np.concatenate([o[-2] for o in outs])),
                       torch.from_numpy(np.concatenate([o[-1] for o in outs])))
            flips = (s > 1) != (ref > 1)
            print(json.dumps({"variant": name, "agreement_held_out": round(1 - float(flips[held_out].mean()), 4),
                              "flips_held_out": int(flips[held_out].sum()), "held_out": int(held_out.sum()),
                              "median_abs_dscore": round(float(np.median(np.abs(s - ref))), 4),
                              "auroc_torch": round(auroc(y, ref), 4), "auroc_int8": round(auroc(y, s), 4),
                              "seconds": round(time.perf_counter() - t0)}), flush=True)
    finally:
        pix.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
