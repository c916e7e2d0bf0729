"""The out-of-distribution output: its maths, the exported graph, the bundle's policy, the runtime's review
reason, the watcher's drift warning and the bench's share, on a synthetic camera change (a seventh of the
contrast, much darker: ``test_adapt.shifted``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.errors import ConfigError
from edge_tl.ood import distance, fit, ood_module, threshold_for
from edge_tl.runtime.drift import DriftMonitor
from edge_tl.runtime.policy import Policy

from .conftest import make_image
from .test_adapt import shifted

TARGET = "cpu-onnxruntime-fp32"


def _images(shift: bool, n: int = 6) -> list:
    imgs = [make_image(k, 9000 + k * 100 + i) for k in range(3) for i in range(n)]
    return [shifted(im) for im in imgs] if shift else imgs


# ------------------------------------------------------------------------------------------ maths


def test_low_rank_distance_is_the_ledoit_wolf_mahalanobis_distance_when_the_data_fit_the_rank() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40)) + np.repeat(np.eye(3, 40) * 4, 20, axis=0)
    y = np.repeat(np.arange(3), 20)
    test = rng.normal(size=(7, 40))
    stats = fit(x, y, rank=64)  # 57 within-class dimensions: the basis holds them all
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    tn = test / np.linalg.norm(test, axis=1, keepdims=True)
    means = [xn[y == k].mean(0) for k in range(3)]
    prec = LedoitWolf(assume_centered=True).fit(np.concatenate([xn[y == k] - means[k] for k in range(3)])).precision_
    brute = np.sqrt(np.stack([np.einsum("ij,jk,ik->i", tn - m, prec, tn - m) for m in means], 1).min(1))
    np.testing.assert_allclose(distance(stats, test), brute, rtol=1e-4)
    # a smaller basis approximates (the rest shares one variance) but keeps far points far
    small = distance(fit(x, y, rank=8), np.concatenate([x[:5], 5 * rng.normal(size=(5, 40)) + 9]))
    assert small[5:].min() > small[:5].max()


def test_the_graph_module_computes_the_numpy_score_over_the_threshold() -> None:
    import torch

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 16)), np.repeat(np.arange(2), 25)
    stats = fit(x, y, rank=6)
    f = rng.normal(size=(9, 16))
    with torch.inference_mode():
        got = ood_module(stats, 2.5)(torch.from_numpy(f.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, distance(stats, f) / 2.5, rtol=1e-3, atol=1e-4)


def test_threshold_is_the_false_alarm_quantile_and_bad_input_is_a_config_error() -> None:
    d = np.arange(1, 101, dtype=float)
    assert threshold_for(d, 0.01) == 100.0 and threshold_for(d, 0.05) == 96.0
    assert np.mean(d > threshold_for(d, 0.05)) <= 0.05
    for bad in ((d, 1.0), (d, -0.1), (np.array([]), 0.01)):
        with pytest.raises(ConfigError):
            threshold_for(*bad)
    with pytest.raises(ConfigError, match="at least two images"):
        fit(np.ones((1, 4)), np.zeros(1))


def test_policy_reviews_out_of_distribution_whatever_the_confidence() -> None:
    p = Policy(("ok", "defect"), ("ok",), ("defect",), 0.9, 0.5, ood_limit=1.2)
    assert p.decide("ok", 0.99, ood=1.1) == "ok"
    assert p.decide("ok", 0.99, ood=1.3) == "review"
    assert p.reason("review", 1.3) == "out_of_distribution" and p.reason("review", 0.2) == "low_confidence"
    assert p.reason("ok", 0.2) is None
    decided = p.decide_logits(np.array([[5.0, 0.0], [5.0, 0.0]]), np.array([0.5, 2.0]))
    assert [d for _, _, d in decided] == ["ok", "review"]
    again = Policy.from_dict(p.to_dict(), p.classes)
    assert again == p
    old = {k: v for k, v in p.to_dict().items() if k != "ood_limit"}  # a bundle from before the ood output
    assert Policy.from_dict(old, p.classes).ood_limit is None
    with pytest.raises(ConfigError, match="ood limit"):
        Policy(("ok", "defect"), ("ok",), ("defect",), ood_limit=0.0)


def test_drift_monitor_warns_once_when_the_share_crosses_and_once_when_it_recovers() -> None:
    m = DriftMonitor(window=40, limit=0.2)
    assert m.update([True] * 9) is None  # fewer than a quarter of the window: nothing said yet
    msg = m.update([True])
    assert msg is not None and msg.startswith("drift: 100% of the last 10 images")
    assert m.update([True] * 5) is None  # already said
    assert m.update([False] * 39) is not None and not m.alarm  # back under half the limit
    with pytest.raises(ConfigError):
        DriftMonitor(window=0)


# ------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def bundles(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny run exported for ONNX Runtime fp32 and bundled with and without the ood review."""
    from edge_tl.stages.bundle import bundle
    from edge_tl.stages.export import export

    root = tmp_path_factory.mktemp("ood")
    run = root / "run"
    shutil.copytree(finetuned_run, run)
    export(run, TARGET)
    bundle(run, TARGET, root / "with", allow_failed=True)
    bundle(run, TARGET, root / "without", use_ood=False, allow_failed=True)
    return {"run": run, "with": root / "with", "without": root / "without"}


def test_export_adds_a_calibrated_ood_output(bundles: dict[str, Path]) -> None:
    import onnx

    target = bundles["run"] / "targets" / TARGET
    m = json.loads((target / "manifest.json").read_text())
    assert [o.name for o in onnx.load(str(target / "model.onnx")).graph.output] == ["logits", "ood_score"]
    ood = m["ood"]
    assert ood["method"] == "mahalanobis" and "training split" in ood["fitted_on"]["what"]
    assert "validation" in ood["calibrated_on"]["what"]
    # fp32: the target's own limit is the float threshold (1.0 by construction), up to rounding
    assert ood["limit"] == pytest.approx(1.0, abs=1e-4)
    assert max(ood["validation_scores"]) <= ood["limit"] + 1e-6  # tiny val set: 1 % false alarms = none
    assert (bundles["run"] / "cache").is_dir()  # a second target reuses the fit


def test_runtime_reviews_a_changed_camera_and_keeps_in_distribution_decisions(bundles: dict[str, Path]) -> None:
    from edge_tl.runtime import Runtime

    with Runtime(bundles["with"]) as rt, Runtime(bundles["without"]) as plain:
        assert rt.ood and not plain.ood
        same = rt.predict_batch(_images(False))
        moved = rt.predict_batch(_images(True))
        before = plain.predict_batch(_images(False))
    inside = np.array([p.ood_score for p in same])
    outside = np.array([p.ood_score for p in moved])
    assert outside.min() > inside.max()  # every changed-camera image scores above every same-camera one
    assert all(p.decision == "review" and p.reason == "out_of_distribution" for p in moved)
    # the same camera: every decision is the one the plain bundle makes, unless the ood review took it
    for a, b in zip(same, before, strict=True):
        assert a.label == b.label and np.allclose(a.logits, b.logits, atol=1e-5)
        assert a.decision == b.decision or a.reason == "out_of_distribution"
    assert np.mean([p.reason == "out_of_distribution" for p in same]) <= 0.25
    assert "ood_score" in moved[0].to_dict() and moved[0].to_dict()["reason"] == "out_of_distribution"
    assert "ood_score" not in before[0].to_dict()


def test_watch_logs_the_reason_and_warns_of_drift(bundles: dict[str, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from edge_tl.runtime import Runtime
    from edge_tl.runtime.watch import Watcher

    folder = tmp_path / "drop"
    folder.mkdir()
    for i, im in enumerate(_images(True, 4)):
        im.save(folder / f"{i:02d}.png")
    with caplog.at_level(logging.WARNING, logger="edge_tl"), Runtime(bundles["with"]) as rt, \
            Watcher(rt, folder, settle=0.0, drift=DriftMonitor(window=8, limit=0.5)) as w:
        assert w.run(once=True) == 12
    lines = [json.loads(x) for x in (folder / "edge-tl-results.jsonl").read_text().splitlines()]
    assert {x["reason"] for x in lines} == {"out_of_distribution"} and all(x["ood_score"] > 1 for x in lines)
    assert any("drift:" in r.getMessage() for r in caplog.records)


def test_bench_reports_the_share_of_out_of_distribution_images(bundles: dict[str, Path]) -> None:
    from edge_tl.backends import RunnerSpec, open_runner
    from edge_tl.bench.html import ood_html
    from edge_tl.bench.run import ood_facts
    from edge_tl.evalset import EvalSet
    from edge_tl.preprocess import Preprocess
    from edge_tl.targets import get_target

    target = get_target(TARGET)
    folder = bundles["run"] / "targets" / TARGET
    m = json.loads((folder / "manifest.json").read_text())
    pre = Preprocess.from_dict(m["preprocessing"])
    x = np.stack([pre(im.convert("RGB")) for im in [*_images(True, 2), *_images(False, 2)]])
    ev = EvalSet(inputs=x, labels=np.zeros(len(x), np.int64), logits=np.zeros((len(x), 3), np.float32),
                 classes=m["classes"], paths=[f"{i}.png" for i in range(len(x))], source="line-b")
    runner = open_runner(RunnerSpec(folder / target.model_file, target.backend, target.device))
    try:
        facts = ood_facts(runner, ev, target, m["ood"])
    finally:
        runner.close()
    assert facts["n"] == 12 and 0.5 <= facts["share_flagged"] <= 0.75  # the 6 shifted ones, at most 3 others
    html = ood_html(facts)
    assert "Out-of-distribution score" in html and "<svg" in html and "line-b" in html
