"""What a bench report of an anomaly model draws: score distributions of good and defect images, and
heat-map overlays."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from ..metrics import scores_from_logits

HEATMAPS = 4  # overlays per report: the highest-scoring defect images, then the highest-scoring good one
HEATMAP_PX = 160


def plot_data(runner: Any, evalset: Any, logits: np.ndarray, batch: int, mean: Any, std: Any) -> dict[str, Any]:
    """``anomaly_plot`` of a bench report: normalised scores per class (1.0 = the threshold) and a few
    heat-map overlays as PNG data URIs (the report stays one file). Overlays need the runner's
    ``run_outputs``; without it the list is empty."""
    from PIL import Image

    from ..runtime.heatmap import overlay

    s = scores_from_logits(logits)
    labels = evalset.labels
    out: dict[str, Any] = {"threshold": 1.0, "good": np.round(s[labels == 0], 5).tolist(),
                           "defect": np.round(s[labels == 1], 5).tolist(), "heatmaps": []}
    run_outputs = getattr(runner, "run_outputs", None)
    if run_outputs is None or not len(s):
        return out
    defects = [int(i) for i in np.argsort(-s) if labels[i] == 1][:HEATMAPS - 1]
    goods = [int(i) for i in np.argsort(-s) if labels[i] == 0][:1]
    picks = defects + goods
    x = evalset.inputs[picks]
    maps = np.concatenate([run_outputs(x[i:i + batch])[1][:, 0] for i in range(0, len(x), batch)])
    pre_std = np.asarray(std, np.float32).reshape(3, 1, 1)
    pre_mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    for i, amap in zip(picks, maps, strict=True):
        # The model input back to pixels for display (the preprocessing contract's normalisation undone).
        rgb = ((evalset.inputs[i] * pre_std + pre_mean) * 255).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
        img = overlay(Image.fromarray(rgb, "RGB"), amap).resize((HEATMAP_PX, HEATMAP_PX))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out["heatmaps"].append({"path": evalset.paths[i], "label": evalset.classes[int(labels[i])],
                                "score": float(s[i]),
                                "png": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()})
    return out
