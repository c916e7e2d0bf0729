"""Real-data acceptance checks (slow; run with `pytest -m slow`). They need ../shared/datasets/neu-cls."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_tl.cli import main

NEU = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "neu-cls"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not NEU.is_dir(), reason=f"NEU data set not found at {NEU}")]


@pytest.fixture(scope="module")
def neu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("neu") / "run"
    t0 = time.perf_counter()
    assert main(["finetune", str(NEU), "--arch", "mobilenet_v2", "--weights", "imagenet", "--mode", "linear",
                 "--seed", "0", "--out", str(out), "--quiet"]) == 0
    return out, time.perf_counter() - t0


def test_neu_linear_finetune_is_fast_and_accurate(neu_run: tuple[Path, float]) -> None:
    run, seconds = neu_run
    manifest = json.loads((run / "finetune" / "manifest.json").read_text())
    assert seconds < 180, f"fine-tune took {seconds:.0f} s"
    assert manifest["metrics"]["val_top1"] >= 0.98


def test_neu_onnxruntime_fp32_agrees_and_is_faster(neu_run: tuple[Path, float]) -> None:
    run, _ = neu_run
    assert main(["export", str(run), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    assert main(["bench", str(run), "--target", "cpu-onnxruntime-fp32", "--quiet"]) == 0
    report = json.loads((run / "reports" / "cpu-onnxruntime-fp32.json").read_text())
    assert report["candidate"]["agreement"] == 1.0
    assert report["speedup"] > 1.5
