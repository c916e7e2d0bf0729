"""NEU-DET detection (issue 27), behind the slow marker: held-out mAP@0.5 of mobilenet_v2 partial at 320 px.

Needs ../shared/datasets/neu-det. About 35 minutes on the 2-core dev machine (benchmarks/detect_neu.py
measured the same recipe; its figures are in the floor's comment).
"""

from __future__ import annotations

from pathlib import Path

import pytest

NEU_DET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "neu-det"
# Measured with this recipe (seed 0, torch 1 thread, 2 shared cores, 1813 s): held-out mAP@0.5 0.627,
# mAP@0.5:0.95 0.272 (best epoch 22 of 24); the floor leaves room for seed and thread-order noise.
MAP50_FLOOR = 0.55

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not NEU_DET.is_dir(), reason=f"NEU-DET not found at {NEU_DET}")]


def test_neu_det_partial_map50_above_floor(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from edge_tl.detect.train import fit_detector

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared with other work (benchmarks/detect_neu.py --threads)
    try:
        m = fit_detector(NEU_DET, tmp_path / "run", arch="mobilenet_v2", mode="partial", input_size=320, epochs=24,
                         batch_size=16, seed=0)
    finally:
        torch.set_num_threads(before)
    assert m["data"]["n_boxes"] == 4189 and m["metrics"]["val_images"] == 360
    assert m["metrics"]["map50"] > MAP50_FLOOR
    assert all(ap is not None and ap > 0 for ap in m["metrics"]["per_class_ap50"].values())
