"""Tuning the QC policy to an escape rate."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.cli.deploy import policy_line
from edge_tl.errors import ConfigError
from edge_tl.runtime.policy import make_policy, policy_stats, tune_for_escape


def _logits(p_ok: np.ndarray) -> np.ndarray:
    """Two-class logits (defect, ok) whose softmax gives P(ok) = p_ok."""
    return np.stack([np.zeros_like(p_ok), np.log(p_ok / (1 - p_ok))], axis=1)


def test_escape_tuning_sends_the_riskiest_ok_answers_to_review() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0.55, 0.999, 80)  # good parts, all called ok
    sneaky = np.linspace(0.6, 0.95, 20)  # defects the model calls ok, with rising confidence
    caught = rng.uniform(0.01, 0.4, 30)  # defects called defect
    p_ok = np.concatenate([good, sneaky, caught])
    labels = np.array([1] * 80 + [0] * 50)  # classes ("defect", "ok")
    policy = make_policy(("defect", "ok"))
    base = policy_stats(policy, _logits(p_ok), labels)
    assert base["escape_rate"] == pytest.approx(20 / 50)
    # confidence=None: the observed rate, to test which threshold is picked; the default (a 95 % upper
    # bound, which 50 defects cannot bring within 4 %) is tested in tests/test_intake.py.
    tuned, record = tune_for_escape(policy, _logits(p_ok), labels, max_escape=0.04, confidence=None)
    # 4 % of 50 defects: 2 may escape, the two most confident sneaky ones.
    assert record["escape_rate"] == pytest.approx(2 / 50) and record["target_met"]
    assert sneaky[-3] < tuned.ok_threshold <= sneaky[-2]
    assert record["false_reject_rate"] == pytest.approx(float((good < tuned.ok_threshold).mean()))
    # The lowest such threshold: one step lower lets a third defect through.
    lower = make_policy(("defect", "ok"), ok_threshold=float(sneaky[-3]))
    assert policy_stats(lower, _logits(p_ok), labels)["escape_rate"] > 0.04
    line = policy_line(tuned.to_dict() | {"tuning": record, "validation": record})
    assert "escape 4.0%" in line and "defect recall (not passed) 96.0%" in line
    with pytest.raises(ConfigError, match="ok class"):
        tune_for_escape(make_policy(("a", "b")), _logits(p_ok), labels, 0.05)
    with pytest.raises(ConfigError, match="max-escape"):
        tune_for_escape(policy, _logits(p_ok), labels, 1.5)


def test_epochs_are_chosen_by_what_the_line_gets_at_its_escape_target() -> None:
    """A model with the better top-1 can be the worse one for a line: its confident wrong ``ok`` answers force
    the ok threshold up and send good parts to review. ``max_escape`` makes training choose by the share of
    good parts passed at the escape target (``passed_at_escape``), the number the bundle's policy delivers."""
    import torch

    from edge_tl.runtime.policy import passed_at_escape
    from edge_tl.training import TrainConfig, _val_score

    rng = np.random.default_rng(1)
    labels = np.array([1] * 200 + [0] * 200)  # classes ("defect", "ok")
    # A: 180 of 200 good parts called ok, with confidence 0.9-0.99; every defect at most 0.6 sure it is ok
    a = np.concatenate([rng.uniform(0.9, 0.99, 180), rng.uniform(0.2, 0.45, 20), rng.uniform(0.05, 0.6, 200)])
    # B: all 200 good parts called ok (better top-1), but 20 defects called ok at 0.995
    b = np.concatenate([rng.uniform(0.9, 0.99, 200), np.full(20, 0.995), rng.uniform(0.05, 0.45, 180)])
    top1 = [float(((p > 0.5) == (labels == 1)).mean()) for p in (a, b)]
    assert top1[1] > top1[0]
    cfg = TrainConfig(max_escape=0.05, ok_index=(1,))
    score = [_val_score(torch.from_numpy(_logits(p)), torch.from_numpy(labels), cfg) for p in (a, b)]
    assert score[0] > score[1]
    # the same number as the bundle's tuned policy reports on these images
    for p, s in zip((a, b), score, strict=True):
        _, record = tune_for_escape(make_policy(("defect", "ok")), _logits(p), labels, max_escape=0.05)
        assert s == pytest.approx(1 - record["false_reject_rate"]) == passed_at_escape(_logits(p), labels, (1,), 0.05)
    # without a target: top-1 decides, the other way round
    plain = [_val_score(torch.from_numpy(_logits(p)), torch.from_numpy(labels), TrainConfig()) for p in (a, b)]
    assert plain[1] > plain[0]


def test_choosing_epochs_by_escape_needs_an_ok_class_and_defect_images() -> None:
    from edge_tl.data import Sample
    from edge_tl.training import qc_ok_index

    val = [Sample("a.png", 0), Sample("b.png", 1)]
    assert qc_ok_index(["defect", "good"], None, val) == (1,)
    assert qc_ok_index(["crack", "fine"], "fine", val) == (1,)
    with pytest.raises(ConfigError, match="needs an ok class"):
        qc_ok_index(["crack", "stain"], None, val)
    with pytest.raises(ConfigError, match="is not a class"):
        qc_ok_index(["crack", "fine"], "ok", val)
    with pytest.raises(ConfigError, match="no defect image"):
        qc_ok_index(["defect", "good"], None, [Sample("b.png", 1)])


def test_finetune_max_escape_without_an_ok_class_is_one_line_before_training(
        image_folder, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main

    out = tmp_path / "run"
    assert main(["finetune", str(image_folder), "--out", str(out), "--mode", "linear", "--epochs", "1",
                 "--max-escape", "0.05", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-escape needs an ok class" in err[0] and "--ok-class" in err[0]
    assert not (out / "finetune" / "manifest.json").exists()
